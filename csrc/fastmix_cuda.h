// C interface of libfastmix_cuda: torch-free launchers over raw pointers.
//
// Every launcher takes the CUDA device index and a cudaStream_t (as void*), enqueues
// its kernels on that stream and returns 0 or an error code (a cudaError_t, or
// FASTMIX_BAD_ARGUMENT); fastmix_cuda_error_string() names it. No launcher
// synchronises with the host or allocates memory, so all of them can be captured in
// a CUDA graph. Outputs are contiguous unless said otherwise. Strides and sizes are
// in elements. dtype codes: 0 float32, 1 float16, 2 bfloat16, 3 float64, 4 int64.
#pragma once

#include <stdint.h>

#if defined(_WIN32)
#define FASTMIX_API __declspec(dllexport)
#else
#define FASTMIX_API __attribute__((visibility("default")))
#endif

#define FASTMIX_ABI_VERSION 2
#define FASTMIX_BAD_ARGUMENT (-1)

#ifdef __cplusplus
extern "C" {
#endif

FASTMIX_API int fastmix_cuda_abi_version(void);
// The CUDA runtime version the library was built against (e.g. 13000).
FASTMIX_API int fastmix_cuda_runtime_version(void);
// The driver's CUDA version, 0 when no driver is installed; creates no context.
FASTMIX_API int fastmix_cuda_driver_version(int* version);
FASTMIX_API const char* fastmix_cuda_error_string(int code);

// The device-side index-error flag of `device` (an int of bits: 1 label, 2 perm).
FASTMIX_API int fastmix_cuda_flag_address(int device, void** address);
// Copies the flag to *value after the work queued on `stream`, synchronising that
// stream; clears the flag when `reset` is nonzero.
FASTMIX_API int fastmix_cuda_read_flag(int device, void* stream, int* value, int reset);

// softmax(x * inv_T) over rows of C values; x has strides (rs, cs); out is (rows, C).
FASTMIX_API int fastmix_sharpen_forward(int device, void* stream, int dtype, const void* x, int64_t rows,
                                        int64_t C, int64_t rs, int64_t cs, float inv_T, void* out);
// out = y * (g - <g, y>) * inv_T per row; g and y have their own strides.
FASTMIX_API int fastmix_sharpen_backward(int device, void* stream, int dtype, const void* g, int64_t g_rs,
                                         int64_t g_cs, const void* y, int64_t y_rs, int64_t y_cs,
                                         int64_t rows, int64_t C, float inv_T, void* out);

// Mixup over B rows of `inner` elements stored densely (contiguous or channels_last:
// in both the batch is the outermost dimension). weight kinds: 0 one value, 1 one per
// row (element i * w_stride), 2 a mask of B * HW values, contiguous (B, H, W). For a
// mask, Cc is the channel count and channels_last says how a row is laid out.
// perm (nullable, contiguous) indexes the `pool` rows of xr.
FASTMIX_API int fastmix_mixup_forward(int device, void* stream, int dtype, const void* xf, const void* xr,
                                      void* out, int64_t B, int64_t inner, const int64_t* perm, int64_t pool,
                                      const void* w, int w_dtype, int w_kind, int64_t w_stride,
                                      int channels_last, int64_t Cc, int64_t HW, int* flag);
// Gradients of mixup. Each output pointer may be null (not wanted).
// grad_f: like xf. grad_r: without perm like xf; with perm a zero-filled float32
// (pool, inner) accumulator that receives atomic adds. grad_w: for weight kinds 0 and
// 1 a zero-filled float64 (B,) accumulator of per-row sums; for a mask, (B, HW)
// written in w_dtype.
FASTMIX_API int fastmix_mixup_backward(int device, void* stream, int dtype, const void* g, const void* xf,
                                       const void* xr, int64_t B, int64_t inner, const int64_t* perm,
                                       int64_t pool, const void* w, int w_dtype, int w_kind, int64_t w_stride,
                                       int channels_last, int64_t Cc, int64_t HW, void* grad_f, float* grad_r,
                                       void* grad_r_native, void* grad_w, int* flag);

// The contrastive functional C_tau with its logits gradient (SPEC 4), in one pass
// over the batch. mode 0 (mixed, L_gen/L_mix): rows0 rows of logits0; every row has a
// keep term weighted 1 - lam (target keep_t row perm[i], or i) and a forget term
// weighted lam (target forget_t row i). mode 1 (real, L_real): rows0 retain rows with a
// keep term (keep_t row i) and rows1 forget rows of logits1 with a forget term
// (forget_t row i). Targets: dtype 4 means int64 labels at element i * rs; else
// probabilities with strides (rs, cs). lam: element i * lam_stride (0 for one value).
// scale is 1 (sum) or 1 / rows0 (mean). loss: one float32. grad0 / grad1: contiguous
// in dtype, or null for no gradient. workspace: fastmix_loss_workspace_floats() floats
// (rows0 + rows1: all logits rows of the call), null when that is 0.
FASTMIX_API int64_t fastmix_loss_workspace_floats(int64_t rows0, int64_t rows1, int64_t C);
FASTMIX_API int fastmix_loss_forward(int device, void* stream, int dtype, int mode, const void* logits0,
                                     int64_t rows0, int64_t rs0, int64_t cs0, const void* logits1, int64_t rows1,
                                     int64_t rs1, int64_t cs1, int64_t C, const void* keep_t, int keep_dtype,
                                     int64_t keep_rs, int64_t keep_cs, const int64_t* perm, int64_t keep_pool,
                                     const void* forget_t, int forget_dtype, int64_t forget_rs, int64_t forget_cs,
                                     const void* lam, int lam_dtype, int64_t lam_stride, float tau, float scale,
                                     float* loss, void* grad0, void* grad1, float* workspace, int* flag);

// The unlearner's loss L_mix + omega * L_real (SPEC 4 and 6) with its three logits
// gradients, in one pass (one launch for small batches). L_mix: B mixed rows as mode 0
// above (keep target keep_t row perm[i] or i, forget target forget_t row i, weights
// 1 - lam and lam, temperature tau_mix, scale_mix 1 or 1 / B). L_real: Br retain rows
// (keep target keep_t row j) and Bf forget rows (forget target forget_t row i) as mode 1,
// at tau_real; scale_real is omega (sum) or omega / Br (mean). Br = 0 leaves L_real out
// (retain and forget may then be null, Bf must be 0). All logits share dtype and C.
// workspace: fastmix_loss_workspace_floats(B, Br + Bf, C) floats.
FASTMIX_API int fastmix_unlearn_loss_forward(int device, void* stream, int dtype, const void* mix, int64_t B,
                                             int64_t mix_rs, int64_t mix_cs, const void* retain, int64_t Br,
                                             int64_t retain_rs, int64_t retain_cs, const void* forget, int64_t Bf,
                                             int64_t forget_rs, int64_t forget_cs, int64_t C, const void* keep_t,
                                             int keep_dtype, int64_t keep_rs, int64_t keep_cs, const int64_t* perm,
                                             int64_t keep_pool, const void* forget_t, int forget_dtype,
                                             int64_t forget_t_rs, int64_t forget_t_cs, const void* lam,
                                             int lam_dtype, int64_t lam_stride, float tau_mix, float scale_mix,
                                             float tau_real, float scale_real, float* loss, void* grad_mix,
                                             void* grad_retain, void* grad_forget, float* workspace, int* flag);

#ifdef __cplusplus
}
#endif
