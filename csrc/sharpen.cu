// Sharpen(softmax(z), T) = softmax(z / T) per row (SPEC 3), and its backward
// dz = y * (g - <g, y>) / T. Rows up to 1024 values take a group of 4 to 32 lanes each;
// longer rows one block each, looping over the row (no row is held in registers, so any
// C fits). Inputs may have any strides; outputs are contiguous. Contiguous rows with
// 16-byte aligned starts are read and written 16 bytes at a time.
#include "common.cuh"

namespace fastmix {
namespace {

constexpr int kSharpenThreads = 256;

// Accesses of V elements each lane keeps in flight.
template <int V>
constexpr int kSharpenUnroll = V == 1 ? 4 : 2;

// U accesses of V elements from row (column stride cs; V > 1: contiguous), those at k0 +
// u * step below n; the others stay as they were (zeros).
template <typename T, int V, int U>
__device__ __forceinline__ void load_tile(const T* row, int64_t cs, int64_t k0, int64_t step, int64_t n,
                                          float (&z)[U][V]) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int64_t k = k0 + u * step;
    if (k < n) {
      if constexpr (V == 1) z[u][0] = to_f(row[k * cs]);
      else load_vec<T, V>(row + k, z[u]);
    }
  }
}

// x: rows with strides (rs, cs) (V > 1: cs == 1 and 16-byte aligned rows). A group of G
// lanes per row (WARP) or a block per row; two passes over the row, U accesses in flight.
template <typename T, bool WARP, int V>
__global__ void __launch_bounds__(kSharpenThreads)
    sharpen_fwd_kernel(const T* __restrict__ x, int64_t rows, int64_t C, int64_t rs, int64_t cs, float inv_T,
                       T* __restrict__ out, int G) {
  __shared__ float scratch[32];
  constexpr int U = kSharpenUnroll<V>;
  const RowSlots<WARP> grp(G);
  const int64_t step = static_cast<int64_t>(grp.G) * V;
  for (int64_t base = grp.first(); base < rows; base += grp.stride()) {
    const int64_t r = base + grp.slot;
    const bool active = r < rows;
    const int64_t n = active ? C : 0;
    const T* row = x + (active ? r : 0) * rs;
    float m = -INFINITY, s = 0.f;
    for (int64_t k0 = static_cast<int64_t>(grp.lane) * V; k0 < n; k0 += step * U) {
      float z[U][V] = {};
      load_tile<T, V, U>(row, cs, k0, step, n, z);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (k0 + u * step >= n) break;
#pragma unroll
        for (int v = 0; v < V; ++v) online_add(z[u][v] * inv_T, m, s);
      }
    }
    const float M = group_max<WARP>(m, scratch, grp.G);
    s = group_sum<WARP>(s * exp_diff(m, M), scratch, grp.G);
    const float inv_s = 1.f / s;
    T* o = out + (active ? r : 0) * C;
    for (int64_t k0 = static_cast<int64_t>(grp.lane) * V; k0 < n; k0 += step * U) {
      float z[U][V] = {};
      load_tile<T, V, U>(row, cs, k0, step, n, z);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (k0 + u * step >= n) break;
#pragma unroll
        for (int v = 0; v < V; ++v) z[u][v] = exp_diff(z[u][v] * inv_T, M) * inv_s;
        store_vec<T, V>(o + k0 + u * step, z[u]);
      }
    }
  }
}

template <typename T, int V, int U>
__device__ __forceinline__ void load_pair(const T* gr, int64_t g_cs, const T* yr, int64_t y_cs, int64_t k0,
                                          int64_t step, int64_t n, float (&g)[U][V], float (&y)[U][V]) {
  // g and y of one access side by side: two load_tile calls gave the fp16/bf16 V=8 variant a stack frame
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int64_t k = k0 + u * step;
    if (k < n) {
      if constexpr (V == 1) {
        g[u][0] = to_f(gr[k * g_cs]);
        y[u][0] = to_f(yr[k * y_cs]);
      } else {
        load_vec<T, V>(gr + k, g[u]);
        load_vec<T, V>(yr + k, y[u]);
      }
    }
  }
}

