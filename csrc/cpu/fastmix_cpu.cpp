// fastmix's CPU kernels: the ops of SPEC sections 2 to 4 fused into one or two passes
// over the rows, float32 data; sums in float32 over chunks of a row, added in float64 (short
// sharpen rows entirely in float32), the mixup weight's gradient in float64; OpenMP across
// rows when there is enough work. A plain C ABI loaded with ctypes (fastmix/backends/cpu_backend.py), no
// torch headers: the library builds in seconds with any C++17 compiler.
//
// Every pointer is to contiguous float32 / int64 data; the Python side makes it so.
// Built with -ffp-contract=off: mixup rounds as the PyTorch reference does.
#include <cmath>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

constexpr double kEps = 1e-8;  // the clamp of d(p, q) = 1 - <p, q> / max(|p| |q|, eps)
constexpr int64_t kParallelElements = 1 << 15;  // below this a parallel region costs more than it saves
// Row sums run in float lanes over chunks of this many elements, the chunks add up in
// float64: float64 lanes would halve the vector width of the loop that reads the data.
constexpr int64_t kChunk = 256;

int threads_for(int64_t elements, int nthreads) { return elements >= kParallelElements ? nthreads : 1; }

// a * b + c with one rounding where the target has FMA (one instruction, and more accurate);
// the loss kernels' sums and exp use it, mixup keeps PyTorch's separate roundings
inline float madd(float a, float b, float c) {
#ifdef __FMA__
  return __builtin_fmaf(a, b, c);
#else
  return a * b + c;
#endif
}

