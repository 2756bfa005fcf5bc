// Batched mixup x = M * x_f + (1 - M) * x_r[perm] (SPEC 2) and its backward.
//
// Rows are dense: contiguous (B, ...) or channels_last (B, H, W, C); in both the batch
// is outermost, so row i is the `inner` elements from i * inner, and only a mask needs
// the layout (to find the pixel of an element). One block row per sample
// (blockIdx.x), blocks along the row in blockIdx.y; 16-byte vector accesses when
// every row and pointer allows them.
#include "common.cuh"

namespace fastmix {
namespace {

constexpr int kMixThreads = 256;
constexpr unsigned kMaxGridY = 65535;

struct MixArgs {
  int64_t B, inner, pool, w_stride, Cc, HW;
  const int64_t* perm;
  const void* w;
  int w_dtype, w_kind, channels_last;
  int* flag;
};

// The weight of element `o` of row i (o inside the row).
__device__ __forceinline__ float mix_weight(const MixArgs& a, int64_t i, float row_w, int64_t o) {
  if (a.w_kind != 2) return row_w;
  const uint32_t off = static_cast<uint32_t>(o);  // rows of masked images are < 2^31 elements
  const uint32_t hw = a.channels_last ? off / static_cast<uint32_t>(a.Cc) : off % static_cast<uint32_t>(a.HW);
  return load_any(a.w, a.w_dtype, i * a.HW + hw);
}

__device__ __forceinline__ float row_weight(const MixArgs& a, int64_t i) {
  return a.w_kind == 2 ? 0.f : load_any(a.w, a.w_dtype, i * a.w_stride);
}

// The pool row of sample i, or -1 (flagged once per row) when perm points outside it.
__device__ __forceinline__ int64_t source_row(const MixArgs& a, int64_t i, bool report) {
  if (a.perm == nullptr) return i;
  const int64_t k = a.perm[i];
  if (k < 0 || k >= a.pool) {
    if (report) flag_error(a.flag, kBadPerm);
    return -1;
  }
  return k;
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kMixThreads) mixup_fwd_kernel(MixArgs a, const T* __restrict__ xf,
                                                                const T* __restrict__ xr, T* __restrict__ out) {
  const int64_t i = blockIdx.x;
  const int64_t src = source_row(a, i, blockIdx.y == 0 && threadIdx.x == 0);
  const float row_w = row_weight(a, i);
  const int64_t step = static_cast<int64_t>(gridDim.y) * blockDim.x * VEC;
  for (int64_t o = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * VEC; o < a.inner; o += step) {
    float f[VEC], r[VEC] = {}, y[VEC];
    load_vec<T, VEC>(xf + i * a.inner + o, f);
    if (src >= 0) load_vec<T, VEC>(xr + src * a.inner + o, r);
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const float m = mix_weight(a, i, row_w, o + v);
      const float rv = src >= 0 ? r[v] : NAN;  // a bad index poisons its row
      y[v] = m * f[v] + (1.f - m) * rv;
    }
    store_vec<T, VEC>(out + i * a.inner + o, y);
  }
}

// Adds V float32 values to p[0..V) atomically: 16-byte vector atomics where the card
// has them (sm_90: atomicAdd on float4; p is then 16-byte aligned), else one per value.
template <int V>
__device__ __forceinline__ void atomic_add_vec(float* p, const float* v) {
#if FASTMIX_VECTOR_ATOMICS
  if constexpr (V % 4 == 0) {
#pragma unroll
    for (int j = 0; j < V; j += 4) {
      FASTMIX_CHECK_ALIGNED(p + j, 16);
      atomicAdd(reinterpret_cast<float4*>(p + j), make_float4(v[j], v[j + 1], v[j + 2], v[j + 3]));
    }
  } else
#endif
  {
#pragma unroll
    for (int j = 0; j < V; ++j) atomicAdd(p + j, v[j]);
  }
}

// Gradients to x_f, x_r and (for one or per-row weights) the weight's per-row sums.
// The weight's gradient sums products that largely cancel: each thread sums its few
// elements in float32, the block sums those pairwise in float32, and one float64
// atomic add per block joins the blocks of a row (no float64 arithmetic per element).
template <typename T, int VEC>
__global__ void __launch_bounds__(kMixThreads) mixup_bwd_kernel(MixArgs a, const T* __restrict__ g,
                                                                const T* __restrict__ xf, const T* __restrict__ xr,
                                                                T* __restrict__ grad_f, float* grad_r,
                                                                T* __restrict__ grad_r_native, double* grad_w) {
  __shared__ float scratch[32];
  const int64_t i = blockIdx.x;
  const int64_t src = source_row(a, i, blockIdx.y == 0 && threadIdx.x == 0);
  const float row_w = row_weight(a, i);
  const int64_t step = static_cast<int64_t>(gridDim.y) * blockDim.x * VEC;
  float acc = 0.f;
  for (int64_t o = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * VEC; o < a.inner; o += step) {
    const int64_t e = i * a.inner + o;
    float gv[VEC], f[VEC] = {}, r[VEC] = {}, gf[VEC], gr[VEC];
    load_vec<T, VEC>(g + e, gv);
    if (grad_w) {
      load_vec<T, VEC>(xf + e, f);
      if (src >= 0) load_vec<T, VEC>(xr + src * a.inner + o, r);
    }
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const float m = mix_weight(a, i, row_w, o + v);
      gf[v] = m * gv[v];
      gr[v] = (1.f - m) * gv[v];
      if (grad_w) acc += gv[v] * (f[v] - (src >= 0 ? r[v] : NAN));
    }
    if (grad_r && src >= 0) atomic_add_vec<VEC>(grad_r + src * a.inner + o, gr);
    if (grad_f) store_vec<T, VEC>(grad_f + e, gf);
    if (grad_r_native) store_vec<T, VEC>(grad_r_native + e, gr);
  }
  if (grad_w) {
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) atomicAdd(grad_w + i, static_cast<double>(acc));
  }
}

