// The contrastive functional C_tau (SPEC 4), its closed-form logits gradient, and the
// unlearner's loss L_mix + omega * L_real as one op.
//
// The rows of one call are up to three segments, one after another: mixed rows (keep
// and forget terms weighted by lam), keep-only rows and forget-only rows. Each segment
// belongs to a group with its own temperature, scale and log-sum-exp: C_tau(mix) is one
// mixed segment; C_tau(real) a keep-only and a forget-only segment; the unlearner's
// loss all three in two groups.
//
// Per row: one pass over logits and targets with an online softmax collects
// sum e, sum e^2, sum e*q_r, sum e*q_f (e = exp(z - max)), enough for both cosines;
// a second pass writes the gradient. A group of G lanes (4 to 32) or a whole block owns
// a row; contiguous, 16-byte aligned rows are read 16 bytes at a time with several
// accesses in flight per lane. The batch couples only through the log-sum-exp of each
// group's forget terms, so:
//   small batches (every row its own group of lanes in one block, at most
//   kFusedMaxElems logits): one launch: state -> log-sum-exp -> gradient;
//   larger: three launches, so that what a launch reads again from the one before is
//   one group's rows (L2 evict_last), read last first:
//   1. loss_mix_terms_kernel, a persistent grid, mixed rows first to last: their forget
//      terms (logits and q_f kept in L2), and each block's partial log-sum-exp of them;
//   2. loss_rows_kernel, a persistent grid, i last to first: mixed row i's keep term and
//      whole gradient (its group's log-sum-exp, merged from launch 1's partials, is known
//      now), forget-only row i's term (logits and q_f kept in L2; the same lanes just read
//      q_f[i] for mixed row i) and its block's partial, keep-only row i's term and
//      gradient (no log-sum-exp in it);
//   3. loss_grad_kernel, a persistent grid, forget-only rows first to last: their
//      gradients (their log-sum-exp merged from launch 2's partials); block 0 writes the loss.
//   A block merges one partial per block of the launch before, not every row's term.
//   Without mixed rows (L_real alone) launch 1 is left out.
// No path synchronises with the host.
#include <algorithm>
#include <atomic>
#include <initializer_list>

#include "common.cuh"