// exp(x) for x <= 0 (a softmax's shifted logits) in plain float arithmetic that the compiler
// vectorises, unlike a call to expf: x = n ln2 + r, |r| <= ln2 / 2, exp(r) by a degree-6
// polynomial (relative error under 2 ulp), 2^n through the exponent bits. Below -87.3 the
// result is 0 (float's normal range ends there); NaN stays NaN (it runs through r and p).
inline float exp_nonpositive(float x) {
  const float xc = x < -87.33654f ? -87.33654f : x;
  // round to nearest by the 1.5 * 2^23 trick (|x log2 e| < 2^22): no libm call, vectorises
  const float n = madd(xc, 1.44269504088896341f, 12582912.0f) - 12582912.0f;
  float r = madd(n, -0.693359375f, xc);
  r = madd(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = madd(p, r, 1.3981999507e-3f);
  p = madd(p, r, 8.3334519073e-3f);
  p = madd(p, r, 4.1665795894e-2f);
  p = madd(p, r, 1.6666665459e-1f);
  p = madd(p, r, 5.0000001201e-1f);
  p = madd(p * r, r, r + 1.0f);
  int32_t bits = (int32_t(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const float e = p * scale;
  return x < -87.33654f ? 0.0f : e;
}

// Error codes: which argument holds a bad value (cpu_backend.py words the error). Every
// kernel checks the values that decide where it reads (labels, perm) before it reads.
enum Error {
  kOk = 0,
  kForgetLabel = 1,
  kRetainLabel = 2,
  kPerm = 3,
  kLam = 4,
  kForgetProb = 5,
  kRetainProb = 6,
  kWeight = 7,      // a mixup weight outside [0, 1] or NaN
  kBadLayout = -1,  // arguments no caller of this library passes
};

inline bool in_unit(float v) { return v >= 0.0f && v <= 1.0f; }  // false for NaN

inline bool perm_ok(const int64_t* perm, int64_t B, int64_t pool) {
  if (perm)
    for (int64_t b = 0; b < B; ++b)
      if (perm[b] < 0 || perm[b] >= pool) return false;
  return true;
}

// The calling thread's block [lo, hi) of [0, n): one block per thread of the team, all of
// [0, n) outside a parallel region.
inline std::pair<int64_t, int64_t> own_block(int64_t n) {
  int t = 0, T = 1;
#ifdef _OPENMP
  t = omp_get_thread_num();
  T = omp_get_num_threads();
#endif
  return {n * t / T, n * (t + 1) / T};
}

// Run body(lo, hi) over [0, n) split into one block per thread, or directly with one
// thread: a parallel region costs about a microsecond even with a team of one.
template <class Body>
void blocks(int64_t n, int nt, const Body& body) {
  if (nt <= 1 || n <= 1) {
    body(int64_t(0), n);
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    const auto [lo, hi] = own_block(n);
    body(lo, hi);
  }
}

// --- sharpen ---------------------------------------------------------------------------

// The row's maximum; NaN when the row holds NaN or +-inf (the whole row is NaN then, as softmax's).
template <class N>
inline float row_max(const float* __restrict z, N C) {
  float m = -INFINITY;
  int nan = 0;
#pragma omp simd reduction(max : m) reduction(| : nan)
  for (N j = 0; j < C; ++j) {
    m = z[j] > m ? z[j] : m;
    nan |= z[j] != z[j];
  }
  return nan || std::isinf(m) ? NAN : m;
}

// One row of softmax((z - max z) * inv_T): the differences to the row's maximum never
// overflow, z / T itself would for a tiny T. NaN in the row, or +-inf: the row is NaN.
// Float lanes throughout (float64 lanes halve the vector): exp and its sum in one loop,
// the sum in float over chunks of kChunk elements, the chunks added in float64.
inline void sharpen_row(const float* __restrict z, float* __restrict o, int64_t C, float inv_T) {
  const float m = row_max(z, C);
  double s = 0;
  for (int64_t c0 = 0; c0 < C; c0 += kChunk) {
    const int64_t c1 = std::min(C, c0 + kChunk);
    float fs = 0;
#pragma omp simd reduction(+ : fs)
    for (int64_t j = c0; j < c1; ++j) {
      const float e = exp_nonpositive((z[j] - m) * inv_T);
      o[j] = e;
      fs += e;
    }
    s += fs;
  }
  const float inv = float(1.0 / s);
#pragma omp simd
  for (int64_t j = 0; j < C; ++j) o[j] *= inv;
}

// A temperature so small that 1 / T is no finite float: the maximum gets everything (tied
// maxima share it, 1/n each).
inline void sharpen_row_argmax(const float* z, float* o, int64_t C) {
  const float m = row_max(z, C);
  int64_t n = 0;
  for (int64_t j = 0; j < C; ++j) n += z[j] == m;
  for (int64_t j = 0; j < C; ++j) o[j] = m != m ? NAN : (z[j] == m ? 1.0f / float(n) : 0.0f);
}

// The same for C <= W in registers: the row padded with -inf to W lanes (exp gives 0
// there), every loop of fixed length, so a short row costs no loop tails; the scaled
// differences and the sum in float (a float64 lane halves the vector: a third of the time
// at C = 10; the sum of at most W terms loses nothing measurable).
template <int W>
inline void sharpen_row_small(const float* __restrict z, float* __restrict o, int64_t C, float inv_T) {
  float x[W];
#pragma omp simd
  for (int j = 0; j < W; ++j) x[j] = j < C ? z[j] : -INFINITY;  // masked loads: nothing past the row is read
  const float m = row_max(x, W);
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int j = 0; j < W; ++j) {
    x[j] = exp_nonpositive((x[j] - m) * inv_T);
    s += x[j];
  }
  const float inv = 1.0f / s;
#pragma omp simd
  for (int64_t j = 0; j < C; ++j) o[j] = x[j] * inv;
}


// Rows of C <= kSmallC classes, kRowLanes rows at a time transposed (a lane per row): the
// maximum and the sum are lane-wise, no horizontal reduction per row, and no lane is
// padding. Half the time of sharpen_row_small at C = 10. The rows left over go one by one.
constexpr int kRowLanes = 8;
constexpr int64_t kSmallC = 16;

inline void sharpen_rows_small(const float* __restrict z, float* __restrict o, int64_t rows, int64_t C,
                               float inv_T) {
  int64_t r0 = 0;
  float x[kSmallC][kRowLanes];
  for (; r0 + kRowLanes <= rows; r0 += kRowLanes) {
    const float* zb = z + r0 * C;
    for (int64_t j = 0; j < C; ++j)
#pragma omp simd
      for (int l = 0; l < kRowLanes; ++l) x[j][l] = zb[l * C + j];
    float m[kRowLanes], s[kRowLanes];
    int nan[kRowLanes];
#pragma omp simd
    for (int l = 0; l < kRowLanes; ++l) {
      m[l] = -INFINITY;
      s[l] = 0;
      nan[l] = 0;
    }
    for (int64_t j = 0; j < C; ++j)
#pragma omp simd
      for (int l = 0; l < kRowLanes; ++l) {
        m[l] = x[j][l] > m[l] ? x[j][l] : m[l];
        nan[l] |= x[j][l] != x[j][l];
      }
#pragma omp simd
    for (int l = 0; l < kRowLanes; ++l) m[l] = nan[l] || std::isinf(m[l]) ? NAN : m[l];
    for (int64_t j = 0; j < C; ++j)
#pragma omp simd
      for (int l = 0; l < kRowLanes; ++l) {
        x[j][l] = exp_nonpositive((x[j][l] - m[l]) * inv_T);
        s[l] += x[j][l];
      }
#pragma omp simd
    for (int l = 0; l < kRowLanes; ++l) s[l] = 1.0f / s[l];
    float* ob = o + r0 * C;
    for (int64_t j = 0; j < C; ++j)
#pragma omp simd
      for (int l = 0; l < kRowLanes; ++l) ob[l * C + j] = x[j][l] * s[l];
  }
  for (int64_t r = r0; r < rows; ++r) {
    if (C <= 8)
      sharpen_row_small<8>(z + r * C, o + r * C, C, inv_T);
    else
      sharpen_row_small<16>(z + r * C, o + r * C, C, inv_T);
  }
}

// --- mixup -----------------------------------------------------------------------------

// Where the weight of element (b, p, q) of x viewed as (B, P, Q) in memory sits: one per
// sample (one lambda for the batch: the sample stride 0), a mask over q (contiguous images,
// q the pixel, p the channel), or a mask over p (channels_last images, q the channel).
enum WeightKind { kPerSample, kMaskOverQ, kMaskOverP };

// QC > 0: Q fixed at compile time (the channels of channels_last images under a mask over p):
// a loop of 3 iterations whose count is only known at run time cost 3x a fixed one.
template <int QC>
inline int64_t fixed(int64_t Q) {
  return QC > 0 ? QC : Q;
}

// One row of x: out = m * x_f + (1 - m) * x_r, rounded as PyTorch's (no fused multiply-add).
// CHECK: flag a weight outside [0, 1] on the way (the mask's first visit to each entry).
constexpr int64_t kPixels = 512;  // pixels of a mask over p expanded at a time (kPixels * QC floats)

// Pixels [p0, p0 + n) of a mask over p, each repeated over the QC channels into me; returns
// whether one lies outside [0, 1] (CHECK).
template <int QC, bool CHECK>
inline int expand_pixels(const float* __restrict w, int64_t p0, int64_t n, float* __restrict me) {
  int bad = 0;
  for (int64_t p = 0; p < n; ++p) {
    const float m = w[p0 + p];
    if (CHECK) bad |= !in_unit(m);
    for (int q = 0; q < QC; ++q) me[p * QC + q] = m;
  }
  return bad;
}

template <int KIND>
inline float weight_at(const float* wb, int64_t p, int64_t q) {
  return KIND == kPerSample ? wb[0] : (KIND == kMaskOverQ ? wb[q] : wb[p]);
}

template <int KIND, bool CHECK, int QC>
inline int mix_rows(const float* __restrict f, const float* __restrict r, const float* __restrict w,
                    float* __restrict o, int64_t P, int64_t Q_) {
  const int64_t Q = fixed<QC>(Q_);
  int bad = 0;
  if constexpr (KIND == kMaskOverP && QC > 0) {  // one flat loop over a chunk with the mask expanded
    float me[kPixels * QC];
    for (int64_t p0 = 0; p0 < P; p0 += kPixels) {
      const int64_t n = std::min(kPixels, P - p0), i0 = p0 * QC;
      bad |= expand_pixels<QC, CHECK>(w, p0, n, me);
#pragma omp simd
      for (int64_t i = 0; i < n * QC; ++i) o[i0 + i] = me[i] * f[i0 + i] + (1.0f - me[i]) * r[i0 + i];
    }
    return bad;
  }
  for (int64_t p = 0; p < P; ++p) {
    const float* fp = f + p * Q;
    const float* rp = r + p * Q;
    float* op = o + p * Q;
    if constexpr (KIND == kMaskOverQ) {
      if (CHECK && p == 0) {
#pragma omp simd reduction(| : bad)
        for (int64_t q = 0; q < Q; ++q) {
          const float m = w[q];
          bad |= !in_unit(m);
          op[q] = m * fp[q] + (1.0f - m) * rp[q];
        }
      } else {
#pragma omp simd
        for (int64_t q = 0; q < Q; ++q) op[q] = w[q] * fp[q] + (1.0f - w[q]) * rp[q];
      }
    } else {
      const float m = weight_at<KIND>(w, p, 0);
      if (CHECK && KIND == kMaskOverP) bad |= !in_unit(m);
#pragma omp simd
      for (int64_t q = 0; q < Q; ++q) op[q] = m * fp[q] + (1.0f - m) * rp[q];
    }
  }
  return bad;
}

}  // namespace

extern "C" {

int fastmix_cpu_version() { return 3; }  // cpu_backend.ABI_VERSION

// Every entry point takes one struct of its arguments (cpu_backend.py packs it with the
// struct module: ctypes converting each argument cost about 0.25 us, a visible part of a
// small call); all fields are 8 bytes wide, in the order cpu_backend's format lists them.

// sharpen forward: out = softmax(x / T) row by row (rows of C). Backward: out = y * (x - <x, y>) / T
// with x the gradient and y the forward's output.
struct FastmixSharpenCall {
  const float *x, *y;
  float* out;
  int64_t rows, C, nthreads;
  double T;
};

int fastmix_cpu_sharpen_forward(const FastmixSharpenCall* call) {
  const FastmixSharpenCall c = *call;
  const float inv_T = float(1.0 / c.T);  // inf for a T below about 3e-39
  const bool finite = std::isfinite(inv_T);
  const int64_t C = c.C;
  blocks(c.rows, threads_for(c.rows * C, int(c.nthreads)), [&](int64_t lo, int64_t hi) {
    if (finite && C <= kSmallC) {
      sharpen_rows_small(c.x + lo * C, c.out + lo * C, hi - lo, C, inv_T);
      return;
    }
    for (int64_t r = lo; r < hi; ++r) {
      const float* z = c.x + r * C;
      float* o = c.out + r * C;
      if (finite)
        sharpen_row(z, o, C, inv_T);
      else
        sharpen_row_argmax(z, o, C);
    }
  });
  return kOk;
}

int fastmix_cpu_sharpen_backward(const FastmixSharpenCall* call) {
  const FastmixSharpenCall c = *call;
  const int64_t C = c.C;
  blocks(c.rows, threads_for(c.rows * C, int(c.nthreads)), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const float* __restrict g = c.x + r * C;
      const float* __restrict y = c.y + r * C;
      float* __restrict o = c.out + r * C;
      double dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t j = 0; j < C; ++j) dot += double(g[j]) * y[j];
      const float d = float(dot);
#pragma omp simd
      for (int64_t j = 0; j < C; ++j) o[j] = float(double(y[j] * (g[j] - d)) / c.T);
    }
  });
  return kOk;
}

