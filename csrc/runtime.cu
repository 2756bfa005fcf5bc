// Library-level entry points: versions, error strings and the index-error flag.
#include "common.cuh"

namespace fastmix {
// One per device (each device loads its own copy of this module), zero at load.
__device__ int g_index_error_flag = 0;
}  // namespace fastmix

using namespace fastmix;

extern "C" FASTMIX_API int fastmix_cuda_abi_version(void) { return FASTMIX_ABI_VERSION; }

extern "C" FASTMIX_API int fastmix_cuda_runtime_version(void) { return CUDART_VERSION; }

extern "C" FASTMIX_API int fastmix_cuda_driver_version(int* version) {
  if (!version) return FASTMIX_BAD_ARGUMENT;
  *version = 0;
  return static_cast<int>(cudaDriverGetVersion(version));
}

extern "C" FASTMIX_API const char* fastmix_cuda_error_string(int code) {
  if (code == FASTMIX_BAD_ARGUMENT) return "invalid argument to a fastmix launcher (a bug in fastmix's Python side)";
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}

extern "C" FASTMIX_API int fastmix_cuda_flag_address(int device, void** address) {
  if (!address) return FASTMIX_BAD_ARGUMENT;
  DeviceGuard guard(device);
  if (guard.err != cudaSuccess) return guard.err;
  return static_cast<int>(cudaGetSymbolAddress(address, g_index_error_flag));
}

extern "C" FASTMIX_API int fastmix_cuda_read_flag(int device, void* stream, int* value, int reset) {
  if (!value) return FASTMIX_BAD_ARGUMENT;
  DeviceGuard guard(device);
  if (guard.err != cudaSuccess) return guard.err;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  int host = 0;
  cudaError_t err = cudaMemcpyFromSymbolAsync(&host, g_index_error_flag, sizeof(int), 0, cudaMemcpyDeviceToHost, s);
  if (err == cudaSuccess) err = cudaStreamSynchronize(s);
  if (err == cudaSuccess && reset && host != 0) {
    const int zero = 0;
    err = cudaMemcpyToSymbolAsync(g_index_error_flag, &zero, sizeof(int), 0, cudaMemcpyHostToDevice, s);
    if (err == cudaSuccess) err = cudaStreamSynchronize(s);  // `zero` lives on this stack
  }
  *value = host;
  return static_cast<int>(err);
}