namespace fastmix {
namespace {

constexpr float kEps = 1e-8f;  // the clamp of d(p, q) = 1 - <p,q> / max(|p||q|, eps)
constexpr int NS = 12;         // floats of per-row state
// S_A_*, S_BP_*, S_DP_* stay consecutive: target_cosine writes them as one block.
enum Stat { S_M, S_INV_S, S_A_R, S_BP_R, S_DP_R, S_A_F, S_BP_F, S_DP_F, S_KEEP, S_X, S_KW, S_FW };

constexpr int kFusedThreads = 1024;
constexpr int64_t kFusedMaxElems = 4096;  // beyond this a grid over rows is faster than one block
constexpr int kRowThreads = 256;          // grid kernels: 256 / G rows per block, or one long row
constexpr int kGroups = 2;  // log-sum-exp groups: 0 (the mixed or only loss), 1 (L_real in the fused loss)

enum SegKind : int { MIXED = 0, KEEP_ONLY = 1, FORGET_ONLY = 2 };

struct Target {
  const void* p;
  int dtype;  // I64: labels
  int64_t rs, cs;
};

struct Segment {
  const void* logits;
  void* grad;  // contiguous (rows, C), or null
  int64_t rows, rs, cs;
  int kind, group;
};

struct Group {
  float inv_tau, scale, n_keep;  // scale: 1 or 1/|R|, times omega for L_real in the fused loss
  int64_t lo, hi;                // its rows
  int64_t f_lo, f_hi;            // its rows with a forget term (one segment)
};

// The rows [lo, lo + n) of one kind (the grid path pairs row i of each kind).
struct Span {
  int64_t lo, n;
};

struct LossArgs {
  Segment seg[3];  // unused ones have 0 rows
  Group grp[kGroups];
  int ngroups;
  int64_t rows, C;
  Target keep, forget;
  const int64_t* perm;  // mixed rows' keep target row, or null (row i)
  int64_t keep_pool;
  const void* lam;
  int lam_dtype;
  int64_t lam_stride;
  float* loss;
  bool grad;
  int* flag;
  Span mix, keep_only, forget_only;  // the segments by kind (n = 0: none)
  int64_t pairs;                     // the most rows of one kind
  int parts_mix, parts_forget;       // grid path: blocks of launches 1 and 2, one partial each
};

// Where row r's inputs are. A bad index leaves its term's row at -1.
struct RowRef {
  const void* logits;
  void* grad;
  int64_t i, rs, cs;
  int64_t keep_row, forget_row;  // -1: no such term
  bool keep_bad, forget_bad;
  float kw, fw;  // weights of the keep and forget terms
  float inv_tau, scale, n_keep;
};

__device__ __forceinline__ RowRef resolve_row(const LossArgs& a, int64_t r) {
  // constant indices only: a computed index into the kernel parameters would go through local memory
  Segment s = a.seg[0];
  if (r >= s.rows) {
    r -= s.rows;
    s = a.seg[1];
    if (r >= s.rows) {
      r -= s.rows;
      s = a.seg[2];
    }
  }
  const Group g = s.group == 0 ? a.grp[0] : a.grp[1];
  RowRef ref;
  ref.logits = s.logits; ref.grad = s.grad; ref.i = r; ref.rs = s.rs; ref.cs = s.cs;
  ref.inv_tau = g.inv_tau; ref.scale = g.scale; ref.n_keep = g.n_keep;
  ref.keep_bad = ref.forget_bad = false;
  if (s.kind == MIXED) {
    int64_t k = a.perm ? a.perm[r] : r;
    if (k < 0 || k >= a.keep_pool) { ref.keep_bad = true; k = -1; }
    ref.keep_row = k;
    ref.forget_row = r;
    const float lam = load_any(a.lam, a.lam_dtype, r * a.lam_stride);
    ref.kw = 1.f - lam;
    ref.fw = lam;
  } else if (s.kind == KEEP_ONLY) {
    ref.keep_row = r; ref.forget_row = -1; ref.kw = 1.f; ref.fw = 0.f;
  } else {
    ref.keep_row = -1; ref.forget_row = r; ref.kw = 0.f; ref.fw = 1.f;
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

// Elements k .. k+V-1 of a row: logits (V > 1: contiguous) and soft targets.
// E: the L2 policy of the loads (Evict, common.cuh).
template <typename T, int V, int E>
__device__ __forceinline__ void load_logits(const T* row, int64_t k, int64_t cs, float* z) {
  if constexpr (V == 1) z[0] = to_f(load_hinted<E>(row + k * cs));
  else load_vec<T, V, E>(row + k, z);
}

template <int V, int E>
__device__ __forceinline__ void load_target(const Target& t, int64_t row, int64_t k, float* q) {
  if constexpr (V == 1) q[0] = load_any<E>(t.p, t.dtype, row * t.rs + k * t.cs);
  else load_vec_any<V, E>(t.p, t.dtype, row * t.rs + k, q);
}

// Cosine c(p, q) and its gradient pieces as fastmix.backends.torch_backend.cosine_parts:
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
    if (y >= 0) dot = exp_diff(to_f(x[y * ref.cs]), M) * inv_s;
  } else {
    dot = soft_dot * inv_s;
    qn = sqrtf(q2);
  }
  cosine_parts(pp, dot, qn, &parts[0], &parts[1], &parts[2], &c);
  return c;
}

// Accesses of V elements each lane keeps in flight in a row pass of the grid kernels.
// The single-block kernel (up to 1024 threads: 64 registers each) keeps fewer, or spills.
template <int V>
constexpr int kUnroll = V == 1 ? 4 : 2;
template <int V>
constexpr int kFusedUnroll = V == 1 ? 2 : 1;
// A block per row has 8 warps on the row already (4 element loads spilled on sm_86).
constexpr int kBlockUnroll = 2;

// Computes row r's state (the terms asked for: do_keep, do_forget); every lane of the
// group gets it in st[]. An inactive group (no row left for it) still takes part in its
// warp's shuffles. E: the L2 policy of the row's loads.
template <typename T, bool WARP, int V, int U, int E = kEvictNormal>
__device__ void row_stats(const LossArgs& a, int64_t r, bool active, bool do_keep, bool do_forget, int lane, int G,
                          float* scratch, float* st) {
  const RowRef ref = resolve_row(a, active ? r : 0);
  const T* x = static_cast<const T*>(ref.logits) + ref.i * ref.rs;
  const bool keep = do_keep && has_keep(ref), forget = do_forget && has_forget(ref);
  const bool keep_soft = keep && a.keep.dtype != I64 && ref.keep_row >= 0;
  const bool forget_soft = forget && a.forget.dtype != I64 && ref.forget_row >= 0;
  float m = -INFINITY, s = 0.f, pp = 0.f, dr = 0.f, df = 0.f, qr2 = 0.f, qf2 = 0.f;
  const int64_t C = active ? a.C : 0;
  const int64_t step = static_cast<int64_t>(G) * V;
  for (int64_t k0 = static_cast<int64_t>(lane) * V; k0 < C; k0 += step * U) {
    float z[U][V] = {}, qr[U][V] = {}, qf[U][V] = {};
#pragma unroll
    for (int u = 0; u < U; ++u) {  // all loads first: U accesses in flight
      const int64_t k = k0 + u * step;
      if (k < C) {
        load_logits<T, V, E>(x, k, ref.cs, z[u]);
        if (keep_soft) load_target<V, E>(a.keep, ref.keep_row, k, qr[u]);
        if (forget_soft) load_target<V, E>(a.forget, ref.forget_row, k, qf[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (k0 + u * step >= C) break;
      float mv = z[u][0];
#pragma unroll
      for (int v = 1; v < V; ++v) mv = fmaxf(mv, z[u][v]);
      const float mn = fmaxf(m, mv);  // NaN logits are skipped here but make e (and s) NaN below
      if (mn > m) {
        const float f = exp_diff(m, mn);
        s *= f; pp *= f * f; dr *= f; df *= f;
        m = mn;
      }
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const float e = exp_diff(z[u][v], m);
        s += e; pp += e * e; dr += e * qr[u][v]; df += e * qf[u][v];
        qr2 += qr[u][v] * qr[u][v];
        qf2 += qf[u][v] * qf[u][v];
      }
    }
  }
  const float M = group_max<WARP>(m, scratch, G);
  const float f = exp_diff(m, M);
  s = group_sum<WARP>(s * f, scratch, G);
  pp = group_sum<WARP>(pp * f * f, scratch, G);
  dr = group_sum<WARP>(dr * f, scratch, G);
  df = group_sum<WARP>(df * f, scratch, G);
  qr2 = group_sum<WARP>(qr2, scratch, G);
  qf2 = group_sum<WARP>(qf2, scratch, G);
  if (!active) return;

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
    st[S_X] = ref.fw * (1.f - c) * ref.inv_tau;
  }
}

// Writes row r's logits gradient from its state and its group's log-sum-exp. No
// shuffles: a lane may leave as soon as its part is written. E_LAST: the L2 policy of the
// last reads (logits, q_r) and of the stores; E_QF: of q_f, which a later launch may read.
template <typename T, int V, int U, int E_LAST = kEvictNormal, int E_QF = kEvictNormal>
__device__ void row_grad(const LossArgs& a, int64_t r, int lane, int G, const float* st, float lse) {
  const RowRef ref = resolve_row(a, r);
  if (ref.grad == nullptr) return;
  const T* x = static_cast<const T*>(ref.logits) + ref.i * ref.rs;
  T* out = static_cast<T*>(ref.grad) + ref.i * a.C;
  const float alpha = -st[S_KW] * ref.scale;
  const float w = exp_diff(st[S_X], lse);  // softmax weight of this forget term
  const float beta = ref.n_keep * ref.inv_tau * w * st[S_FW] * ref.scale;
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
  const int64_t step = static_cast<int64_t>(G) * V;
  for (int64_t k0 = static_cast<int64_t>(lane) * V; k0 < a.C; k0 += step * U) {
    float z[U][V] = {}, qr[U][V] = {}, qf[U][V] = {};
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t k = k0 + u * step;
      if (k < a.C) {
        load_logits<T, V, E_LAST>(x, k, ref.cs, z[u]);
        if (keep_soft) load_target<V, E_LAST>(a.keep, ref.keep_row, k, qr[u]);
        if (forget_soft) load_target<V, E_QF>(a.forget, ref.forget_row, k, qf[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t k = k0 + u * step;
      if (k >= a.C) break;
      float o[V];
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const float p = exp_diff(z[u][v], M) * inv_s;
        const float q_r = keep_soft ? qr[u][v] : (k + v == yr ? 1.f : 0.f);
        const float q_f = forget_soft ? qf[u][v] : (k + v == yf ? 1.f : 0.f);
        o[v] = p * (ar * q_r - br * p + af * q_f - bf * p - gp);
      }
      store_vec<T, V, E_LAST>(out + k, o);
    }
  }
}

__device__ __forceinline__ Group group_at(const LossArgs& a, int g) { return g == 0 ? a.grp[0] : a.grp[1]; }

// The log-sum-exp of group g's forget terms on the one-block path (x: the scaled forget
// terms of the rows, `stride` floats apart), reduced by the whole block; every thread gets it.
__device__ __forceinline__ float group_lse(const LossArgs& a, int g, const float* x, int stride, float* scratch) {
  const Group grp = group_at(a, g);
  float m = -INFINITY;
#pragma unroll 1
  for (int64_t r = grp.f_lo + threadIdx.x; r < grp.f_hi; r += blockDim.x) m = fmaxf(m, x[r * stride]);
  const float M = block_max(m, scratch);
  float s = 0.f;
#pragma unroll 1
  for (int64_t r = grp.f_lo + threadIdx.x; r < grp.f_hi; r += blockDim.x) s += exp_diff(x[r * stride], M);
  s = block_sum(s, scratch);
  return s == 0.f ? -INFINITY : M + logf(s);
}

// The log-sum-exp of n partial (max, sum of exp(x - max)) pairs at p, reduced by the
// whole block of THREADS threads in one pass; every thread gets it. No pair, or only
// empty ones: -inf; a NaN sum stays NaN.
template <int THREADS>
__device__ __forceinline__ float parts_lse(const float* p, int n, float* scratch) {
  const float2* pairs = reinterpret_cast<const float2*>(p);  // 8-byte aligned: p is ws + an even offset
  float m = -INFINITY, s = 0.f;
#pragma unroll 1
  for (int k = threadIdx.x; k < n; k += THREADS) online_add(pairs[k].x, m, s, pairs[k].y);
  block_merge(m, s, scratch);
  return s == 0.f ? -INFINITY : m + logf(s);
}

// Group g's share of the loss given its lse (keep: the weighted keep terms of the rows,
// `stride` floats apart); every thread gets it.
__device__ __forceinline__ float group_loss(const LossArgs& a, int g, const float* keep, int stride, float* scratch,
                                            float lse) {
  const Group grp = group_at(a, g);
  float k = 0.f;
#pragma unroll 1
  for (int64_t r = grp.lo + threadIdx.x; r < grp.hi; r += blockDim.x) k += keep[r * stride];
  k = block_sum(k, scratch);
  return grp.scale * (k - grp.n_keep * lse);
}

// Writes the loss; lse0, lse1: the groups' log-sum-exps (two scalars: an array indexed in
// a loop went to the stack).
__device__ __forceinline__ void write_loss(const LossArgs& a, const float* keep, int stride, float* scratch,
                                           float lse0, float lse1) {
  float total = group_loss(a, 0, keep, stride, scratch, lse0);
  if (a.ngroups > 1) total += group_loss(a, 1, keep, stride, scratch, lse1);
  if (threadIdx.x == 0) *a.loss = total;
}

__device__ __forceinline__ int group_of(const LossArgs& a, int64_t r) {
  return r >= a.grp[0].lo && r < a.grp[0].hi ? 0 : 1;
}

// Small batches: the whole loss and gradient in one block, a group of G lanes per row,
// every row at once (no row waits for another).
template <typename T, int V>
__global__ void __launch_bounds__(kFusedThreads) loss_fused_kernel(LossArgs a, int G) {
  FASTMIX_DYNAMIC_SHARED(float, state);  // rows * 2: forget term, keep term
  __shared__ float scratch[32];
  const int lane = threadIdx.x % G;
  const int64_t r = threadIdx.x / G;
  const bool active = r < a.rows;
  float st[NS];
  row_stats<T, true, V, kFusedUnroll<V>>(a, r, active, true, true, lane, G, nullptr, st);
  if (active && lane == 0) {
    state[r * 2] = st[S_X];
    state[r * 2 + 1] = st[S_KEEP];
  }
  __syncthreads();
  const float lse0 = group_lse(a, 0, state, 2, scratch);
  const float lse1 = a.ngroups > 1 ? group_lse(a, 1, state, 2, scratch) : -INFINITY;
  write_loss(a, state + 1, 2, scratch, lse0, lse1);
  if (!a.grad || !active) return;
  row_grad<T, V, kFusedUnroll<V>>(a, r, lane, G, st, group_of(a, r) == 0 ? lse0 : lse1);
}

// ---- the grid path: state of all rows in the workspace, stat j of row r at ws[j * rows + r];
// after it, the partial log-sum-exps of launch 1's blocks (mixed rows) and of launch 2's
// (forget-only rows), two floats a block, at most a block a row each: (NS + 4) * rows floats.

// Accesses in flight per lane in the grid kernels' row passes.
template <int V, bool WARP>
constexpr int kGridUnroll = WARP ? kUnroll<V> : kBlockUnroll;

__device__ __forceinline__ void put_stats(const LossArgs& a, float* ws, int64_t r, const float* st) {
#pragma unroll
  for (int j = 0; j < NS; ++j) ws[j * a.rows + r] = st[j];
}

__device__ __forceinline__ void get_stats(const LossArgs& a, const float* ws, int64_t r, float* st) {
#pragma unroll
  for (int j = 0; j < NS; ++j) st[j] = ws[j * a.rows + r];
}

__device__ __forceinline__ float* mix_parts(const LossArgs& a, float* ws) { return ws + NS * a.rows; }
__device__ __forceinline__ float* forget_parts(const LossArgs& a, float* ws) { return ws + (NS + 2) * a.rows; }

// After a row loop over j in [0, end) (x: the terms of rows i < n, written by the loop;
// row i = j, or end - 1 - j for a loop that runs last to first), stores the block's partial
// at p[2 * blockIdx.x]: the max of the terms of the rows the block wrote and the sum of
// exp(term - max). Only the block's own rows: other blocks' writes need not be visible
// yet. Read back after the loop, not summed online during it: values live across the
// loop's calls went to the stack. Every thread calls it.
template <bool WARP>
__device__ __forceinline__ void put_part(float* p, const float* x, int64_t n, int64_t end, bool last_first,
                                         const RowSlots<WARP>& rs, float* scratch) {
  __syncthreads();  // the row slots' writes of x are visible to the block
  float m = -INFINITY, s = 0.f;
  if (static_cast<int>(threadIdx.x) < rs.per_block) {  // thread t re-reads row slot t's rows
#pragma unroll 1
    for (int64_t j = rs.first() + threadIdx.x; j < end; j += rs.stride()) {
      const int64_t i = last_first ? end - 1 - j : j;
      if (i < n) online_add(x[i], m, s);
    }
  }
  block_merge(m, s, scratch);
  if (threadIdx.x == 0) {
    p[2 * blockIdx.x] = m;
    p[2 * blockIdx.x + 1] = s;
  }
}

// Launch 1: the forget term of every mixed row, rows first to last, and each block's
// partial log-sum-exp of its rows' terms. Logits and q_f are loaded evict_last: launch 2
// reads them again, the last rows first.
template <typename T, bool WARP, int V>
__global__ void __launch_bounds__(kRowThreads) loss_mix_terms_kernel(LossArgs a, int G, float* ws) {
  __shared__ float scratch[32];
  const RowSlots<WARP> rs(G);
  float st[NS];
  for (int64_t base = rs.first(); base < a.mix.n; base += rs.stride()) {
    const int64_t i = base + rs.slot;
    const bool active = i < a.mix.n;
    row_stats<T, WARP, V, kGridUnroll<V, WARP>, kEvictLast>(a, a.mix.lo + (active ? i : 0), active, false, true,
                                                              rs.lane, rs.G, scratch, st);
    if (active && rs.lane == 0) put_stats(a, ws, a.mix.lo + i, st);
  }
  put_part(mix_parts(a, ws), ws + S_X * a.rows + a.mix.lo, a.mix.n, a.mix.n, false, rs, scratch);
}

// Launch 2, a persistent grid over i = pairs - 1 down to 0 (what launch 1 read last comes
// first): mixed row i's keep term and gradient, forget-only row i's term (kept in L2 for
// launch 3) and its block's partial log-sum-exp, keep-only row i's term and gradient.
// Each block first merges the mixed rows' log-sum-exp from launch 1's partials.
template <typename T, bool WARP, int V>
__global__ void __launch_bounds__(kRowThreads) loss_rows_kernel(LossArgs a, int G, float* ws) {
  constexpr int U = kGridUnroll<V, WARP>;
  __shared__ float scratch[32];
  const RowSlots<WARP> rs(G);
  // the log-sum-exp is read from shared memory where it is used: held in a register
  // across the row loop, it went to the stack in the block-per-row variants
  __shared__ float lse_mix;
  const bool need_lse = a.mix.n > 0 && a.grad;
  const float lse = need_lse ? parts_lse<kRowThreads>(mix_parts(a, ws), a.parts_mix, scratch) : 0.f;
  if (threadIdx.x == 0) lse_mix = lse;
  __syncthreads();
  float st[NS];
  for (int64_t base = rs.first(); base < a.pairs; base += rs.stride()) {
    const int64_t i = a.pairs - 1 - (base + rs.slot);  // < 0: no row for this group
    if (a.mix.n > 0) {
      const bool on = i >= 0 && i < a.mix.n;
      const int64_t r = a.mix.lo + (on ? i : 0);
      row_stats<T, WARP, V, U>(a, r, on, true, false, rs.lane, rs.G, scratch, st);
      if (on) {
        if (rs.lane == 0) ws[S_KEEP * a.rows + r] = st[S_KEEP];
#pragma unroll
        for (int j = S_A_F; j <= S_DP_F; ++j) st[j] = ws[j * a.rows + r];  // launch 1's forget term
        st[S_X] = ws[S_X * a.rows + r];
        st[S_FW] = ws[S_FW * a.rows + r];
        // q_f[i] stays in L2: forget-only row i reads it next, and launch 3 again
        if (a.grad) row_grad<T, V, U, kEvictFirst, kEvictLast>(a, r, rs.lane, rs.G, st, lse_mix);
      }
    }
    if (a.forget_only.n > 0) {
      const bool on = i >= 0 && i < a.forget_only.n;
      const int64_t r = a.forget_only.lo + (on ? i : 0);
      row_stats<T, WARP, V, U, kEvictLast>(a, r, on, false, true, rs.lane, rs.G, scratch, st);
      if (on && rs.lane == 0) put_stats(a, ws, r, st);
    }
    if (a.keep_only.n > 0) {
      const bool on = i >= 0 && i < a.keep_only.n;
      const int64_t r = a.keep_only.lo + (on ? i : 0);
      row_stats<T, WARP, V, U>(a, r, on, true, false, rs.lane, rs.G, scratch, st);
      if (on && rs.lane == 0) put_stats(a, ws, r, st);
      if (on && a.grad) row_grad<T, V, U, kEvictFirst>(a, r, rs.lane, rs.G, st, 0.f);
    }
  }
  if (a.forget_only.n > 0)
    put_part(forget_parts(a, ws), ws + S_X * a.rows + a.forget_only.lo, a.forget_only.n, a.pairs, true, rs, scratch);
}

// Launch 3, a persistent grid: block 0 writes the loss; the forget-only rows' gradients,
// first to last (the rows launch 2 read last come first), each block starting from their
// group's log-sum-exp, merged from launch 2's partials.
template <typename T, bool WARP, int V>
__global__ void __launch_bounds__(kRowThreads) loss_grad_kernel(LossArgs a, int G, float* ws) {
  __shared__ float scratch[32];
  __shared__ float lse_forget;  // in shared memory as in loss_rows_kernel
  const bool forget = a.forget_only.n > 0;
  const float lse_f = forget ? parts_lse<kRowThreads>(forget_parts(a, ws), a.parts_forget, scratch) : -INFINITY;
  if (blockIdx.x == 0) {
    const float lse_m = a.mix.n > 0 ? parts_lse<kRowThreads>(mix_parts(a, ws), a.parts_mix, scratch) : -INFINITY;
    const bool mix0 = a.mix.n > 0;  // the mixed rows are group 0 wherever they are; else the forget rows are
    write_loss(a, ws + S_KEEP * a.rows, 1, scratch, mix0 ? lse_m : lse_f, mix0 ? lse_f : lse_m);
  }
  if (!a.grad || !forget) return;
  if (threadIdx.x == 0) lse_forget = lse_f;
  __syncthreads();
  const RowSlots<WARP> rs(G);
  float st[NS];
  for (int64_t n = rs.first() + rs.slot; n < a.forget_only.n; n += rs.stride()) {  // no shuffles: lanes may leave
    const int64_t r = a.forget_only.lo + n;
    get_stats(a, ws, r, st);
    row_grad<T, V, kGridUnroll<V, WARP>, kEvictFirst, kEvictFirst>(a, r, rs.lane, rs.G, st, lse_forget);
  }
}

// The single-block path's lanes per row, or 0 when the batch takes the grid path.
int fused_lanes(int64_t rows, int64_t C) {
  if (C > kWarpRowMaxC || rows * C > kFusedMaxElems) return 0;
  int G = lanes_for(C, 1);
  while (G > 4 && rows * G > kFusedThreads) G /= 2;
  return rows * G <= kFusedThreads ? G : 0;
}

// Whether every row of the call can be read V elements at a time.
template <typename T>
bool loss_vectorizable(const LossArgs& a, int V) {
  if (a.C % V != 0) return false;
  for (const Segment& s : a.seg) {
    if (s.rows == 0) continue;
    if (!rows_vectorizable(s.logits, s.rows, a.C, s.rs, s.cs, sizeof(T), V)) return false;
    if (s.grad && !aligned16(s.grad)) return false;
  }
  for (const Target* t : {&a.keep, &a.forget}) {
    if (t->dtype == I64) continue;
    const int64_t rows = 2;  // any row may be read: check the row stride too
    if (!rows_vectorizable(t->p, rows, a.C, t->rs, t->cs, dtype_size(t->dtype), V)) return false;
  }
  return true;
}

// Blocks a persistent grid keeps per SM at most (each merges the partial log-sum-exps once).
constexpr int kBlocksPerSm = 4;

// Blocks of `kernel` (kRowThreads threads) that one SM runs at once, at most kBlocksPerSm:
// a persistent grid sized past that runs its extra blocks as a second wave (at 80 registers
// 3 fit, and the fourth block of each SM would run alone, each as long as the others).
// Found once per kernel, for the first device it runs on, and kept in `known`; a failed
// query gives 1 for this launch and is asked again the next time.
template <typename Kernel>
int blocks_per_sm(Kernel kernel, std::atomic<int>& known) {
  if (const int n = known.load(std::memory_order_relaxed)) return n;
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, reinterpret_cast<const void*>(kernel), kRowThreads, 0) !=
      cudaSuccess) {
    cudaGetLastError();  // not the launches' error to report
    return 1;
  }
  n = std::max(1, std::min(n, kBlocksPerSm));
  known.store(n, std::memory_order_relaxed);
  return n;
}

template <typename T, bool WARP, int V>
int launch_grid(const LossArgs& a, cudaStream_t stream, float* ws, int G, int sms) {
  static std::atomic<int> known_mix{0}, known_rows{0}, known_grad{0};
  const int mix_blocks = blocks_per_sm(loss_mix_terms_kernel<T, WARP, V>, known_mix);
  const int rows_blocks = blocks_per_sm(loss_rows_kernel<T, WARP, V>, known_rows);
  const int grad_blocks = blocks_per_sm(loss_grad_kernel<T, WARP, V>, known_grad);
  const int per_block = WARP ? kRowThreads / G : 1;
  const auto resident = [&](int blocks) { return static_cast<unsigned>(std::max(sms, 1) * blocks); };
  LossArgs b = a;
  const unsigned mix_grid = std::min(grid_for(a.mix.n, per_block), resident(mix_blocks));
  const unsigned rows_grid = std::min(grid_for(a.pairs, per_block), resident(rows_blocks));
  b.parts_mix = a.mix.n > 0 ? static_cast<int>(mix_grid) : 0;
  b.parts_forget = a.forget_only.n > 0 ? static_cast<int>(rows_grid) : 0;
  if (a.mix.n > 0) {
    launch(loss_mix_terms_kernel<T, WARP, V>, mix_grid, kRowThreads, 0, stream, b, G, ws);
    if (int e = launch_status()) return e;
  }
  launch(loss_rows_kernel<T, WARP, V>, rows_grid, kRowThreads, 0, stream, b, G, ws);
  if (int e = launch_status()) return e;
  const unsigned grad_grid = a.grad ? std::min(grid_for(a.forget_only.n, per_block), resident(grad_blocks)) : 1;
  launch(loss_grad_kernel<T, WARP, V>, grad_grid, kRowThreads, 0, stream, b, G, ws);
  return launch_status();
}

template <typename T, int V>
int launch_loss_v(const LossArgs& a, cudaStream_t stream, float* ws, int device) {
  if (int G = fused_lanes(a.rows, a.C)) {
    G = std::min(G, lanes_for(a.C, V));  // fewer lanes when each reads V at a time
    const int64_t threads = (a.rows * G + 31) / 32 * 32;
    const size_t smem = static_cast<size_t>(a.rows) * 2 * sizeof(float);
    launch(loss_fused_kernel<T, V>, 1, static_cast<unsigned>(threads), smem, stream, a, G);
    return launch_status();
  }
  if (ws == nullptr) return FASTMIX_BAD_ARGUMENT;
  int sms = 0;
  if (cudaError_t e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device)) return e;
  if (a.C <= kWarpRowMaxC) return launch_grid<T, true, V>(a, stream, ws, lanes_for(a.C, V), sms);
  return launch_grid<T, false, V>(a, stream, ws, 0, sms);
}

template <typename T>
int launch_loss(const LossArgs& a, cudaStream_t stream, float* ws, int device) {
  constexpr int V = 16 / sizeof(T);
  if (loss_vectorizable<T>(a, V)) return launch_loss_v<T, V>(a, stream, ws, device);
  return launch_loss_v<T, 1>(a, stream, ws, device);
}

// Names the call's segments by kind for the grid path, then launches.
int dispatch(int dtype, LossArgs& a, void* stream, float* ws, int device) {
  int64_t lo = 0;
  for (const Segment& s : a.seg) {
    Span& span = s.kind == MIXED ? a.mix : s.kind == KEEP_ONLY ? a.keep_only : a.forget_only;
    if (s.rows > 0) span = Span{lo, s.rows};
    lo += s.rows;
  }
  a.pairs = std::max({a.mix.n, a.keep_only.n, a.forget_only.n});
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case F32: return launch_loss<float>(a, s, ws, device);
    case F16: return launch_loss<__half>(a, s, ws, device);
    case BF16: return launch_loss<__nv_bfloat16>(a, s, ws, device);
    default: return FASTMIX_BAD_ARGUMENT;
  }
}