// mixup: x viewed as (B, P, Q) in memory, x_r a pool of `pool` such rows; the weight of
// element (b, p, q) is w[b*wsb + p*wsp + q*wsq] (wsp = wsq = 0: one per sample, wsb 0 for
// one lambda; a mask: (wsp, wsq) = (0, 1) or (1, 0)). Forward: out = m * x_f + (1 - m) *
// x_r[perm[b]]. Backward: the gradients to x_f (m g), x_r (summed over repeated perm
// rows, in order of b) and the weight (summed over what it broadcasts over, in float64);
// a null output is not wanted; the backward needs x to hold elements (cpu_backend leaves
// empty x to the reference; the forward takes it). Both check perm first (nothing is read out of bounds);
// the forward checks the weight too, in the pass that reads it.
struct FastmixMixupCall {
  const float *g, *xf, *xr, *w;
  const int64_t* perm;
  float *out, *gf, *gr, *gw;
  int64_t B, P, Q, pool, wsb, wsp, wsq, nthreads;
};

}  // extern "C"

namespace {

template <int KIND, int QC = 0>
int mixup_forward(const FastmixMixupCall& c) {
  const int64_t B = c.B, P = c.P, Q = fixed<QC>(c.Q), row = P * Q;
  if (!perm_ok(c.perm, B, c.pool)) return kPerm;
  if (KIND == kPerSample)  // B entries at most: checked before the pass
    for (int64_t b = 0; b < (c.wsb ? B : std::min<int64_t>(B, 1)); ++b)
      if (!in_unit(c.w[b * c.wsb])) return kWeight;
  if (KIND == kMaskOverQ && P == 0)  // no channel: the pass would not read the mask
    for (int64_t i = 0; i < B * Q; ++i)
      if (!in_unit(c.w[i])) return kWeight;
  int bad = 0;
  blocks(B, threads_for(B * row, int(c.nthreads)), [&](int64_t lo, int64_t hi) {
    int bad_t = 0;
    for (int64_t b = lo; b < hi; ++b) {
      const float* r = c.xr + (c.perm ? c.perm[b] : b) * row;
      bad_t |= mix_rows<KIND, KIND != kPerSample, QC>(c.xf + b * row, r, c.w + b * c.wsb, c.out + b * row, P, Q);
    }
    if (bad_t) {
#pragma omp atomic write
      bad = 1;
    }
  });
  return bad ? kWeight : kOk;
}

// the gradient to x_r: parallel over the elements of a row, serial over b, so that the
// rows of repeated perm entries add up in order of b
template <int KIND, int QC>
void mixup_grad_retain(const FastmixMixupCall& c, int nt) {
  const int64_t B = c.B, P = c.P, Q = fixed<QC>(c.Q), row = P * Q;
  if (row == 0) return;
  if (c.perm) std::fill(c.gr, c.gr + c.pool * row, 0.0f);
  blocks(row, nt, [&](int64_t lo, int64_t hi) {
    for (int64_t b = 0; b < B; ++b) {
      float* __restrict dst = c.gr + (c.perm ? c.perm[b] : b) * row;
      const float* __restrict g = c.g + b * row;
      const float* wb = c.w + b * c.wsb;
      for (int64_t p = lo / Q; p * Q < hi; ++p) {
        float* dp = dst + p * Q;
        const float* gp = g + p * Q;
        if (p * Q >= lo && (p + 1) * Q <= hi) {  // a whole row of Q: the loop of fixed length
          if (c.perm) {
#pragma omp simd
            for (int64_t q = 0; q < Q; ++q) dp[q] += (1.0f - weight_at<KIND>(wb, p, q)) * gp[q];
          } else {
#pragma omp simd
            for (int64_t q = 0; q < Q; ++q) dp[q] = (1.0f - weight_at<KIND>(wb, p, q)) * gp[q];
          }
          continue;
        }
        const int64_t q0 = std::max(lo - p * Q, int64_t(0)), q1 = std::min(hi - p * Q, Q);
        for (int64_t q = q0; q < q1; ++q) {
          const float v = (1.0f - weight_at<KIND>(wb, p, q)) * gp[q];
          dp[q] = c.perm ? dp[q] + v : v;
        }
      }
    }
  });
}

// the weight's gradient of sample b: sum of g * (x_f - x_r) over what the weight broadcasts
// over, in float64; acc holds Q doubles (a mask over q summed over p)
template <int KIND, int QC>
void mixup_grad_weight_row(const FastmixMixupCall& c, int64_t b, double* acc) {
  const int64_t P = c.P, Q = fixed<QC>(c.Q), row = P * Q;
  const float* __restrict g = c.g + b * row;
  const float* __restrict f = c.xf + b * row;
  const float* __restrict r = c.xr + (c.perm ? c.perm[b] : b) * row;
  float* __restrict gw = c.gw + b * c.wsb;
  if constexpr (KIND == kPerSample) {
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < row; ++i) s += double(g[i] * (f[i] - r[i]));
    if (c.wsb) gw[0] = float(s);
    else acc[0] += s;  // one lambda for the batch: summed over b by the caller
  } else if constexpr (KIND == kMaskOverQ) {
    if (P == 1) {  // one channel: nothing to sum
#pragma omp simd
      for (int64_t q = 0; q < Q; ++q) gw[q] = g[q] * (f[q] - r[q]);
      return;
    }
#pragma omp simd
    for (int64_t q = 0; q < Q; ++q) acc[q] = double(g[q] * (f[q] - r[q]));
    for (int64_t p = 1; p < P; ++p) {
      const int64_t o = p * Q;
#pragma omp simd
      for (int64_t q = 0; q < Q; ++q) acc[q] += double(g[o + q] * (f[o + q] - r[o + q]));
    }
#pragma omp simd
    for (int64_t q = 0; q < Q; ++q) gw[q] = float(acc[q]);
  } else if constexpr (QC > 0) {  // the products in one flat loop, then each pixel's QC of them
    float prod[kPixels * QC];
    for (int64_t p0 = 0; p0 < P; p0 += kPixels) {
      const int64_t n = std::min(kPixels, P - p0), i0 = p0 * QC;
#pragma omp simd
      for (int64_t i = 0; i < n * QC; ++i) prod[i] = g[i0 + i] * (f[i0 + i] - r[i0 + i]);
      for (int64_t p = 0; p < n; ++p) {
        double s = 0;
        for (int q = 0; q < QC; ++q) s += double(prod[p * QC + q]);
        gw[p0 + p] = float(s);
      }
    }
  } else {
    for (int64_t p = 0; p < P; ++p) {
      double s = 0;
      for (int64_t q = 0; q < Q; ++q) s += double(g[p * Q + q] * (f[p * Q + q] - r[p * Q + q]));
      gw[p] = float(s);
    }
  }
}

