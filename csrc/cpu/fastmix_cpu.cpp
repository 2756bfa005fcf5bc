// fastmix's CPU kernels: the ops of SPEC sections 2 to 4 fused into one or two passes
// over the rows, float32 data, float64 accumulators, OpenMP across rows when there is
// enough work. A plain C ABI loaded with ctypes (fastmix/backends/cpu_backend.py), no
// torch headers: the library builds in seconds with any C++17 compiler.
//
// Every pointer is to contiguous float32 / int64 data; the Python side makes it so.
// Built with -ffp-contract=off: mixup rounds as the PyTorch reference does.
#include <cmath>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

constexpr double kEps = 1e-8;  // the clamp of d(p, q) = 1 - <p, q> / max(|p| |q|, eps)
constexpr int64_t kParallelElements = 1 << 15;  // below this a parallel region costs more than it saves

int threads_for(int64_t elements, int nthreads) { return elements >= kParallelElements ? nthreads : 1; }

// exp(x) for x <= 0 (a softmax's shifted logits) in plain float arithmetic that the compiler
// vectorises, unlike a call to expf: x = n ln2 + r, |r| <= ln2 / 2, exp(r) by a degree-6
// polynomial (relative error under 2 ulp), 2^n through the exponent bits. Below -87.3 the
// result is 0 (float's normal range ends there); NaN stays NaN.
inline float exp_nonpositive(float x) {
  const float xc = x < -87.33654f ? -87.33654f : x;
  // round to nearest by the 1.5 * 2^23 trick (|x log2 e| < 2^22): no libm call, vectorises
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (int32_t(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const float e = p * scale;
  return x < -87.33654f ? 0.0f : (x != x ? x : e);
}

}  // namespace

extern "C" {

int fastmix_cpu_version() { return 1; }

// out = softmax(z / T) row by row (rows of C), as exp((z - max z) / T) / sum: z / T itself
// would overflow for a tiny T, the differences to the row's maximum never do
int fastmix_cpu_sharpen_forward(const float* z, float* out, int64_t rows, int64_t C, double T, int nthreads) {
  const double inv_T = 1.0 / T;  // inf for a denormal T: then (z - m) * inv_T is -inf or NaN at 0
  const bool finite_inv = std::isfinite(inv_T);
#pragma omp parallel for num_threads(threads_for(rows * C, nthreads)) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* zr = z + r * C;
    float* o = out + r * C;
    float m = -INFINITY;
    int nan = 0;
    for (int64_t j = 0; j < C; ++j) m = zr[j] > m ? zr[j] : m;
#pragma omp simd reduction(| : nan)
    for (int64_t j = 0; j < C; ++j) nan |= zr[j] != zr[j];
    if (nan || std::isinf(m)) m = NAN;  // NaN in, or +-inf: the row is NaN, as softmax's
    if (finite_inv) {
#pragma omp simd
      for (int64_t j = 0; j < C; ++j) o[j] = exp_nonpositive(float((zr[j] - m) * inv_T));
    } else {
      for (int64_t j = 0; j < C; ++j) o[j] = zr[j] == m ? 1.0f : (m != m ? NAN : 0.0f);
    }
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < C; ++j) s += o[j];
    const float inv = float(1.0 / s);
    for (int64_t j = 0; j < C; ++j) o[j] *= inv;
  }
  return 0;
}

// out = y * (g - <g, y>) / T
int fastmix_cpu_sharpen_backward(const float* g, const float* y, float* out, int64_t rows, int64_t C, double T,
                                 int nthreads) {
#pragma omp parallel for num_threads(threads_for(rows * C, nthreads)) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* gr = g + r * C;
    const float* yr = y + r * C;
    double dot = 0;
    for (int64_t j = 0; j < C; ++j) dot += double(gr[j]) * yr[j];
    float d = float(dot);
    for (int64_t j = 0; j < C; ++j) out[r * C + j] = float(double(yr[j] * (gr[j] - d)) / T);
  }
  return 0;
}

// x viewed as (B, P, Q) in memory; the weight of element (b, p, q) is w[b*wsb + p*wsp + q*wsq]
// (all 0: one lambda; wsb 1: one per sample; a mask: its strides against x's layout).
// out = m * x_f + (1 - m) * x_r[perm[b]]
int fastmix_cpu_mixup_forward(const float* xf, const float* xr, const float* w, const int64_t* perm, float* out,
                              int64_t B, int64_t P, int64_t Q, int64_t wsb, int64_t wsp, int64_t wsq, int nthreads) {
  const int64_t row = P * Q;
#pragma omp parallel for num_threads(threads_for(B * row, nthreads)) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    const float* f = xf + b * row;
    const float* r = xr + (perm ? perm[b] : b) * row;
    float* o = out + b * row;
    const float* wb = w + b * wsb;
    for (int64_t p = 0; p < P; ++p) {
      const float* wp = wb + p * wsp;
      for (int64_t q = 0; q < Q; ++q) {
        const int64_t i = p * Q + q;
        const float m = wp[q * wsq];
        const float a = m * f[i];
        const float c = (1.0f - m) * r[i];
        o[i] = a + c;
      }
    }
  }
  return 0;
}