Segment segment(const void* logits, void* grad, int64_t rows, int64_t rs, int64_t cs, int kind, int group) {
  return Segment{logits, grad, rows, rs, cs, kind, group};
}

LossArgs common_args(int64_t C, const void* keep_t, int keep_dtype, int64_t keep_rs, int64_t keep_cs,
                     const int64_t* perm, int64_t keep_pool, const void* forget_t, int forget_dtype,
                     int64_t forget_rs, int64_t forget_cs, const void* lam, int lam_dtype, int64_t lam_stride,
                     float* loss, int* flag) {
  LossArgs a{};
  a.C = C;
  a.keep = Target{keep_t, keep_dtype, keep_rs, keep_cs};
  a.forget = Target{forget_t, forget_dtype, forget_rs, forget_cs};
  a.perm = perm;
  a.keep_pool = keep_pool;
  a.lam = lam; a.lam_dtype = lam_dtype; a.lam_stride = lam_stride;
  a.loss = loss;
  a.flag = flag;
  return a;
}

}  // namespace
}  // namespace fastmix

using namespace fastmix;

extern "C" FASTMIX_API int64_t fastmix_loss_workspace_floats(int64_t rows0, int64_t rows1, int64_t C) {
  const int64_t rows = rows0 + rows1;
  return fused_lanes(rows, C) ? 0 : rows * (NS + 4);
}

