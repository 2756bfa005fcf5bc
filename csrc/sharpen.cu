// Sharpen(softmax(z), T) = softmax(z / T) per row (SPEC 3), and its backward
// dz = y * (g - <g, y>) / T. Rows up to 1024 values take one warp each; longer
// rows one block each, looping over the row (no row is held in registers, so any
// C fits). Inputs may have any strides; outputs are contiguous.
#include "common.cuh"

namespace fastmix {
namespace {

template <bool WARP>
struct RowGroup {
  int lane, G, per_block;
  int64_t first, stride;
  __device__ RowGroup() {
    lane = WARP ? (threadIdx.x & 31) : threadIdx.x;
    G = WARP ? 32 : blockDim.x;
    per_block = WARP ? (blockDim.x >> 5) : 1;
    first = static_cast<int64_t>(blockIdx.x) * per_block + (WARP ? (threadIdx.x >> 5) : 0);
    stride = static_cast<int64_t>(gridDim.x) * per_block;
  }
};

template <typename T, bool WARP>
__global__ void sharpen_fwd_kernel(const T* __restrict__ x, int64_t rows, int64_t C, int64_t rs, int64_t cs,
                                   float inv_T, T* __restrict__ out) {
  __shared__ float scratch[32];
  const RowGroup<WARP> grp;
  for (int64_t r = grp.first; r < rows; r += grp.stride) {
    const T* row = x + r * rs;
    float m = -INFINITY, s = 0.f;
    for (int64_t k = grp.lane; k < C; k += grp.G) online_add(to_f(row[k * cs]) * inv_T, m, s);
    const float M = group_max<WARP>(m, scratch);
    s = group_sum<WARP>(s * exp_diff(m, M), scratch);
    const float inv_s = 1.f / s;
    T* o = out + r * C;
    for (int64_t k = grp.lane; k < C; k += grp.G) o[k] = from_f<T>(exp_diff(to_f(row[k * cs]) * inv_T, M) * inv_s);
  }
}

template <typename T, bool WARP>
__global__ void sharpen_bwd_kernel(const T* __restrict__ g, int64_t g_rs, int64_t g_cs, const T* __restrict__ y,
                                   int64_t y_rs, int64_t y_cs, int64_t rows, int64_t C, float inv_T,
                                   T* __restrict__ out) {
  __shared__ float scratch[32];
  const RowGroup<WARP> grp;
  for (int64_t r = grp.first; r < rows; r += grp.stride) {
    const T* gr = g + r * g_rs;
    const T* yr = y + r * y_rs;
    float dot = 0.f;
    for (int64_t k = grp.lane; k < C; k += grp.G) dot += to_f(gr[k * g_cs]) * to_f(yr[k * y_cs]);
    dot = group_sum<WARP>(dot, scratch);
    T* o = out + r * C;
    for (int64_t k = grp.lane; k < C; k += grp.G) {
      const float yk = to_f(yr[k * y_cs]);
      o[k] = from_f<T>(yk * (to_f(gr[k * g_cs]) - dot) * inv_T);
    }
  }
}

template <typename T>
int launch_fwd(cudaStream_t s, const void* x, int64_t rows, int64_t C, int64_t rs, int64_t cs, float inv_T,
               void* out) {
  const T* xp = static_cast<const T*>(x);
  T* op = static_cast<T*>(out);
  if (C <= kWarpRowMaxC)
    launch(sharpen_fwd_kernel<T, true>, grid_for(rows, kWarpRowThreads / 32), kWarpRowThreads, 0, s, xp, rows, C, rs,
           cs, inv_T, op);
  else
    launch(sharpen_fwd_kernel<T, false>, grid_for(rows, 1), kBlockRowThreads, 0, s, xp, rows, C, rs, cs, inv_T, op);
  return launch_status();
}

template <typename T>
int launch_bwd(cudaStream_t s, const void* g, int64_t g_rs, int64_t g_cs, const void* y, int64_t y_rs,
               int64_t y_cs, int64_t rows, int64_t C, float inv_T, void* out) {
  const T* gp = static_cast<const T*>(g);
  const T* yp = static_cast<const T*>(y);
  T* op = static_cast<T*>(out);
  if (C <= kWarpRowMaxC)
    launch(sharpen_bwd_kernel<T, true>, grid_for(rows, kWarpRowThreads / 32), kWarpRowThreads, 0, s, gp, g_rs, g_cs,
           yp, y_rs, y_cs, rows, C, inv_T, op);
  else
    launch(sharpen_bwd_kernel<T, false>, grid_for(rows, 1), kBlockRowThreads, 0, s, gp, g_rs, g_cs, yp, y_rs, y_cs,
           rows, C, inv_T, op);
  return launch_status();
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
