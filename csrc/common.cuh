// Shared device helpers for fastmix's CUDA kernels.
// All arithmetic is float32; T is the storage dtype of logits/images.
#pragma once

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>
#include <string.h>

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

// ---- L2 eviction hints ---------------------------------------------------------------
// What a later launch reads again is loaded with evict_last; a last read and a gradient
// store with evict_first (PTX createpolicy + .L2::cache_hint, sm_80 and newer). Every
// hinted access goes through load_hinted / store_hinted: plain accesses where the hints
// do not exist (older archs, nvcc's host pass), and in the host emulation, which records
// them (address, size, policy) for the traffic test.
enum Evict : int { kEvictNormal = 0, kEvictLast = 1, kEvictFirst = 2 };

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define FASTMIX_L2_HINTS 1
template <int E>
__device__ __forceinline__ uint64_t l2_policy() {
  uint64_t p;
  if constexpr (E == kEvictLast) asm("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(p));
  else asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(p));
  return p;
}
__device__ __forceinline__ void ld_hint(const uint4* p, uint64_t pol, uint4& w) {
  asm("ld.global.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
      : "=r"(w.x), "=r"(w.y), "=r"(w.z), "=r"(w.w) : "l"(p), "l"(pol));
}
__device__ __forceinline__ void ld_hint(const unsigned long long* p, uint64_t pol, unsigned long long& w) {
  asm("ld.global.L2::cache_hint.u64 %0, [%1], %2;" : "=l"(w) : "l"(p), "l"(pol));
}
__device__ __forceinline__ void ld_hint(const unsigned* p, uint64_t pol, unsigned& w) {
  asm("ld.global.L2::cache_hint.u32 %0, [%1], %2;" : "=r"(w) : "l"(p), "l"(pol));
}
__device__ __forceinline__ void ld_hint(const unsigned short* p, uint64_t pol, unsigned short& w) {
  asm("ld.global.L2::cache_hint.u16 %0, [%1], %2;" : "=h"(w) : "l"(p), "l"(pol));
}
__device__ __forceinline__ void st_hint(uint4* p, uint64_t pol, const uint4& w) {
  asm volatile("st.global.L2::cache_hint.v4.u32 [%0], {%1, %2, %3, %4}, %5;"
               :: "l"(p), "r"(w.x), "r"(w.y), "r"(w.z), "r"(w.w), "l"(pol) : "memory");
}
__device__ __forceinline__ void st_hint(unsigned* p, uint64_t pol, const unsigned& w) {
  asm volatile("st.global.L2::cache_hint.u32 [%0], %1, %2;" :: "l"(p), "r"(w), "l"(pol) : "memory");
}
__device__ __forceinline__ void st_hint(unsigned short* p, uint64_t pol, const unsigned short& w) {
  asm volatile("st.global.L2::cache_hint.u16 [%0], %1, %2;" :: "l"(p), "h"(w), "l"(pol) : "memory");
}
#else
#define FASTMIX_L2_HINTS 0
#endif

// The unsigned word of N bytes that carries a hinted access.
template <int N> struct WordOf;
template <> struct WordOf<2> { using type = unsigned short; };
template <> struct WordOf<4> { using type = unsigned; };
template <> struct WordOf<8> { using type = unsigned long long; };
template <> struct WordOf<16> { using type = uint4; };

#ifdef FASTMIX_EMULATE
#define FASTMIX_RECORD(p, n, policy, store) fastmix_emu::record(p, n, policy, store)
#else
#define FASTMIX_RECORD(p, n, policy, store) ((void)0)
#endif

// *p under L2 policy E (X: 2, 4, 8 or 16 bytes, aligned to its size up to 16).
template <int E, typename X>
__device__ __forceinline__ X load_hinted(const X* p) {
  FASTMIX_RECORD(p, sizeof(X), E, false);
#if FASTMIX_L2_HINTS
  if constexpr (E != kEvictNormal) {
    using W = typename WordOf<sizeof(X)>::type;
    W w;
    ld_hint(reinterpret_cast<const W*>(p), l2_policy<E>(), w);
    X x;
    memcpy(&x, &w, sizeof(X));
    return x;
  }
#endif
  return *p;
}