extern "C" FASTMIX_API int fastmix_loss_forward(
    int device, void* stream, int dtype, int mode, const void* logits0, int64_t rows0, int64_t rs0, int64_t cs0,
    const void* logits1, int64_t rows1, int64_t rs1, int64_t cs1, int64_t C, const void* keep_t, int keep_dtype,
    int64_t keep_rs, int64_t keep_cs, const int64_t* perm, int64_t keep_pool, const void* forget_t,
    int forget_dtype, int64_t forget_rs, int64_t forget_cs, const void* lam, int lam_dtype, int64_t lam_stride,
    float tau, float scale, float* loss, void* grad0, void* grad1, float* workspace, int* flag) {
  if (rows0 < 1 || C < 1 || rows1 < 0 || (mode == 1 && (rows1 < 1 || !logits1)) ||
      (mode == 0 && (rows1 != 0 || !lam)) || (mode != 0 && mode != 1) || !logits0 || !keep_t || !forget_t ||
      !loss || !(tau > 0.f))
    return FASTMIX_BAD_ARGUMENT;
  DeviceGuard guard(device);
  if (guard.err != cudaSuccess) return guard.err;
  LossArgs a = common_args(C, keep_t, keep_dtype, keep_rs, keep_cs, perm, perm ? keep_pool : rows0, forget_t,
                           forget_dtype, forget_rs, forget_cs, lam, lam_dtype, lam_stride, loss, flag);
  if (mode == 0) {
    a.seg[0] = segment(logits0, grad0, rows0, rs0, cs0, MIXED, 0);
  } else {
    a.seg[0] = segment(logits0, grad0, rows0, rs0, cs0, KEEP_ONLY, 0);
    a.seg[1] = segment(logits1, grad1, rows1, rs1, cs1, FORGET_ONLY, 0);
  }
  a.rows = rows0 + rows1;
  // the forget terms: the mixed rows, or the forget-only rows
  a.grp[0] = Group{1.f / tau, scale, static_cast<float>(rows0), 0, a.rows, mode == 0 ? 0 : rows0, a.rows};
  a.ngroups = 1;
  a.grad = grad0 != nullptr || grad1 != nullptr;
  return dispatch(dtype, a, stream, workspace, device);
}

