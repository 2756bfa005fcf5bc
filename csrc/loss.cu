// The contrastive functional C_tau (SPEC 4) and its closed-form logits gradient.
//
// Per row: one pass over logits and targets with an online softmax collects
// sum e, sum e^2, sum e*q_r, sum e*q_f (e = exp(z - max)), enough for both cosines;
// a second pass writes the gradient. The batch couples only through the log-sum-exp
// of the forget terms, so:
//   small batches: one block does stats -> LSE -> gradient (a single launch);
//   large batches: stats kernel -> one-block LSE kernel -> gradient kernel.
// No path synchronises with the host.
#include "common.cuh"

namespace fastmix {
namespace {

constexpr float kEps = 1e-8f;  // the clamp of d(p, q) = 1 - <p,q> / max(|p||q|, eps)
constexpr int NS = 12;         // floats of per-row state
// S_A_*, S_BP_*, S_DP_* stay consecutive: target_cosine writes them as one block.
enum Stat { S_M, S_INV_S, S_A_R, S_BP_R, S_DP_R, S_A_F, S_BP_F, S_DP_F, S_KEEP, S_X, S_KW, S_FW };

constexpr int kFusedThreads = 512;
constexpr int64_t kFusedMaxRows = 512;      // per-row state lives in shared memory
constexpr int64_t kFusedMaxElems = 1 << 17;  // beyond this one block is too slow
constexpr int kFinalThreads = 1024;

struct Target {
  const void* p;
  int dtype;  // I64: labels
  int64_t rs, cs;
};

struct LossArgs {
  int mode;  // 0 mixed, 1 real
  const void* logits0;
  int64_t rows0, rs0, cs0;
  const void* logits1;
  int64_t rows1, rs1, cs1;
  int64_t C;
  Target keep, forget;
  const int64_t* perm;
  int64_t keep_pool;
  const void* lam;
  int lam_dtype;
  int64_t lam_stride;
  float inv_tau, scale;
  float* loss;
  void* grad0;
  void* grad1;
  int* flag;
};

// Where row r's inputs are. A bad index leaves its term's row at -1.
struct RowRef {
  const void* logits;
  void* grad;
  int64_t i, rs, cs;
  int64_t keep_row, forget_row;  // -1: no such term
  bool keep_bad, forget_bad;
  float kw, fw;  // weights of the keep and forget terms
};

__device__ __forceinline__ RowRef resolve_row(const LossArgs& a, int64_t r) {
  RowRef ref;
  ref.keep_bad = ref.forget_bad = false;
  if (a.mode == 0) {
    ref.logits = a.logits0; ref.grad = a.grad0; ref.i = r; ref.rs = a.rs0; ref.cs = a.cs0;
    int64_t k = a.perm ? a.perm[r] : r;
    if (k < 0 || k >= a.keep_pool) { ref.keep_bad = true; k = -1; }
    ref.keep_row = k;
    ref.forget_row = r;
    const float lam = load_any(a.lam, a.lam_dtype, r * a.lam_stride);
    ref.kw = 1.f - lam;
    ref.fw = lam;
  } else if (r < a.rows0) {
    ref.logits = a.logits0; ref.grad = a.grad0; ref.i = r; ref.rs = a.rs0; ref.cs = a.cs0;
    ref.keep_row = r; ref.forget_row = -1; ref.kw = 1.f; ref.fw = 0.f;
  } else {
    ref.logits = a.logits1; ref.grad = a.grad1; ref.i = r - a.rows0; ref.rs = a.rs1; ref.cs = a.cs1;
    ref.keep_row = -1; ref.forget_row = r - a.rows0; ref.kw = 0.f; ref.fw = 1.f;
  }
  return ref;
}

__device__ __forceinline__ bool has_keep(const RowRef& ref) { return ref.keep_row >= 0 || ref.keep_bad; }
__device__ __forceinline__ bool has_forget(const RowRef& ref) { return ref.forget_row >= 0 || ref.forget_bad; }

// A label row's class, or -1 when it is out of range (then flagged).
__device__ __forceinline__ int64_t label_of(const Target& t, int64_t row, int64_t C, int* flag, bool report) {
  const int64_t y = static_cast<const int64_t*>(t.p)[row * t.rs];
  if (y < 0 || y >= C) {
    if (report) flag_error(flag, kBadLabel);
    return -1;
  }
  return y;
}

__device__ __forceinline__ float soft_q(const Target& t, int64_t row, int64_t k) {
  return load_any(t.p, t.dtype, row * t.rs + k * t.cs);
}

// Cosine c(p, q) and its gradient pieces as fastmix.reference.cosine_parts:
// dc/dp = A q - Bp p, <dc/dp, p> = Dp.
__device__ __forceinline__ void cosine_parts(float pp, float dot, float qn, float* A, float* Bp, float* Dp,
                                             float* c) {
  const float den = sqrtf(pp) * qn;
  const bool clamped = den <= kEps;
  *A = 1.f / fmaxf(den, kEps);
  *c = dot * *A;
  *Bp = clamped ? 0.f : *c / pp;
  *Dp = clamped ? *c : 0.f;
}

// c(p, q) of row ref.i against one target row: a label (p[y] from the row's softmax
// statistics M, inv_s) or a soft target (<e, q> and |q|^2 summed in the row pass). It
// writes A, Bp, Dp to parts[0..2] (S_A_*, S_BP_*, S_DP_* in order). A bad perm index or
// label gives NaN, flagged by the reporting lane.
template <typename T>
__device__ __forceinline__ float target_cosine(const LossArgs& a, const Target& t, int64_t row, bool bad, const T* x,
                                               const RowRef& ref, float M, float inv_s, float soft_dot, float q2,
                                               float pp, bool report, float* parts) {
  float dot = NAN, qn = 1.f, c;
  if (bad) {
    if (report) flag_error(a.flag, kBadPerm);
  } else if (t.dtype == I64) {
    const int64_t y = label_of(t, row, a.C, a.flag, report);
    if (y >= 0) dot = exp_diff(to_f(x[ref.i * ref.rs + y * ref.cs]), M) * inv_s;
  } else {
    dot = soft_dot * inv_s;
    qn = sqrtf(q2);
  }
  cosine_parts(pp, dot, qn, &parts[0], &parts[1], &parts[2], &c);
  return c;
}

// Computes row r's state; every thread of the group gets it in st[].
template <typename T, bool WARP>
__device__ void row_stats(const LossArgs& a, int64_t r, int lane, int G, float* scratch, float* st) {
  const RowRef ref = resolve_row(a, r);
  const T* x = static_cast<const T*>(ref.logits);
  const bool keep = has_keep(ref), forget = has_forget(ref);
  const bool keep_soft = keep && a.keep.dtype != I64 && ref.keep_row >= 0;
  const bool forget_soft = forget && a.forget.dtype != I64 && ref.forget_row >= 0;
  float m = -INFINITY, s = 0.f, pp = 0.f, dr = 0.f, df = 0.f, qr2 = 0.f, qf2 = 0.f;
  for (int64_t k = lane; k < a.C; k += G) {
    const float z = to_f(x[ref.i * ref.rs + k * ref.cs]);
    const float qr = keep_soft ? soft_q(a.keep, ref.keep_row, k) : 0.f;
    const float qf = forget_soft ? soft_q(a.forget, ref.forget_row, k) : 0.f;
    qr2 += qr * qr;
    qf2 += qf * qf;
    if (z > m) {
      const float f = exp_diff(m, z);
      s = s * f + 1.f; pp = pp * f * f + 1.f; dr = dr * f + qr; df = df * f + qf;
      m = z;
    } else {
      const float e = exp_diff(z, m);
      s += e; pp += e * e; dr += e * qr; df += e * qf;
    }
  }
  const float M = group_max<WARP>(m, scratch);
  const float f = exp_diff(m, M);
  s = group_sum<WARP>(s * f, scratch);
  pp = group_sum<WARP>(pp * f * f, scratch);
  dr = group_sum<WARP>(dr * f, scratch);
  df = group_sum<WARP>(df * f, scratch);
  qr2 = group_sum<WARP>(qr2, scratch);
  qf2 = group_sum<WARP>(qf2, scratch);

  const float inv_s = 1.f / s;
  pp *= inv_s * inv_s;
  const bool report = lane == 0;
  for (int j = 0; j < NS; ++j) st[j] = 0.f;
  st[S_M] = M;
  st[S_INV_S] = inv_s;
  st[S_KW] = ref.kw;
  st[S_FW] = ref.fw;
  st[S_X] = -INFINITY;
  if (keep) {
    const float c = target_cosine(a, a.keep, ref.keep_row, ref.keep_bad, x, ref, M, inv_s, dr, qr2, pp, report,
                                  &st[S_A_R]);
    st[S_KEEP] = ref.kw * (1.f - c);
  }
  if (forget) {
    const float c = target_cosine(a, a.forget, ref.forget_row, ref.forget_bad, x, ref, M, inv_s, df, qf2, pp, report,
                                  &st[S_A_F]);
    st[S_X] = ref.fw * (1.f - c) * a.inv_tau;
  }
}

// Writes row r's logits gradient from its state and the batch log-sum-exp.
template <typename T, bool WARP>
__device__ void row_grad(const LossArgs& a, int64_t r, int lane, int G, const float* st, float lse) {
  const RowRef ref = resolve_row(a, r);
  const T* x = static_cast<const T*>(ref.logits);
  T* out = static_cast<T*>(ref.grad) + ref.i * a.C;
  const float n_keep = static_cast<float>(a.rows0);
  const float alpha = -st[S_KW] * a.scale;
  const float w = exp_diff(st[S_X], lse);  // softmax weight of this forget term
  const float beta = n_keep * a.inv_tau * w * st[S_FW] * a.scale;
  const float ar = alpha * st[S_A_R], br = alpha * st[S_BP_R];
  const float af = beta * st[S_A_F], bf = beta * st[S_BP_F];
  const float gp = alpha * st[S_DP_R] + beta * st[S_DP_F];
  const float M = st[S_M], inv_s = st[S_INV_S];
  // Label targets: the class, or -1 for none / a bad index (its state is already NaN).
  int64_t yr = -1, yf = -1;
  const bool keep_soft = ref.keep_row >= 0 && a.keep.dtype != I64;
  const bool forget_soft = ref.forget_row >= 0 && a.forget.dtype != I64;
  if (ref.keep_row >= 0 && a.keep.dtype == I64) yr = label_of(a.keep, ref.keep_row, a.C, a.flag, false);
  if (ref.forget_row >= 0 && a.forget.dtype == I64) yf = label_of(a.forget, ref.forget_row, a.C, a.flag, false);
  for (int64_t k = lane; k < a.C; k += G) {
    const float p = exp_diff(to_f(x[ref.i * ref.rs + k * ref.cs]), M) * inv_s;
    const float qr = keep_soft ? soft_q(a.keep, ref.keep_row, k) : (k == yr ? 1.f : 0.f);
    const float qf = forget_soft ? soft_q(a.forget, ref.forget_row, k) : (k == yf ? 1.f : 0.f);
    const float g = ar * qr - br * p + af * qf - bf * p - gp;
    out[k] = from_f<T>(p * g);
  }
}

// Reduces the per-row state of all rows to the loss; returns the LSE to every thread.
__device__ float finish_loss(const LossArgs& a, const float* state, int64_t rows, float* scratch) {
  float m = -INFINITY;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) m = fmaxf(m, state[r * NS + S_X]);
  const float M = block_max(m, scratch);
  float s = 0.f, keep = 0.f;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    s += exp_diff(state[r * NS + S_X], M);
    keep += state[r * NS + S_KEEP];
  }
  s = block_sum(s, scratch);
  keep = block_sum(keep, scratch);
  const float lse = s == 0.f ? -INFINITY : M + logf(s);
  if (threadIdx.x == 0) *a.loss = a.scale * (keep - static_cast<float>(a.rows0) * lse);
  return lse;
}