// A mask's gradient: one thread per pixel sums over the channels (the reduction is
// fused with the gradients to x_f and x_r, so each input is read once).
template <typename T>
__global__ void __launch_bounds__(kMixThreads) mixup_bwd_mask_kernel(MixArgs a, const T* __restrict__ g,
                                                                     const T* __restrict__ xf,
                                                                     const T* __restrict__ xr, T* __restrict__ grad_f,
                                                                     float* grad_r, T* __restrict__ grad_r_native,
                                                                     void* grad_w) {
  const int64_t i = blockIdx.x;
  const int64_t src = source_row(a, i, blockIdx.y == 0 && threadIdx.x == 0);
  for (int64_t hw = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; hw < a.HW;
       hw += static_cast<int64_t>(gridDim.y) * blockDim.x) {
    const float m = load_any(a.w, a.w_dtype, i * a.HW + hw);
    float acc = 0.f;  // Cc products (the channels)
    for (int64_t c = 0; c < a.Cc; ++c) {
      const int64_t o = a.channels_last ? hw * a.Cc + c : c * a.HW + hw;
      const int64_t e = i * a.inner + o;
      const float gg = to_f(g[e]);
      if (grad_f) grad_f[e] = from_f<T>(m * gg);
      if (grad_r_native) grad_r_native[e] = from_f<T>((1.f - m) * gg);
      if (grad_r && src >= 0) atomicAdd(grad_r + src * a.inner + o, (1.f - m) * gg);
      acc += gg * (to_f(xf[e]) - (src >= 0 ? to_f(xr[src * a.inner + o]) : NAN));
    }
    store_any(grad_w, a.w_dtype, i * a.HW + hw, acc);
  }
}

// Threads and blocks along a row of `units` work items.
void row_grid(int64_t B, int64_t units, dim3* grid, dim3* block) {
  int64_t threads = ((units + 31) / 32) * 32;
  if (threads > kMixThreads) threads = kMixThreads;
  if (threads < 32) threads = 32;
  int64_t gy = (units + threads - 1) / threads;
  if (gy > kMaxGridY) gy = kMaxGridY;
  if (gy < 1) gy = 1;
  *grid = dim3(static_cast<unsigned>(B), static_cast<unsigned>(gy));
  *block = dim3(static_cast<unsigned>(threads));
}

template <typename T>
int launch_fwd(cudaStream_t s, const MixArgs& a, const void* xf, const void* xr, void* out) {
  constexpr int V = 16 / sizeof(T);
  const bool vec = a.inner % V == 0 && aligned16(xf) && aligned16(xr) && aligned16(out);
  dim3 grid, block;
  const T* f = static_cast<const T*>(xf);
  const T* r = static_cast<const T*>(xr);
  T* o = static_cast<T*>(out);
  if (vec) {
    row_grid(a.B, a.inner / V, &grid, &block);
    launch(mixup_fwd_kernel<T, V>, grid, block, 0, s, a, f, r, o);
  } else {
    row_grid(a.B, a.inner, &grid, &block);
    launch(mixup_fwd_kernel<T, 1>, grid, block, 0, s, a, f, r, o);
  }
  return launch_status();
}