template <int KIND, int QC = 0>
int mixup_backward(const FastmixMixupCall& c) {
  const int64_t B = c.B, P = c.P, Q = fixed<QC>(c.Q), row = P * Q;
  if (!perm_ok(c.perm, B, c.pool)) return kPerm;
  const int nt = threads_for(B * row, int(c.nthreads));
  if (c.gf) {
    blocks(B, nt, [&](int64_t lo, int64_t hi) {
      for (int64_t b = lo; b < hi; ++b) {
        const float* wb = c.w + b * c.wsb;
        if constexpr (KIND == kMaskOverP && QC > 0) {
          float me[kPixels * QC];
          for (int64_t p0 = 0; p0 < P; p0 += kPixels) {
            const int64_t n = std::min(kPixels, P - p0), i0 = b * row + p0 * QC;
            expand_pixels<QC, false>(wb, p0, n, me);
#pragma omp simd
            for (int64_t i = 0; i < n * QC; ++i) c.gf[i0 + i] = me[i] * c.g[i0 + i];
          }
          continue;
        }
        for (int64_t p = 0; p < P; ++p) {
          const float* __restrict g = c.g + b * row + p * Q;
          float* __restrict o = c.gf + b * row + p * Q;
#pragma omp simd
          for (int64_t q = 0; q < Q; ++q) o[q] = weight_at<KIND>(wb, p, q) * g[q];
        }
      }
    });
  }
  if (c.gr) mixup_grad_retain<KIND, QC>(c, nt);
  if (c.gw) {
    const bool one_lambda = KIND == kPerSample && c.wsb == 0;
    std::vector<double> total(nt, 0.0);  // one lambda: each block's sum, added in block order
    blocks(B, nt, [&](int64_t lo, int64_t hi) {
      std::vector<double> acc(KIND == kMaskOverQ ? Q : 1);
      int t = 0;
#ifdef _OPENMP
      t = nt > 1 ? omp_get_thread_num() : 0;
#endif
      for (int64_t b = lo; b < hi; ++b) mixup_grad_weight_row<KIND, QC>(c, b, acc.data());
      if (one_lambda) total[t] = acc[0];
    });
    if (one_lambda) {
      double s = 0;
      for (double v : total) s += v;
      c.gw[0] = float(s);
    }
  }
  return kOk;
}