// Small batches: the whole loss and gradient in one block, warp per row.
template <typename T>
__global__ void __launch_bounds__(kFusedThreads) loss_fused_kernel(LossArgs a) {
  FASTMIX_DYNAMIC_SHARED(float, state);  // rows * NS
  __shared__ float scratch[32];
  const int64_t rows = a.rows0 + a.rows1;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  float st[NS];
  for (int64_t r = warp; r < rows; r += nwarps) {
    row_stats<T, true>(a, r, lane, 32, nullptr, st);
    if (lane == 0)
      for (int j = 0; j < NS; ++j) state[r * NS + j] = st[j];
  }
  __syncthreads();
  const float lse = finish_loss(a, state, rows, scratch);
  if (a.grad0 == nullptr && a.grad1 == nullptr) return;
  for (int64_t r = warp; r < rows; r += nwarps) {
    for (int j = 0; j < NS; ++j) st[j] = state[r * NS + j];
    row_grad<T, true>(a, r, lane, 32, st, lse);
  }
}

// Large batches, step 1: per-row state into the workspace.
template <typename T, bool WARP>
__global__ void loss_stats_kernel(LossArgs a, float* ws) {
  __shared__ float scratch[32];
  const int64_t rows = a.rows0 + a.rows1;
  const int lane = WARP ? (threadIdx.x & 31) : threadIdx.x;
  const int G = WARP ? 32 : blockDim.x;
  const int per_block = WARP ? (blockDim.x >> 5) : 1;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * per_block + (WARP ? (threadIdx.x >> 5) : 0);
  float st[NS];
  for (int64_t r = first; r < rows; r += static_cast<int64_t>(gridDim.x) * per_block) {
    row_stats<T, WARP>(a, r, lane, G, scratch, st);
    if (lane == 0)
      for (int j = 0; j < NS; ++j) ws[r * NS + j] = st[j];
  }
}