// The gradients of mixup in one pass over g: to x_f (m * g), to x_r (summed over repeated
// perm rows; written serially in b so that repeats add up in order) and to the weight
// (summed over what it broadcasts over, float64 accumulators). A null output is not wanted.
// gw has the weight's shape; n_w its element count.
int fastmix_cpu_mixup_backward(const float* g, const float* xf, const float* xr, const float* w, const int64_t* perm,
                               float* gf, float* gr, float* gw, int64_t B, int64_t P, int64_t Q, int64_t pool,
                               int64_t wsb, int64_t wsp, int64_t wsq, int64_t n_w, int nthreads) {
  const int64_t row = P * Q;
  const int nt = threads_for(B * row, nthreads);
  if (gf) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t p = 0; p < P; ++p)
        for (int64_t q = 0; q < Q; ++q) {
          const int64_t i = b * row + p * Q + q;
          gf[i] = w[b * wsb + p * wsp + q * wsq] * g[i];
        }
  }
  if (gr) {
    if (perm) {
#pragma omp parallel for num_threads(nt) schedule(static)
      for (int64_t i = 0; i < pool * row; ++i) gr[i] = 0.0f;
    }
    // parallel over the elements of a row, serial over b: repeated rows add in order
#pragma omp parallel num_threads(nt)
    for (int64_t b = 0; b < B; ++b) {
      float* dst = gr + (perm ? perm[b] : b) * row;
#pragma omp for schedule(static)
      for (int64_t i = 0; i < row; ++i) {
        const float m = w[b * wsb + (i / Q) * wsp + (i % Q) * wsq];
        const float v = (1.0f - m) * g[b * row + i];
        dst[i] = perm ? dst[i] + v : v;
      }
    }
  }
  if (gw) {
    if (wsb == 0) {  // one lambda for the batch: a single sum
      double acc = 0;
#pragma omp parallel for num_threads(nt) reduction(+ : acc) schedule(static)
      for (int64_t b = 0; b < B; ++b) {
        const float* r = xr + (perm ? perm[b] : b) * row;
        for (int64_t i = 0; i < row; ++i) acc += double(g[b * row + i]) * (double(xf[b * row + i]) - r[i]);
      }
      gw[0] = float(acc);
    } else {  // each b owns the weight entries b * wsb ... of its sample
      const int64_t per_b = n_w / B;
#pragma omp parallel num_threads(nt)
      {
        std::vector<double> acc(per_b);
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; ++b) {
          std::fill(acc.begin(), acc.end(), 0.0);
          const float* r = xr + (perm ? perm[b] : b) * row;
          for (int64_t p = 0; p < P; ++p)
            for (int64_t q = 0; q < Q; ++q) {
              const int64_t i = b * row + p * Q + q;
              const float diff = xf[i] - r[p * Q + q];
              acc[p * wsp + q * wsq] += double(g[i] * diff);
            }
          for (int64_t k = 0; k < per_b; ++k) gw[b * wsb + k] = float(acc[k]);
        }
      }
    }
  }
  return 0;
}

// Error codes of the loss: which argument holds a bad value (see cpu_backend.py).
enum LossError {
  kOk = 0,
  kForgetLabel = 1,
  kRetainLabel = 2,
  kPerm = 3,
  kLam = 4,
  kForgetProb = 5,
  kRetainProb = 6,
};

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

// One row's softmax (m, 1/s with p = exp(z - m) / s) and its cosine parts against up to
// two targets (probability rows q, or labels y when q is null; n_targets 1 or 2), in one
// pass that evaluates each exp once; p is left in the scratch row ``p``.
struct RowStats {
  float m;
  float inv_s;
  Cosine k[2];
};

inline RowStats row_stats(const float* z, int64_t C, int n_targets, const float* q0, int64_t y0, const float* q1,
                          int64_t y1, float* p, bool* bad_q) {
  RowStats st;
  float m = -INFINITY;
  for (int64_t j = 0; j < C; ++j) m = z[j] > m ? z[j] : m;  // NaN skipped, as fmax does
  if (std::isinf(m)) m = NAN;  // a row of -inf, or one with +inf, gives NaN, as softmax does
  for (int64_t j = 0; j < C; ++j) p[j] = exp_nonpositive(z[j] - m);
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < C; ++j) s += p[j];
  const float inv_s = float(1.0 / s);
  double pp = 0;