template <int N>
using Const = std::integral_constant<int, N>;

// run(kind, qc) with the weight kind of (wsp, wsq) and QC as compile-time constants
// (channels_last RGB under a mask over p: QC 3), or kBadLayout for another layout
template <class Run>
int with_weight_kind(const FastmixMixupCall& c, const Run& run) {
  if (c.wsp == 0 && c.wsq == 0) return run(Const<kPerSample>{}, Const<0>{});
  if (c.wsp == 0 && c.wsq == 1) return run(Const<kMaskOverQ>{}, Const<0>{});
  if (c.wsp == 1 && c.wsq == 0)
    return c.Q == 3 ? run(Const<kMaskOverP>{}, Const<3>{}) : run(Const<kMaskOverP>{}, Const<0>{});
  return kBadLayout;
}

}  // namespace

extern "C" {

int fastmix_cpu_mixup_forward(const FastmixMixupCall* call) {
  const FastmixMixupCall c = *call;
  return with_weight_kind(c, [&](auto kind, auto qc) { return mixup_forward<decltype(kind)::value, decltype(qc)::value>(c); });
}

int fastmix_cpu_mixup_backward(const FastmixMixupCall* call) {
  const FastmixMixupCall c = *call;
  return with_weight_kind(c, [&](auto kind, auto qc) { return mixup_backward<decltype(kind)::value, decltype(qc)::value>(c); });
}

}  // extern "C"