// Step 2: one block turns the state into the loss and the LSE (kept after the state).
__global__ void __launch_bounds__(kFinalThreads) loss_finish_kernel(LossArgs a, float* ws) {
  __shared__ float scratch[32];
  const int64_t rows = a.rows0 + a.rows1;
  const float lse = finish_loss(a, ws, rows, scratch);
  if (threadIdx.x == 0) ws[rows * NS] = lse;
}

// Step 3: the gradient. Rows go last to first: the stats kernel read the last rows
// most recently, so they are the likeliest to still be in L2.
template <typename T, bool WARP>
__global__ void loss_grad_kernel(LossArgs a, const float* ws) {
  const int64_t rows = a.rows0 + a.rows1;
  const float lse = ws[rows * NS];
  const int lane = WARP ? (threadIdx.x & 31) : threadIdx.x;
  const int G = WARP ? 32 : blockDim.x;
  const int per_block = WARP ? (blockDim.x >> 5) : 1;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * per_block + (WARP ? (threadIdx.x >> 5) : 0);
  float st[NS];
  for (int64_t n = first; n < rows; n += static_cast<int64_t>(gridDim.x) * per_block) {
    const int64_t r = rows - 1 - n;
    for (int j = 0; j < NS; ++j) st[j] = ws[r * NS + j];
    row_grad<T, WARP>(a, r, lane, G, st, lse);
  }
}