template <int E, typename X>
__device__ __forceinline__ void store_hinted(X* p, const X& x) {
  FASTMIX_RECORD(p, sizeof(X), E, true);
#if FASTMIX_L2_HINTS
  if constexpr (E != kEvictNormal) {
    using W = typename WordOf<sizeof(X)>::type;
    W w;
    memcpy(&w, &x, sizeof(X));
    st_hint(reinterpret_cast<W*>(p), l2_policy<E>(), w);
    return;
  }
#endif
  *p = x;
}

// Small side inputs (targets, lam, mixing weights) may come in any float dtype;
// a uniform runtime branch is cheaper than multiplying the template instances.
template <int E = kEvictNormal>
__device__ __forceinline__ float load_any(const void* p, int dtype, int64_t i) {
  switch (dtype) {
    case F16: return __half2float(load_hinted<E>(static_cast<const __half*>(p) + i));
    case BF16: return __bfloat162float(load_hinted<E>(static_cast<const __nv_bfloat16*>(p) + i));
    case F64: return static_cast<float>(load_hinted<E>(static_cast<const double*>(p) + i));
    default: return load_hinted<E>(static_cast<const float*>(p) + i);
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

// 16-byte vector atomics (atomicAdd on float4): sm_90 and newer; the emulation can
// pretend to have them (FASTMIX_EMULATE_VECTOR_ATOMICS) to test that path on the host.
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900) || defined(FASTMIX_EMULATE_VECTOR_ATOMICS)
#define FASTMIX_VECTOR_ATOMICS 1
#else
#define FASTMIX_VECTOR_ATOMICS 0
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

// Sums and maxima over aligned groups of G lanes (G a power of two, at most 32) inside
// a warp: every lane of the warp must call them, whatever group it belongs to.
__device__ __forceinline__ float lanes_sum(float v, int G) {
  for (int o = G >> 1; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float lanes_max(float v, int G) {
  for (int o = G >> 1; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// WARP: a group of G <= 32 lanes owns a row; else the whole block does.
template <bool WARP>
__device__ __forceinline__ float group_sum(float v, float* scratch, int G = 32) {
  return WARP ? lanes_sum(v, G) : block_sum(v, scratch);
}

template <bool WARP>
__device__ __forceinline__ float group_max(float v, float* scratch, int G = 32) {
  return WARP ? lanes_max(v, G) : block_max(v, scratch);
}

// ---- vector accesses -------------------------------------------------------------------
// V consecutive elements in one access of V * sizeof(T) bytes (a 32-byte run: two of 16).
// Callers take the vector path only when every row start is 16-byte aligned and rows are
// contiguous; the emulation checks the alignment.

template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

#ifdef FASTMIX_EMULATE
#define FASTMIX_CHECK_ALIGNED(p, n) fastmix_emu::check_aligned(p, n)
#else
#define FASTMIX_CHECK_ALIGNED(p, n) ((void)0)
#endif

// Loads V elements from p[0..V) (V > 1: contiguous and aligned) as float32.
template <typename T, int V, int E = kEvictNormal>
__device__ __forceinline__ void load_vec(const T* p, float* out) {
  if constexpr (V == 1) {
    out[0] = to_f(load_hinted<E>(p));
  } else if constexpr (sizeof(T) * V > 16) {  // 16 bytes is the widest access
    load_vec<T, V / 2, E>(p, out);
    load_vec<T, V / 2, E>(p + V / 2, out + V / 2);
  } else {
    FASTMIX_CHECK_ALIGNED(p, alignof(Vec<T, V>));
    const Vec<T, V> w = load_hinted<E>(reinterpret_cast<const Vec<T, V>*>(p));
#pragma unroll
    for (int v = 0; v < V; ++v) out[v] = to_f(w.v[v]);
  }
}

template <typename T, int V, int E = kEvictNormal>
__device__ __forceinline__ void store_vec(T* p, const float* in) {
  if constexpr (V == 1) {
    store_hinted<E>(p, from_f<T>(in[0]));
  } else if constexpr (sizeof(T) * V > 16) {
    store_vec<T, V / 2, E>(p, in);
    store_vec<T, V / 2, E>(p + V / 2, in + V / 2);
  } else {
    FASTMIX_CHECK_ALIGNED(p, alignof(Vec<T, V>));
    Vec<T, V> w;
#pragma unroll
    for (int v = 0; v < V; ++v) w.v[v] = from_f<T>(in[v]);
    store_hinted<E>(reinterpret_cast<Vec<T, V>*>(p), w);
  }
}

// V consecutive side-input values of a runtime dtype from element i (V > 1: aligned).
template <int V, int E = kEvictNormal>
__device__ __forceinline__ void load_vec_any(const void* p, int dtype, int64_t i, float* out) {
  switch (dtype) {
    case F16: load_vec<__half, V, E>(static_cast<const __half*>(p) + i, out); break;
    case BF16: load_vec<__nv_bfloat16, V, E>(static_cast<const __nv_bfloat16*>(p) + i, out); break;
    case F64:
#pragma unroll
      for (int v = 0; v < V; ++v) out[v] = load_any<E>(p, F64, i + v);
      break;
    default: load_vec<float, V, E>(static_cast<const float*>(p) + i, out); break;
  }
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

inline int dtype_size(int dtype) { return dtype == F32 ? 4 : dtype == F64 || dtype == I64 ? 8 : 2; }

// Whether a (rows, C) operand with strides (rs, cs) in elements of `size` bytes can be
// read V elements at a time: contiguous rows whose starts are all 16-byte aligned.
inline bool rows_vectorizable(const void* p, int64_t rows, int64_t C, int64_t rs, int64_t cs, int size, int V) {
  if (C % V != 0 || !aligned16(p)) return false;
  if (cs != 1 && C > 1) return false;
  return rows <= 1 || (rs * size) % 16 == 0;
}

// The rows a thread's group works on: WARP: blockDim / G groups of G lanes; else one row
// per block. A block walks its rows together (base += gridDim * per_block, row base +
// slot), so that no lane leaves a shuffle early: a group past the last row is inactive
// but still reduces.
template <bool WARP>
struct RowSlots {
  int lane, G, per_block, slot;
  __device__ explicit RowSlots(int lanes) {
    G = WARP ? lanes : static_cast<int>(blockDim.x);
    lane = WARP ? threadIdx.x % G : threadIdx.x;  // no division by blockDim for a block per row
    per_block = WARP ? blockDim.x / G : 1;
    slot = WARP ? threadIdx.x / G : 0;
  }
  __device__ int64_t first() const { return static_cast<int64_t>(blockIdx.x) * per_block; }
  __device__ int64_t stride() const { return static_cast<int64_t>(gridDim.x) * per_block; }
};

// The smallest power-of-two group of lanes (4 to 32) that covers a row of C values
// in about two accesses per lane.
inline int lanes_for(int64_t C, int V) {
  int G = 4;
  while (G < 32 && static_cast<int64_t>(G) * 2 * V < C) G *= 2;
  return G;
}

// exp(a - b) that is 0 when a is -inf (an empty or all -inf partial), so that
// merging partial softmax sums never computes -inf - -inf.
__device__ __forceinline__ float exp_diff(float a, float b) {
  return a == -INFINITY ? 0.f : expf(a - b);
}

// Online softmax accumulation of one value into (m, s): exp(z - m) added to s, weighted
// by w (a partial sum of its own whose max is z).
__device__ __forceinline__ void online_add(float z, float& m, float& s, float w = 1.f) {
  if (z > m) {
    s = s * exp_diff(m, z) + w;
    m = z;
  } else {
    s += w * exp_diff(z, m);  // also takes NaN into s: NaN logits give NaN outputs
  }
}

// The block's merge of its threads' online softmax sums (m, s): every thread gets the
// block's max in m and its sum in s. Every thread of the block must call it.
__device__ __forceinline__ void block_merge(float& m, float& s, float* scratch) {
  const float M = block_max(m, scratch);
  s = block_sum(s * exp_diff(m, M), scratch);  // a NaN sum stays NaN (NaN * 0)
  m = M;
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