template <typename T>
int launch_bwd(cudaStream_t s, const MixArgs& a, const void* g, const void* xf, const void* xr, void* grad_f,
               float* grad_r, void* grad_r_native, void* grad_w) {
  const T* gp = static_cast<const T*>(g);
  const T* f = static_cast<const T*>(xf);
  const T* r = static_cast<const T*>(xr);
  T* gf = static_cast<T*>(grad_f);
  T* grn = static_cast<T*>(grad_r_native);
  dim3 grid, block;
  if (a.w_kind == 2 && grad_w) {
    row_grid(a.B, a.HW, &grid, &block);
    launch(mixup_bwd_mask_kernel<T>, grid, block, 0, s, a, gp, f, r, gf, grad_r, grn, grad_w);
    return launch_status();
  }
  double* gw = static_cast<double*>(grad_w);
  constexpr int V = 16 / sizeof(T);
  const bool vec = a.inner % V == 0 && aligned16(g) && aligned16(xf) && aligned16(xr) &&
                   (!grad_f || aligned16(grad_f)) && (!grad_r_native || aligned16(grad_r_native));
  if (vec) {
    row_grid(a.B, a.inner / V, &grid, &block);
    launch(mixup_bwd_kernel<T, V>, grid, block, 0, s, a, gp, f, r, gf, grad_r, grn, gw);
  } else {
    row_grid(a.B, a.inner, &grid, &block);
    launch(mixup_bwd_kernel<T, 1>, grid, block, 0, s, a, gp, f, r, gf, grad_r, grn, gw);
  }
  return launch_status();
}

bool valid(const MixArgs& a) {
  if (a.B < 1 || a.B > 0x7fffffff || a.inner < 1 || !a.w || a.w_kind < 0 || a.w_kind > 2) return false;
  if (a.perm && a.pool < 1) return false;
  if (a.w_kind == 2 && (a.Cc < 1 || a.HW < 1 || a.Cc * a.HW != a.inner || a.inner > 0x7fffffff)) return false;
  return true;
}

MixArgs make_args(int64_t B, int64_t inner, const int64_t* perm, int64_t pool, const void* w, int w_dtype,
                  int w_kind, int64_t w_stride, int channels_last, int64_t Cc, int64_t HW, int* flag) {
  MixArgs a;
  a.B = B; a.inner = inner; a.pool = pool; a.w_stride = w_kind == 0 ? 0 : w_stride;
  a.Cc = Cc; a.HW = HW; a.perm = perm; a.w = w; a.w_dtype = w_dtype; a.w_kind = w_kind;
  a.channels_last = channels_last; a.flag = flag;
  return a;
}

}  // namespace
}  // namespace fastmix

using namespace fastmix;

extern "C" FASTMIX_API int fastmix_mixup_forward(int device, void* stream, int dtype, const void* xf,
                                                 const void* xr, void* out, int64_t B, int64_t inner,
                                                 const int64_t* perm, int64_t pool, const void* w, int w_dtype,
                                                 int w_kind, int64_t w_stride, int channels_last, int64_t Cc,
                                                 int64_t HW, int* flag) {
  const MixArgs a = make_args(B, inner, perm, pool, w, w_dtype, w_kind, w_stride, channels_last, Cc, HW, flag);
  if (!valid(a) || !xf || !xr || !out) return FASTMIX_BAD_ARGUMENT;
  DeviceGuard guard(device);
  if (guard.err != cudaSuccess) return guard.err;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case F32: return launch_fwd<float>(s, a, xf, xr, out);
    case F16: return launch_fwd<__half>(s, a, xf, xr, out);
    case BF16: return launch_fwd<__nv_bfloat16>(s, a, xf, xr, out);
    default: return FASTMIX_BAD_ARGUMENT;
  }
}

extern "C" FASTMIX_API int fastmix_mixup_backward(int device, void* stream, int dtype, const void* g,
                                                  const void* xf, const void* xr, int64_t B, int64_t inner,
                                                  const int64_t* perm, int64_t pool, const void* w, int w_dtype,
                                                  int w_kind, int64_t w_stride, int channels_last, int64_t Cc,
                                                  int64_t HW, void* grad_f, float* grad_r, void* grad_r_native,
                                                  void* grad_w, int* flag) {
  const MixArgs a = make_args(B, inner, perm, pool, w, w_dtype, w_kind, w_stride, channels_last, Cc, HW, flag);
  if (!valid(a) || !g || !xf || !xr) return FASTMIX_BAD_ARGUMENT;
  if ((grad_r && !perm) || (grad_r_native && perm)) return FASTMIX_BAD_ARGUMENT;
  DeviceGuard guard(device);
  if (guard.err != cudaSuccess) return guard.err;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case F32: return launch_bwd<float>(s, a, g, xf, xr, grad_f, grad_r, grad_r_native, grad_w);
    case F16: return launch_bwd<__half>(s, a, g, xf, xr, grad_f, grad_r, grad_r_native, grad_w);
    case BF16: return launch_bwd<__nv_bfloat16>(s, a, g, xf, xr, grad_f, grad_r, grad_r_native, grad_w);
    default: return FASTMIX_BAD_ARGUMENT;
  }
}