#pragma omp simd reduction(+ : pp)
  for (int64_t j = 0; j < C; ++j) {
    p[j] *= inv_s;
    pp += double(p[j]) * p[j];
  }
  st.m = m;
  st.inv_s = inv_s;
  const float* qs[2] = {q0, q1};
  const int64_t ys[2] = {y0, y1};
  for (int t = 0; t < n_targets; ++t) {
    double dot = 0, qq = 1;
    if (qs[t]) {
      const float* q = qs[t];
      qq = 0;
      int bad = 0;
#pragma omp simd reduction(+ : dot, qq) reduction(| : bad)
      for (int64_t j = 0; j < C; ++j) {
        dot += double(p[j]) * q[j];
        qq += double(q[j]) * q[j];
        bad |= !(q[j] >= 0 && q[j] <= 3.4e38f);  // NaN, negative or infinite
      }
      *bad_q |= bad != 0;
    } else {
      dot = p[ys[t]];
    }
    st.k[t] = cosine(dot, pp, std::sqrt(qq));
  }
  return st;
}

// g = d/dz of sum_t coef_t * c_t(p(z)): p * (sum_t coef_t (A_t q_t - Bp_t p - Dp_t)), written as float
inline void write_row_grad(float* g, const float* z, int64_t C, const RowStats& st, int n_targets,
                           const float* q0, int64_t y0, const float* q1, int64_t y1, double coef0, double coef1) {
  const double a0 = coef0 * st.k[0].A, b0 = coef0 * st.k[0].Bp;
  const double a1 = n_targets > 1 ? coef1 * st.k[1].A : 0.0, b1 = n_targets > 1 ? coef1 * st.k[1].Bp : 0.0;
  const double d = coef0 * st.k[0].Dp + (n_targets > 1 ? coef1 * st.k[1].Dp : 0.0);
  const float fb = float(b0 + b1), fd = float(d);
  const float fa0 = float(a0), fa1 = float(a1);
  const float m = st.m, inv_s = st.inv_s;
  if (q0 && q1) {
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) {
      const float p = exp_nonpositive(z[j] - m) * inv_s;
      g[j] = p * (fa0 * q0[j] + fa1 * q1[j] - fb * p - fd);
    }
  } else if (q0) {
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) {
      const float p = exp_nonpositive(z[j] - m) * inv_s;
      g[j] = p * (fa0 * q0[j] - fb * p - fd);
    }
  } else {
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) {
      const float p = exp_nonpositive(z[j] - m) * inv_s;
      g[j] = p * (-fb * p - fd);
    }
  }
  if (!q0) g[y0] += exp_nonpositive(z[y0] - m) * inv_s * fa0;
  if (n_targets > 1 && !q1) g[y1] += exp_nonpositive(z[y1] - m) * inv_s * fa1;
}

// log sum_i exp(x_i) and the softmax weights exp(x_i - lse), in place
double logsumexp_weights(std::vector<double>& x) {
  double m = -INFINITY;
  for (double v : x) m = std::fmax(m, v);
  double s = 0;
  for (double v : x) s += std::exp(v - m);
  const double lse = m + std::log(s);
  for (double& v : x) v = std::exp(v - lse);
  return lse;
}

}  // namespace