extern "C" FASTMIX_API int fastmix_unlearn_loss_forward(
    int device, void* stream, int dtype, const void* mix, int64_t B, int64_t mix_rs, int64_t mix_cs,
    const void* retain, int64_t Br, int64_t retain_rs, int64_t retain_cs, const void* forget, int64_t Bf,
    int64_t forget_rs, int64_t forget_cs, int64_t C, const void* keep_t, int keep_dtype, int64_t keep_rs,
    int64_t keep_cs, const int64_t* perm, int64_t keep_pool, const void* forget_t, int forget_dtype,
    int64_t forget_t_rs, int64_t forget_t_cs, const void* lam, int lam_dtype, int64_t lam_stride, float tau_mix,
    float scale_mix, float tau_real, float scale_real, float* loss, void* grad_mix, void* grad_retain,
    void* grad_forget, float* workspace, int* flag) {
  const bool real = Br > 0;
  if (B < 1 || C < 1 || Br < 0 || Bf < 0 || !mix || !lam || !keep_t || !forget_t || !loss || !(tau_mix > 0.f) ||
      (real && (Bf < 1 || !retain || !forget || !(tau_real > 0.f))) || (!real && Bf != 0))
    return FASTMIX_BAD_ARGUMENT;
  DeviceGuard guard(device);
  if (guard.err != cudaSuccess) return guard.err;
  LossArgs a = common_args(C, keep_t, keep_dtype, keep_rs, keep_cs, perm, perm ? keep_pool : B, forget_t,
                           forget_dtype, forget_t_rs, forget_t_cs, lam, lam_dtype, lam_stride, loss, flag);
  a.seg[0] = segment(mix, grad_mix, B, mix_rs, mix_cs, MIXED, 0);
  a.rows = B + Br + Bf;
  a.grp[0] = Group{1.f / tau_mix, scale_mix, static_cast<float>(B), 0, B, 0, B};
  a.ngroups = 1;
  if (real) {
    a.seg[0] = segment(retain, grad_retain, Br, retain_rs, retain_cs, KEEP_ONLY, 1);
    a.seg[1] = segment(forget, grad_forget, Bf, forget_rs, forget_cs, FORGET_ONLY, 1);
    a.seg[2] = segment(mix, grad_mix, B, mix_rs, mix_cs, MIXED, 0);
    a.grp[0] = Group{1.f / tau_mix, scale_mix, static_cast<float>(B), Br + Bf, a.rows, Br + Bf, a.rows};
    a.grp[1] = Group{1.f / tau_real, scale_real, static_cast<float>(Br), 0, Br + Bf, Br, Br + Bf};
    a.ngroups = 2;
  }
  a.grad = grad_mix != nullptr || grad_retain != nullptr || grad_forget != nullptr;
  return dispatch(dtype, a, stream, workspace, device);
}