namespace {

// The cosine parts of SPEC 4 of one row against one target: c = <p, q> / max(|p| |q|, eps),
// dc/dp = A q - Bp p and <dc/dp, p> = Dp.
struct Cosine {
  double c, A, Bp, Dp;
};

inline Cosine cosine(double dot, double pp, double qn) {
  Cosine k;
  const double den = std::sqrt(pp) * qn;
  const bool clamped = den <= kEps;
  k.A = 1.0 / std::fmax(den, kEps);
  k.c = dot * k.A;
  k.Bp = clamped ? 0.0 : k.c / pp;
  k.Dp = clamped ? k.c : 0.0;
  return k;
}

// A row's softmax (p = exp(z - m) * inv_s), its cosine parts against up to two targets
// and the targets' norms.
struct RowStats {
  float m;
  float inv_s;
  Cosine k[2];
  double qn[2];
};

// One row's targets: probability rows q (PROBS) or labels y; NT of them (1 or 2).
struct Targets {
  const float* q[2];
  int64_t y[2];
};


// One read of the row: its maximum, then e = exp(z - m) with the sums of e, e^2, e q_t in
// one loop (KEEP_E: e kept in e_out). A target row that another row shares is checked and
// its norm summed once: by the rows whose bit is set in OWN; the others' norms come in qn.
// bad |= a probability that is NaN, negative or infinite.
template <int NT, bool PROBS, int OWN, bool KEEP_E = false>
RowStats row_stats(const float* __restrict z, int64_t C, const Targets& t, const double* qn, float* __restrict e_out,
                   int& bad) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < C; ++j) m = z[j] > m ? z[j] : m;  // NaN skipped, as fmax does
  if (std::isinf(m)) m = NAN;  // a row of -inf, or one with +inf, gives NaN, as softmax does
  const float* __restrict q0 = t.q[0];
  const float* __restrict q1 = t.q[1];
  double s = 0, ee = 0, dot[2] = {0, 0}, qq[2] = {1, 1};
  if (PROBS) qq[0] = qq[1] = 0;
  int b = 0;
  for (int64_t c0 = 0; c0 < C; c0 += kChunk) {
    const int64_t c1 = std::min(C, c0 + kChunk);
    float fs = 0, fee = 0, fd0 = 0, fd1 = 0, fq0 = 0, fq1 = 0, lo0 = 0, lo1 = 0;
#pragma omp simd reduction(+ : fs, fee, fd0, fd1, fq0, fq1) reduction(min : lo0, lo1)
    for (int64_t j = c0; j < c1; ++j) {
      const float e = exp_nonpositive(z[j] - m);
      if constexpr (KEEP_E) e_out[j] = e;
      fs += e;
      fee = madd(e, e, fee);
      if constexpr (PROBS) {
        fd0 = madd(e, q0[j], fd0);
        if constexpr ((OWN & 1) != 0) {
          fq0 = madd(q0[j], q0[j], fq0);
          lo0 = q0[j] < lo0 ? q0[j] : lo0;
        }
        if constexpr (NT == 2) {
          fd1 = madd(e, q1[j], fd1);
          if constexpr ((OWN & 2) != 0) {
            fq1 = madd(q1[j], q1[j], fq1);
            lo1 = q1[j] < lo1 ? q1[j] : lo1;
          }
        }
      }
    }
    s += fs;
    ee += fee;
    dot[0] += fd0;
    dot[1] += fd1;
    qq[0] += fq0;
    qq[1] += fq1;
    // a NaN or infinite probability makes its square sum NaN or infinite: two cheap tests
    // that flag every bad row (and rows of huge finite values, which the rescan clears)
    b |= lo0 < 0 || lo1 < 0 || !(std::fabs(fq0) <= 3.4e38f) || !(std::fabs(fq1) <= 3.4e38f);
  }
  bad |= b;
  if constexpr (!PROBS)
    for (int k = 0; k < NT; ++k) dot[k] = exp_nonpositive(z[t.y[k]] - m);
  RowStats st;
  const double inv = 1.0 / s;
  st.m = m;
  st.inv_s = float(inv);
  const double pp = ee * inv * inv;
  for (int k = 0; k < NT; ++k) {
    st.qn[k] = !PROBS || (OWN >> k & 1) ? std::sqrt(qq[k]) : qn[k];
    st.k[k] = cosine(dot[k] * inv, pp, st.qn[k]);
  }
  return st;
}

// g = d/dz of sum_t coef_t * c_t(p(z)) = p * (sum_t coef_t (A_t q_t - Bp_t p - Dp_t)), in place
// of e = exp(z - m), which row_stats left in g: p = e * inv_s without a second exp.
template <int NT, bool PROBS>
void row_grad(float* __restrict g, int64_t C, const RowStats& st, const Targets& t, const double coef[2]) {
  double a[2] = {0, 0}, bb = 0, dd = 0;
  for (int k = 0; k < NT; ++k) {
    a[k] = coef[k] * st.k[k].A;
    bb += coef[k] * st.k[k].Bp;
    dd += coef[k] * st.k[k].Dp;
  }
  const float fa0 = float(a[0]), fa1 = float(a[1]), fb = float(bb), fd = float(dd);
  const float inv_s = st.inv_s;
  const float* __restrict q0 = t.q[0];
  const float* __restrict q1 = t.q[1];
  float py[2] = {0, 0};  // a label's p, read before the loop overwrites it
  if constexpr (!PROBS)
    for (int k = 0; k < NT; ++k) py[k] = g[t.y[k]] * inv_s;
#pragma omp simd
  for (int64_t j = 0; j < C; ++j) {
    const float p = g[j] * inv_s;
    float v = madd(-fb, p, -fd);
    if constexpr (PROBS) v = NT == 2 ? madd(fa0, q0[j], madd(fa1, q1[j], v)) : madd(fa0, q0[j], v);
    g[j] = p * v;
  }
  if constexpr (!PROBS) {
    g[t.y[0]] += py[0] * fa0;
    if (NT == 2) g[t.y[1]] += py[1] * fa1;
  }
}

// log sum_i exp(x_i) and the softmax weights exp(x_i - lse) (as exp(x_i - max) / sum), in place
double logsumexp_weights(std::vector<double>& x) {
  double m = -INFINITY;
  for (double v : x) m = std::fmax(m, v);
  double s = 0;
  for (double& v : x) s += v = std::exp(v - m);
  for (double& v : x) v /= s;
  return m + std::log(s);
}