// L_mix + omega * L_real (SPEC 4 and 6) and its gradients to the three logits.
// mix (B, C) pairs with forget target row i and retain target row perm[i] (i if perm is null);
// with omega > 0, forget (B, C) pairs with forget target rows, retain (N, C) with retain target
// rows. Targets are probabilities (qf, qr) or labels (yf, yr), never both. lam has B entries,
// or one (lam_stride 0). Writes loss[0]; the gradients when g_mix is not null.
int fastmix_cpu_loss_forward(const float* mix, const float* forget, const float* retain, const float* qf,
                             const float* qr, const int64_t* yf, const int64_t* yr, const float* lam,
                             int64_t lam_stride, const int64_t* perm, int64_t B, int64_t N, int64_t C,
                             double tau_mix, double tau_real, double omega, int mean, float* loss, float* g_mix,
                             float* g_forget, float* g_retain, int check_values, int nthreads) {
  const bool labels = qf == nullptr;
  const bool real = omega != 0;
  const int64_t n_pool = N;
  // value checks first, O(B + N): nothing is computed on bad input
  if (check_values) {
    for (int64_t i = 0; i < B; ++i) {
      if (labels && (yf[i] < 0 || yf[i] >= C)) return kForgetLabel;
      if (perm && (perm[i] < 0 || perm[i] >= n_pool)) return kPerm;
      const float l = lam[i * lam_stride];
      if (!(l >= 0.0f && l <= 1.0f)) return kLam;
    }
    if (labels)
      for (int64_t j = 0; j < n_pool; ++j)
        if (yr[j] < 0 || yr[j] >= C) return kRetainLabel;
  }
  const int nt = threads_for((real ? 2 * B + N : B) * C, nthreads);
  auto q_row = [&](const float* q, int64_t r) { return q ? q + r * C : nullptr; };
  auto y_of = [&](const int64_t* y, int64_t r) { return y ? y[r] : int64_t(0); };

  // pass 1: the per-row stats of every set (a mix row against its retain and forget targets)
  std::vector<RowStats> s_mix(B), s_ret(real ? N : 0), s_fgt(real ? B : 0);
  int bad_f = 0, bad_r = 0;
#pragma omp parallel num_threads(nt) reduction(| : bad_f, bad_r)
  {
    std::vector<float> p(C);
    bool bf = false, br = false;
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < B; ++i) {
      const int64_t k = perm ? perm[i] : i;
      bool b_r = false, b_f = false;
      // target 0: the retain row (keep term), target 1: the forget row (forget term)
      s_mix[i] = row_stats(mix + i * C, C, 2, q_row(qr, k), y_of(yr, k), q_row(qf, i), y_of(yf, i), p.data(), &b_r);
      if (real) s_fgt[i] = row_stats(forget + i * C, C, 1, q_row(qf, i), y_of(yf, i), nullptr, 0, p.data(), &b_f);
      br |= b_r;
      bf |= b_f;
    }
    if (real) {
#pragma omp for schedule(static) nowait
      for (int64_t j = 0; j < N; ++j)
        s_ret[j] = row_stats(retain + j * C, C, 1, q_row(qr, j), y_of(yr, j), nullptr, 0, p.data(), &br);
    }
    bad_f |= bf;
    bad_r |= br;
  }
  if (check_values && !labels) {
    // a mix row's flag covers both of its targets: rescan to tell which argument it was;
    // without L_real the retain rows perm never reaches were not read: scan them too
    const bool any = bad_f || bad_r;
    bad_f = 0;
    if (any)
      for (int64_t k = 0; k < B * C && !bad_f; ++k) bad_f = !(qf[k] >= 0) || std::isinf(qf[k]);
    if (bad_f) return kForgetProb;
    if (any || (!real && perm)) {
      bad_r = 0;
      for (int64_t k = 0; k < N * C && !bad_r; ++k) bad_r = !(qr[k] >= 0) || std::isinf(qr[k]);
      if (bad_r) return kRetainProb;
    }
  }

  // the terms and the log-sum-exps over the forget terms
  const double scale_mix = mean ? 1.0 / B : 1.0;
  double keep_mix = 0;
  std::vector<double> f_mix(B);
  for (int64_t i = 0; i < B; ++i) {
    const double l = lam[i * lam_stride];
    keep_mix += (1 - l) * (1 - s_mix[i].k[0].c);
    f_mix[i] = l * (1 - s_mix[i].k[1].c) / tau_mix;
  }
  const double lse_mix = logsumexp_weights(f_mix);  // f_mix now holds the softmax weights
  double total = (keep_mix - B * lse_mix) * scale_mix;
  double scale_real = 0;
  std::vector<double> f_real;
  if (real) {
    scale_real = mean ? 1.0 / N : 1.0;
    double keep_real = 0;
    for (int64_t j = 0; j < N; ++j) keep_real += 1 - s_ret[j].k[0].c;
    f_real.resize(B);
    for (int64_t i = 0; i < B; ++i) f_real[i] = (1 - s_fgt[i].k[0].c) / tau_real;
    const double lse_real = logsumexp_weights(f_real);
    total += omega * ((keep_real - N * lse_real) * scale_real);
  }
  loss[0] = float(total);
  if (!g_mix) return kOk;

  // pass 2: the gradients, one row at a time, each exp evaluated once more
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < B; ++i) {
      const int64_t k = perm ? perm[i] : i;
      const double l = lam[i * lam_stride];
      write_row_grad(g_mix + i * C, mix + i * C, C, s_mix[i], 2, q_row(qr, k), y_of(yr, k), q_row(qf, i),
                     y_of(yf, i), -(1 - l) * scale_mix, (B / tau_mix) * f_mix[i] * l * scale_mix);
    }
    if (real) {
#pragma omp for schedule(static) nowait
      for (int64_t i = 0; i < B; ++i)
        write_row_grad(g_forget + i * C, forget + i * C, C, s_fgt[i], 1, q_row(qf, i), y_of(yf, i), nullptr, 0,
                       omega * (N / tau_real) * f_real[i] * scale_real, 0.0);
#pragma omp for schedule(static)
      for (int64_t j = 0; j < N; ++j)
        write_row_grad(g_retain + j * C, retain + j * C, C, s_ret[j], 1, q_row(qr, j), y_of(yr, j), nullptr, 0,
                       -omega * scale_real, 0.0);
    }
  }
  return kOk;
}

}  // extern "C"
