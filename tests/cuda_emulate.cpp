// The CUDA runtime calls csrc/ makes, emulated on the host (see cuda_emulate.h).
#include "cuda_emulate.h"

#include <cstring>

extern "C" {
cudaError_t cudaGetDevice(int* device) { *device = 0; return cudaSuccess; }
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
cudaError_t cudaGetLastError(void) {
  const cudaError_t e = fastmix_emu::last_error;
  fastmix_emu::last_error = cudaSuccess;
  return e;
}
const char* cudaGetErrorString(cudaError_t e) {
  if (e == cudaSuccess) return "no error (emulated)";
  if (e == cudaErrorMisalignedAddress) return "emulated CUDA error (misaligned address)";
  if (e == cudaErrorLaunchFailure) return "emulated CUDA error (threads waiting at a barrier others never reach)";
  return "emulated CUDA error (invalid launch configuration)";
}
cudaError_t cudaDriverGetVersion(int* v) { *v = CUDART_VERSION; return cudaSuccess; }
cudaError_t cudaGetSymbolAddress(void** p, const void* symbol) { *p = const_cast<void*>(symbol); return cudaSuccess; }
cudaError_t cudaMemcpyFromSymbolAsync(void* dst, const void* symbol, size_t n, size_t off, cudaMemcpyKind,
                                      cudaStream_t) {
  std::memcpy(dst, static_cast<const char*>(symbol) + off, n);
  return cudaSuccess;
}
cudaError_t cudaMemcpyToSymbolAsync(const void* symbol, const void* src, size_t n, size_t off, cudaMemcpyKind,
                                    cudaStream_t) {
  std::memcpy(const_cast<char*>(static_cast<const char*>(symbol)) + off, src, n);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
// Two SMs: persistent grids are small, so that their blocks loop over many rows in the tests.
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  if (attr != cudaDevAttrMultiProcessorCount) return cudaErrorInvalidValue;
  *value = 2;
  return cudaSuccess;
}
// Three blocks of any kernel an SM: fewer than the loss's cap of 4, as at 80 registers on a GPU.
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, const void*, int, size_t) {
  *n = 3;
  return cudaSuccess;
}
// Kernel launches and vector accesses since the last call (tests only).
__attribute__((visibility("default"))) void fastmix_emu_counters(uint64_t* launches, uint64_t* vector_accesses) {
  *launches = fastmix_emu::launches.exchange(0);
  *vector_accesses = fastmix_emu::vector_accesses.exchange(0);
}
// The hinted accesses (fastmix_emu::Access, 7 numbers each) since tracing began: on != 0
// clears the trace and starts it; on == 0 stops it. fastmix_emu_trace_copy(nullptr) gives
// the count; with a buffer of 7 * count uint64s it fills it.
__attribute__((visibility("default"))) void fastmix_emu_trace(int on) {
  const std::lock_guard<std::mutex> lock(fastmix_emu::trace_mutex);
  if (on) fastmix_emu::trace.clear();
  fastmix_emu::launch_serial = 0;
  fastmix_emu::tracing = on != 0;
}
__attribute__((visibility("default"))) uint64_t fastmix_emu_trace_copy(uint64_t* out) {
  const std::lock_guard<std::mutex> lock(fastmix_emu::trace_mutex);
  if (out) std::memcpy(out, fastmix_emu::trace.data(), fastmix_emu::trace.size() * sizeof(fastmix_emu::Access));
  return fastmix_emu::trace.size();
}
}