// The loss's arguments, bundled once for the passes over the rows.
struct LossArgs {
  const float *mix, *forget, *retain, *qf, *qr;
  const int64_t *yf, *yr, *perm;
  const float* lam;
  int64_t lam_stride, B, N, C;
  float *g_mix, *g_forget, *g_retain;
  Targets mix_targets(int64_t i) const {  // target 0: the retain row (keep term), 1: the forget row
    const int64_t k = perm ? perm[i] : i;
    return {{qr ? qr + k * C : nullptr, qf ? qf + i * C : nullptr}, {yr ? yr[k] : 0, yf ? yf[i] : 0}};
  }
  Targets forget_targets(int64_t i) const { return {{qf ? qf + i * C : nullptr, nullptr}, {yf ? yf[i] : 0, 0}}; }
  Targets retain_targets(int64_t j) const { return {{qr ? qr + j * C : nullptr, nullptr}, {yr ? yr[j] : 0, 0}}; }
};

// The loss's row work with the target kind fixed (PROBS: probability rows, else labels).
// A retain row: its terms and its gradient in one visit (the keep term's coefficient is a
// constant); it checks its target row and gives its norm to the mix rows that share it.
template <bool PROBS>
void retain_row(const LossArgs& a, int64_t j, double coef, double& c, double& qn, int& bad) {
  const Targets t = a.retain_targets(j);
  float* g = a.g_retain ? a.g_retain + j * a.C : nullptr;
  const float* z = a.retain + j * a.C;
  const double coefs[2] = {coef, 0};
  RowStats st;
  if (g) {
    st = row_stats<1, PROBS, 1, true>(z, a.C, t, nullptr, g, bad);
    row_grad<1, PROBS>(g, a.C, st, t, coefs);
  } else {
    st = row_stats<1, PROBS, 1>(z, a.C, t, nullptr, nullptr, bad);
  }
  c = st.k[0].c;
  qn = st.qn[0];
}

// Mix row i and forget row i: one visit to their shared forget target row. Without
// L_real the mix row checks its retain target row too (qn_r is null then).
template <bool PROBS, bool KEEP_E>
void mix_forget_stats(const LossArgs& a, int64_t i, const double* qn_r, RowStats& s_mix, RowStats* s_fgt, int& bad) {
  const Targets t = a.mix_targets(i);
  float* g_mix = KEEP_E ? a.g_mix + i * a.C : nullptr;
  if (qn_r) {
    const double qn[2] = {qn_r[a.perm ? a.perm[i] : i], 0};
    s_mix = row_stats<2, PROBS, 2, KEEP_E>(a.mix + i * a.C, a.C, t, qn, g_mix, bad);
  } else {
    s_mix = row_stats<2, PROBS, 3, KEEP_E>(a.mix + i * a.C, a.C, t, nullptr, g_mix, bad);
  }
  if (s_fgt) {
    const double qn[2] = {s_mix.qn[1], 0};
    s_fgt[i] = row_stats<1, PROBS, 0, KEEP_E>(a.forget + i * a.C, a.C, a.forget_targets(i), qn,
                                              KEEP_E ? a.g_forget + i * a.C : nullptr, bad);
  }
}

template <bool PROBS>
void mix_forget_grads(const LossArgs& a, int64_t i, bool real, const RowStats& s_mix, const RowStats* s_fgt,
                      const double coef_mix[2], double coef_fgt) {
  row_grad<2, PROBS>(a.g_mix + i * a.C, a.C, s_mix, a.mix_targets(i), coef_mix);
  const double coefs[2] = {coef_fgt, 0};
  if (real) row_grad<1, PROBS>(a.g_forget + i * a.C, a.C, s_fgt[i], a.forget_targets(i), coefs);
}