bool use_fused(int64_t rows, int64_t C) {
  return rows <= kFusedMaxRows && C <= kWarpRowMaxC && rows * C <= kFusedMaxElems;
}

template <typename T>
int launch_loss(const LossArgs& a, cudaStream_t stream, float* ws) {
  const int64_t rows = a.rows0 + a.rows1;
  const bool grad = a.grad0 != nullptr || a.grad1 != nullptr;
  if (use_fused(rows, a.C)) {
    const size_t smem = static_cast<size_t>(rows) * NS * sizeof(float);
    launch(loss_fused_kernel<T>, 1, kFusedThreads, smem, stream, a);
    return launch_status();
  }
  if (ws == nullptr) return FASTMIX_BAD_ARGUMENT;
  if (a.C <= kWarpRowMaxC) {
    const unsigned grid = grid_for(rows, kWarpRowThreads / 32);
    launch(loss_stats_kernel<T, true>, grid, kWarpRowThreads, 0, stream, a, ws);
    if (int e = launch_status()) return e;
    launch(loss_finish_kernel, 1, kFinalThreads, 0, stream, a, ws);
    if (int e = launch_status()) return e;
    if (grad) launch(loss_grad_kernel<T, true>, grid, kWarpRowThreads, 0, stream, a, ws);
  } else {
    const unsigned grid = grid_for(rows, 1);
    launch(loss_stats_kernel<T, false>, grid, kBlockRowThreads, 0, stream, a, ws);
    if (int e = launch_status()) return e;
    launch(loss_finish_kernel, 1, kFinalThreads, 0, stream, a, ws);
    if (int e = launch_status()) return e;
    if (grad) launch(loss_grad_kernel<T, false>, grid, kBlockRowThreads, 0, stream, a, ws);
  }
  return launch_status();
}

}  // namespace
}  // namespace fastmix

