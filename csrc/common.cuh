// Shared device helpers for fastmix's CUDA kernels.
// All arithmetic is float32; T is the storage dtype of logits/images.
#pragma once

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

#include "fastmix_cuda.h"

namespace fastmix {

// Runtime dtype codes, shared with fastmix/_cuda_lib.py.
enum DType : int { F32 = 0, F16 = 1, BF16 = 2, F64 = 3, I64 = 4 };

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Small side inputs (targets, lam, mixing weights) may come in any float dtype;
// a uniform runtime branch is cheaper than multiplying the template instances.
__device__ __forceinline__ float load_any(const void* p, int dtype, int64_t i) {
  switch (dtype) {
    case F16: return __half2float(static_cast<const __half*>(p)[i]);
    case BF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    case F64: return static_cast<float>(static_cast<const double*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

__device__ __forceinline__ void store_any(void* p, int dtype, int64_t i, float v) {
  switch (dtype) {
    case F16: static_cast<__half*>(p)[i] = __float2half_rn(v); break;
    case BF16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); break;
    case F64: static_cast<double*>(p)[i] = static_cast<double>(v); break;
    default: static_cast<float*>(p)[i] = v; break;
  }
}

#ifdef FASTMIX_EMULATE
#define FASTMIX_DYNAMIC_SHARED(type, name) type* name = fastmix_emu::dynamic_shared<type>()
#else
#define FASTMIX_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

// Index-error bits recorded in the device flag (see csrc/README.md).
constexpr int kBadLabel = 1;
constexpr int kBadPerm = 2;

__device__ __forceinline__ void flag_error(int* flag, int bit) {
  if (flag != nullptr) atomicOr(flag, bit);
}

// ---- reductions over a group of G threads that together own one row ----------------
// G == 32: one warp per row (several rows per block). G == blockDim.x: one row per block.

template <typename V>
__device__ __forceinline__ V warp_sum(V v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide reductions; `scratch` holds at least 32 values. Every thread of the
// block must call them (they synchronise), and every thread gets the result.
template <typename V>
__device__ __forceinline__ V block_sum(V v, V* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  V r = 0;
  for (int w = 0; w < nwarps; ++w) r += scratch[w];
  return r;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = -INFINITY;
  for (int w = 0; w < nwarps; ++w) r = fmaxf(r, scratch[w]);
  return r;
}

template <bool WARP>
__device__ __forceinline__ float group_sum(float v, float* scratch) {
  return WARP ? warp_sum(v) : block_sum(v, scratch);
}

template <bool WARP>
__device__ __forceinline__ float group_max(float v, float* scratch) {
  return WARP ? warp_max(v) : block_max(v, scratch);
}

// exp(a - b) that is 0 when a is -inf (an empty or all -inf partial), so that
// merging partial softmax sums never computes -inf - -inf.
__device__ __forceinline__ float exp_diff(float a, float b) {
  return a == -INFINITY ? 0.f : expf(a - b);
}

// Online softmax accumulation of one value into (m, s).
__device__ __forceinline__ void online_add(float z, float& m, float& s) {
  if (z > m) {
    s = s * exp_diff(m, z) + 1.f;
    m = z;
  } else {
    s += exp_diff(z, m);  // also takes NaN into s: NaN logits give NaN outputs
  }
}

// Threads per group and rows per block for the row kernels.
constexpr int kWarpRowThreads = 128;  // 4 warps, one row each
constexpr int kBlockRowThreads = 256;  // one row per block for long rows
constexpr int kWarpRowMaxC = 1024;     // longer rows use a whole block

inline unsigned grid_for(int64_t n, int64_t per_block) {
  int64_t g = (n + per_block - 1) / per_block;
  const int64_t cap = 1 << 20;  // kernels loop over the rest
  if (g > cap) g = cap;
  if (g < 1) g = 1;
  return static_cast<unsigned>(g);
}

// Makes `device` current for the launch and restores the caller's device, so that
// fastmix never changes torch's notion of the current device.
struct DeviceGuard {
  int previous = -1;
  cudaError_t err = cudaSuccess;
  explicit DeviceGuard(int device) {
    err = cudaGetDevice(&previous);
    if (err == cudaSuccess && previous != device) err = cudaSetDevice(device);
  }
  ~DeviceGuard() {
    int now = -1;
    if (previous >= 0 && cudaGetDevice(&now) == cudaSuccess && now != previous) cudaSetDevice(previous);
  }
};

// The status of the launch that just happened, without synchronising.
inline int launch_status() { return static_cast<int>(cudaGetLastError()); }

// Every launch goes through here, so that tests/cuda_emulate.h can run the kernels on
// the host (FASTMIX_EMULATE), one thread per CUDA thread, where no GPU is present.
template <typename... KArgs, typename... Args>
inline void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                   Args... args) {
#ifdef FASTMIX_EMULATE
  (void)stream;
  fastmix_emu::launch(kernel, grid, block, smem, static_cast<KArgs>(args)...);
#else
  kernel<<<grid, block, smem, stream>>>(static_cast<KArgs>(args)...);
#endif
}

}  // namespace fastmix