template <bool PROBS>
int loss_forward(const LossArgs& a, double tau_mix, double tau_real, double omega, bool mean, float* loss,
                 bool check_values, int nt) {
  const int64_t B = a.B, N = a.N, C = a.C;
  const bool real = omega != 0;
  const double scale_mix = mean ? 1.0 / B : 1.0, scale_real = mean ? 1.0 / N : 1.0;
  std::vector<RowStats> s_mix(B), s_fgt(real ? B : 0);
  std::vector<double> c_ret(real ? N : 0), qn_r(real ? N : 0), f_mix(B), f_real(real ? B : 0);
  int bad = 0, code = kOk;
  double total = 0;
  // run by each thread of the team, or alone: a parallel region of one thread costs about
  // as much as a small call's arithmetic
  auto rows = [&]() {
    int bad_t = 0;  // this thread's
    // the retain rows first, gradient included: the mix and forget rows, whose gradients
    // wait for the batch's log-sum-exp, are then the last rows read before that wait (the
    // loop ends in a barrier: the mix rows read the retain target norms it leaves)
    if (real) {
#pragma omp for schedule(static)
      for (int64_t j = 0; j < N; ++j) retain_row<PROBS>(a, j, -omega * scale_real, c_ret[j], qn_r[j], bad_t);
    }
    // each thread keeps its block of mix and forget rows for both passes, the second one
    // last row first: what is still in cache from the first pass is read first
    const auto [lo, hi] = own_block(B);
    const double* qn = real ? qn_r.data() : nullptr;
    RowStats* fgt = real ? s_fgt.data() : nullptr;
    for (int64_t i = lo; i < hi; ++i) {
      if (a.g_mix)  // e = exp(z - m) kept in the gradient rows: the second pass reads it back
        mix_forget_stats<PROBS, true>(a, i, qn, s_mix[i], fgt, bad_t);
      else
        mix_forget_stats<PROBS, false>(a, i, qn, s_mix[i], fgt, bad_t);
    }
#pragma omp atomic
    bad |= bad_t;
#pragma omp barrier
#pragma omp single
    {
      if (check_values && PROBS) {
        // the flags do not say which argument was bad: rescan to tell; without L_real the
        // retain rows perm never reaches were not read: scan them too
        const bool any = bad != 0;
        int found = 0;
        if (any)
          for (int64_t k = 0; k < B * C && !found; ++k) found = !(a.qf[k] >= 0) || std::isinf(a.qf[k]);
        if (found) code = kForgetProb;
        if (!found && (any || (!real && a.perm)))
          for (int64_t k = 0; k < N * C && !found; ++k) found = !(a.qr[k] >= 0) || std::isinf(a.qr[k]);
        if (found && !code) code = kRetainProb;
      }
      // the terms and the log-sum-exps over the forget terms, summed in row order: the
      // result does not depend on the thread count
      double keep_mix = 0;
      for (int64_t i = 0; i < B; ++i) {
        const double l = a.lam[i * a.lam_stride];
        keep_mix += (1 - l) * (1 - s_mix[i].k[0].c);
        f_mix[i] = l * (1 - s_mix[i].k[1].c) / tau_mix;
      }
      const double lse_mix = logsumexp_weights(f_mix);  // f_mix now holds the softmax weights
      total = (keep_mix - B * lse_mix) * scale_mix;
      if (real) {
        double keep_real = 0;
        for (int64_t j = 0; j < N; ++j) keep_real += 1 - c_ret[j];
        for (int64_t i = 0; i < B; ++i) f_real[i] = (1 - s_fgt[i].k[0].c) / tau_real;
        const double lse_real = logsumexp_weights(f_real);
        total += omega * ((keep_real - N * lse_real) * scale_real);
      }
    }
    if (code == kOk && a.g_mix) {
      for (int64_t i = hi - 1; i >= lo; --i) {
        const double l = a.lam[i * a.lam_stride];
        const double coef_mix[2] = {-(1 - l) * scale_mix, (B / tau_mix) * f_mix[i] * l * scale_mix};
        const double coef_fgt = real ? omega * (N / tau_real) * f_real[i] * scale_real : 0.0;
        mix_forget_grads<PROBS>(a, i, real, s_mix[i], s_fgt.data(), coef_mix, coef_fgt);
      }
    }
  };
  if (nt > 1) {
#pragma omp parallel num_threads(nt)
    rows();
  } else {
    rows();
  }
  if (code == kOk) loss[0] = float(total);
  return code;
}

}  // namespace

extern "C" {

// L_mix + omega * L_real (SPEC 4 and 6) and its gradients to the three logits.
// mix (B, C) pairs with forget target row i and retain target row perm[i] (i if perm is null);
// with omega > 0, forget (B, C) pairs with forget target rows, retain (N, C) with retain target
// rows. Targets are probabilities (qf, qr) or labels (yf, yr), never both. lam has B entries,
// or one (lam_stride 0). Writes loss[0]; the gradients when g_mix is not null.
struct FastmixLossCall {
  const float *mix, *forget, *retain, *qf, *qr;
  const int64_t *yf, *yr;
  const float* lam;
  const int64_t* perm;
  float *loss, *g_mix, *g_forget, *g_retain;
  int64_t lam_stride, B, N, C;
  double tau_mix, tau_real, omega;
  int64_t mean, check_values, nthreads;
};

// Each row is read once for its terms; the gradients of the retain rows are written in that
// same visit, those of the mix and forget rows in a second visit after the batch's
// log-sum-exp. On a bad value the error code is returned and loss[0] is not written.
int fastmix_cpu_loss_forward(const FastmixLossCall* call) {
  const FastmixLossCall& c = *call;
  const int64_t B = c.B, N = c.N, C = c.C;
  const bool labels = c.qf == nullptr;
  const bool real = c.omega != 0;
  // value checks first, O(B + N): nothing is read out of bounds on bad input
  if (c.check_values) {
    for (int64_t i = 0; i < B; ++i) {
      if (labels && (c.yf[i] < 0 || c.yf[i] >= C)) return kForgetLabel;
      if (!in_unit(c.lam[i * c.lam_stride])) return kLam;
    }
    if (!perm_ok(c.perm, B, N)) return kPerm;
    if (labels)
      for (int64_t j = 0; j < N; ++j)
        if (c.yr[j] < 0 || c.yr[j] >= C) return kRetainLabel;
  }
  const int nt = threads_for((real ? 2 * B + N : B) * C, int(c.nthreads));
  const LossArgs a{c.mix, c.forget, c.retain, c.qf, c.qr, c.yf, c.yr, c.perm, c.lam, c.lam_stride, B, N, C,
                   c.g_mix, real ? c.g_forget : nullptr, real ? c.g_retain : nullptr};
  const bool mean = c.mean != 0, check = c.check_values != 0;
  return labels ? loss_forward<false>(a, c.tau_mix, c.tau_real, c.omega, mean, c.loss, check, nt)
                : loss_forward<true>(a, c.tau_mix, c.tau_real, c.omega, mean, c.loss, check, nt);
}

}  // extern "C"