using namespace fastmix;

extern "C" FASTMIX_API int64_t fastmix_loss_workspace_floats(int64_t rows0, int64_t rows1, int64_t C) {
  const int64_t rows = rows0 + rows1;
  return use_fused(rows, C) ? 0 : rows * NS + 1;
}

extern "C" FASTMIX_API int fastmix_loss_forward(
    int device, void* stream, int dtype, int mode, const void* logits0, int64_t rows0, int64_t rs0, int64_t cs0,
    const void* logits1, int64_t rows1, int64_t rs1, int64_t cs1, int64_t C, const void* keep_t, int keep_dtype,
    int64_t keep_rs, int64_t keep_cs, const int64_t* perm, int64_t keep_pool, const void* forget_t,
    int forget_dtype, int64_t forget_rs, int64_t forget_cs, const void* lam, int lam_dtype, int64_t lam_stride,
    float tau, float scale, float* loss, void* grad0, void* grad1, float* workspace, int* flag) {
  if (rows0 < 1 || C < 1 || rows1 < 0 || (mode == 1 && rows1 < 1) || (mode == 0 && (rows1 != 0 || !lam)) ||
      (mode != 0 && mode != 1) || !logits0 || !keep_t || !forget_t || !loss || !(tau > 0.f))
    return FASTMIX_BAD_ARGUMENT;
  DeviceGuard guard(device);
  if (guard.err != cudaSuccess) return guard.err;
  LossArgs a;
  a.mode = mode;
  a.logits0 = logits0; a.rows0 = rows0; a.rs0 = rs0; a.cs0 = cs0;
  a.logits1 = logits1; a.rows1 = rows1; a.rs1 = rs1; a.cs1 = cs1;
  a.C = C;
  a.keep = Target{keep_t, keep_dtype, keep_rs, keep_cs};
  a.forget = Target{forget_t, forget_dtype, forget_rs, forget_cs};
  a.perm = perm;
  a.keep_pool = perm ? keep_pool : rows0;
  a.lam = lam; a.lam_dtype = lam_dtype; a.lam_stride = lam_stride;
  a.inv_tau = 1.f / tau;
  a.scale = scale;
  a.loss = loss; a.grad0 = grad0; a.grad1 = grad1;
  a.flag = flag;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case F32: return launch_loss<float>(a, s, workspace);
    case F16: return launch_loss<__half>(a, s, workspace);
    case BF16: return launch_loss<__nv_bfloat16>(a, s, workspace);
    default: return FASTMIX_BAD_ARGUMENT;
  }
}