template <typename T, bool WARP, int V>
__global__ void __launch_bounds__(kSharpenThreads)
    sharpen_bwd_kernel(const T* __restrict__ g, int64_t g_rs, int64_t g_cs, const T* __restrict__ y, int64_t y_rs,
                       int64_t y_cs, int64_t rows, int64_t C, float inv_T, T* __restrict__ out, int G) {
  __shared__ float scratch[32];
  constexpr int U = kSharpenUnroll<V>;
  const RowSlots<WARP> grp(G);
  const int64_t step = static_cast<int64_t>(grp.G) * V;
  for (int64_t base = grp.first(); base < rows; base += grp.stride()) {
    const int64_t r = base + grp.slot;
    const bool active = r < rows;
    const int64_t n = active ? C : 0;
    const T* gr = g + (active ? r : 0) * g_rs;
    const T* yr = y + (active ? r : 0) * y_rs;
    float dot = 0.f;
    for (int64_t k0 = static_cast<int64_t>(grp.lane) * V; k0 < n; k0 += step * U) {
      float gv[U][V] = {}, yv[U][V] = {};
      load_pair<T, V, U>(gr, g_cs, yr, y_cs, k0, step, n, gv, yv);
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int v = 0; v < V; ++v) dot += gv[u][v] * yv[u][v];  // zeros past the row's end
    }
    dot = group_sum<WARP>(dot, scratch, grp.G);
    T* o = out + (active ? r : 0) * C;
    for (int64_t k0 = static_cast<int64_t>(grp.lane) * V; k0 < n; k0 += step * U) {
      float gv[U][V] = {}, yv[U][V] = {};
      load_pair<T, V, U>(gr, g_cs, yr, y_cs, k0, step, n, gv, yv);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (k0 + u * step < n) {
          float ov[V];
#pragma unroll
          for (int v = 0; v < V; ++v) ov[v] = yv[u][v] * (gv[u][v] - dot) * inv_T;
          store_vec<T, V>(o + k0 + u * step, ov);
        }
      }
    }
  }
}

// Grid and lanes for rows of C values read V at a time: groups of lanes up to
// kWarpRowMaxC values, a block per row beyond.
struct RowLaunch {
  bool warp;
  int G;
  unsigned grid;
};

RowLaunch row_launch(int64_t rows, int64_t C, int V) {
  if (C > kWarpRowMaxC) return RowLaunch{false, 0, grid_for(rows, 1)};
  const int G = lanes_for(C, V);
  return RowLaunch{true, G, grid_for(rows, kSharpenThreads / G)};
}

template <typename T, int V>
int launch_fwd_v(cudaStream_t s, const T* x, int64_t rows, int64_t C, int64_t rs, int64_t cs, float inv_T, T* out) {
  const RowLaunch l = row_launch(rows, C, V);
  if (l.warp)
    launch(sharpen_fwd_kernel<T, true, V>, l.grid, kSharpenThreads, 0, s, x, rows, C, rs, cs, inv_T, out, l.G);
  else
    launch(sharpen_fwd_kernel<T, false, V>, l.grid, kSharpenThreads, 0, s, x, rows, C, rs, cs, inv_T, out, 0);
  return launch_status();
}

template <typename T>
int launch_fwd(cudaStream_t s, const void* x, int64_t rows, int64_t C, int64_t rs, int64_t cs, float inv_T,
               void* out) {
  constexpr int V = 16 / sizeof(T);
  const T* xp = static_cast<const T*>(x);
  T* op = static_cast<T*>(out);
  if (rows_vectorizable(x, rows, C, rs, cs, sizeof(T), V) && aligned16(out))
    return launch_fwd_v<T, V>(s, xp, rows, C, rs, cs, inv_T, op);
  return launch_fwd_v<T, 1>(s, xp, rows, C, rs, cs, inv_T, op);
}

template <typename T, int V>
int launch_bwd_v(cudaStream_t s, const T* g, int64_t g_rs, int64_t g_cs, const T* y, int64_t y_rs, int64_t y_cs,
                 int64_t rows, int64_t C, float inv_T, T* out) {
  const RowLaunch l = row_launch(rows, C, V);
  if (l.warp)
    launch(sharpen_bwd_kernel<T, true, V>, l.grid, kSharpenThreads, 0, s, g, g_rs, g_cs, y, y_rs, y_cs, rows, C,
           inv_T, out, l.G);
  else
    launch(sharpen_bwd_kernel<T, false, V>, l.grid, kSharpenThreads, 0, s, g, g_rs, g_cs, y, y_rs, y_cs, rows, C,
           inv_T, out, 0);
  return launch_status();
}

template <typename T>
int launch_bwd(cudaStream_t s, const void* g, int64_t g_rs, int64_t g_cs, const void* y, int64_t y_rs,
               int64_t y_cs, int64_t rows, int64_t C, float inv_T, void* out) {
  constexpr int V = 16 / sizeof(T);
  const T* gp = static_cast<const T*>(g);
  const T* yp = static_cast<const T*>(y);
  T* op = static_cast<T*>(out);
  if (rows_vectorizable(g, rows, C, g_rs, g_cs, sizeof(T), V) && rows_vectorizable(y, rows, C, y_rs, y_cs, sizeof(T), V) &&
      aligned16(out))
    return launch_bwd_v<T, V>(s, gp, g_rs, g_cs, yp, y_rs, y_cs, rows, C, inv_T, op);
  return launch_bwd_v<T, 1>(s, gp, g_rs, g_cs, yp, y_rs, y_cs, rows, C, inv_T, op);
}

}  // namespace
}  // namespace fastmix

using namespace fastmix;

extern "C" FASTMIX_API int fastmix_sharpen_forward(int device, void* stream, int dtype, const void* x, int64_t rows,
                                                   int64_t C, int64_t rs, int64_t cs, float inv_T, void* out) {
  if (rows < 1 || C < 1 || !x || !out) return FASTMIX_BAD_ARGUMENT;
  DeviceGuard guard(device);
  if (guard.err != cudaSuccess) return guard.err;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case F32: return launch_fwd<float>(s, x, rows, C, rs, cs, inv_T, out);
    case F16: return launch_fwd<__half>(s, x, rows, C, rs, cs, inv_T, out);
    case BF16: return launch_fwd<__nv_bfloat16>(s, x, rows, C, rs, cs, inv_T, out);
    default: return FASTMIX_BAD_ARGUMENT;
  }
}

extern "C" FASTMIX_API int fastmix_sharpen_backward(int device, void* stream, int dtype, const void* g, int64_t g_rs,
                                                    int64_t g_cs, const void* y, int64_t y_rs, int64_t y_cs,
                                                    int64_t rows, int64_t C, float inv_T, void* out) {
  if (rows < 1 || C < 1 || !g || !y || !out) return FASTMIX_BAD_ARGUMENT;
  DeviceGuard guard(device);
  if (guard.err != cudaSuccess) return guard.err;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case F32: return launch_bwd<float>(s, g, g_rs, g_cs, y, y_rs, y_cs, rows, C, inv_T, out);
    case F16: return launch_bwd<__half>(s, g, g_rs, g_cs, y, y_rs, y_cs, rows, C, inv_T, out);
    case BF16: return launch_bwd<__nv_bfloat16>(s, g, g_rs, g_cs, y, y_rs, y_cs, rows, C, inv_T, out);
    default: return FASTMIX_BAD_ARGUMENT;
  }
}
