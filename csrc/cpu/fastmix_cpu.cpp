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
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

constexpr double kEps = 1e-8;  // the clamp of d(p, q) = 1 - <p, q> / max(|p| |q|, eps)
constexpr int64_t kParallelElements = 1 << 15;  // below this a parallel region costs more than it saves

int threads_for(int64_t elements, int nthreads) { return elements >= kParallelElements ? nthreads : 1; }

// max and sum of exp(z - max) of one row, i.e. softmax(z) = exp(z - m) / s
inline void softmax_stats(const float* z, int64_t C, float scale, double* m_out, double* s_out) {
  float m = -INFINITY;
  for (int64_t j = 0; j < C; ++j) m = std::fmax(m, z[j] * scale);
  double s = 0;
  for (int64_t j = 0; j < C; ++j) s += std::exp(double(z[j] * scale - m));
  *m_out = m;
  *s_out = s;
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
    bool nan = false;
    for (int64_t j = 0; j < C; ++j) {
      m = std::fmax(m, zr[j]);
      nan |= std::isnan(zr[j]);
    }
    double s = 0;
    for (int64_t j = 0; j < C; ++j) {
      const float d = zr[j] - m;
      const float e = nan ? NAN : std::exp(finite_inv ? float(d * inv_T) : (d == 0.0f ? 0.0f : -INFINITY));
      o[j] = e;
      s += e;
    }
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

// One set of rows of the loss: logits z (n, C), softmax stats, and the cosine parts of
// SPEC 4 against a target row: c = <p, q> / max(|p| |q|, eps), dc/dp = A q - Bp p,
// <dc/dp, p> = Dp.
struct RowStats {
  double m, s;         // softmax(z) = exp(z - m) / s
  double c, A, Bp, Dp;
};

// The stats of row z against a probability row q (labels: q null, label y).
inline RowStats row_stats(const float* z, int64_t C, const float* q, int64_t y, bool* bad_q) {
  RowStats st;
  softmax_stats(z, C, 1.0f, &st.m, &st.s);
  const double inv_s = 1.0 / st.s;
  double pp = 0, dot = 0, qq = 0;
  for (int64_t j = 0; j < C; ++j) {
    const double p = std::exp(double(z[j]) - st.m) * inv_s;
    pp += p * p;
    if (q) {
      const double qj = q[j];
      dot += p * qj;
      qq += qj * qj;
      if (!(qj >= 0) || !std::isfinite(qj)) *bad_q = true;
    }
  }
  double qn = 1.0;
  if (q) {
    qn = std::sqrt(qq);
  } else {
    dot = std::exp(double(z[y]) - st.m) * inv_s;
  }
  const double den = std::sqrt(pp) * qn;
  const bool clamped = den <= kEps;
  st.A = 1.0 / std::fmax(den, kEps);
  st.c = dot * st.A;
  st.Bp = clamped ? 0.0 : st.c / pp;
  st.Dp = clamped ? st.c : 0.0;
  return st;
}

// grad += coef * softmax-Jacobian^T (A q - Bp p - Dp): the gradient of coef * c(p(z), q) w.r.t. z
inline void add_row_grad(double* acc, const float* z, int64_t C, const RowStats& st, const float* q, int64_t y,
                         double coef) {
  if (coef == 0) return;
  const double inv_s = 1.0 / st.s;
  for (int64_t j = 0; j < C; ++j) {
    const double p = std::exp(double(z[j]) - st.m) * inv_s;
    const double qj = q ? double(q[j]) : (j == y ? 1.0 : 0.0);
    acc[j] += coef * p * (st.A * qj - st.Bp * p - st.Dp);
  }
}

// log sum_i exp(x_i) and the softmax weights exp(x_i - lse), in place
double logsumexp_weights(std::vector<double>& x) {
  double m = -INFINITY;
  for (double v : x) m = std::fmax(m, v);
  if (!std::isfinite(m)) {  // empty, all -inf or a NaN: let the arithmetic carry it
    double s = 0;
    for (double v : x) s += std::exp(v - m);
    for (double& v : x) v = std::exp(v - m) / s;
    return m + std::log(s);
  }
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

  // pass 1: the per-row stats of every set
  std::vector<RowStats> s_keep(B), s_fmix(B), s_ret(real ? N : 0), s_fgt(real ? B : 0);
  int bad_f = 0, bad_r = 0;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(| : bad_f, bad_r)
  for (int64_t i = 0; i < B; ++i) {
    const int64_t k = perm ? perm[i] : i;
    bool bf = false, br = false;
    s_keep[i] = row_stats(mix + i * C, C, q_row(qr, k), y_of(yr, k), &br);
    s_fmix[i] = row_stats(mix + i * C, C, q_row(qf, i), y_of(yf, i), &bf);
    if (real) s_fgt[i] = row_stats(forget + i * C, C, q_row(qf, i), y_of(yf, i), &bf);
    bad_f |= bf;
    bad_r |= br;
  }
  if (real) {
#pragma omp parallel for num_threads(nt) schedule(static) reduction(| : bad_r)
    for (int64_t j = 0; j < N; ++j) {
      bool br = false;
      s_ret[j] = row_stats(retain + j * C, C, q_row(qr, j), y_of(yr, j), &br);
      bad_r |= br;
    }
  }
  if (check_values && !labels) {
    if (bad_f) return kForgetProb;
    if (!real && perm) {  // without L_real only the rows perm reaches were read: check them all
      for (int64_t k = 0; k < N * C; ++k)
        if (!(qr[k] >= 0) || !std::isfinite(qr[k])) bad_r = 1;
    }
    if (bad_r) return kRetainProb;
  }

  // the terms and the log-sum-exps over the forget terms
  const double scale_mix = mean ? 1.0 / B : 1.0;
  double keep_mix = 0;
  std::vector<double> f_mix(B);
  for (int64_t i = 0; i < B; ++i) {
    const double l = lam[i * lam_stride];
    keep_mix += (1 - l) * (1 - s_keep[i].c);
    f_mix[i] = l * (1 - s_fmix[i].c) / tau_mix;
  }
  const double lse_mix = logsumexp_weights(f_mix);  // f_mix now holds the softmax weights
  double total = (keep_mix - B * lse_mix) * scale_mix;
  double scale_real = 0;
  std::vector<double> f_real;
  if (real) {
    scale_real = mean ? 1.0 / N : 1.0;
    double keep_real = 0;
    for (int64_t j = 0; j < N; ++j) keep_real += 1 - s_ret[j].c;
    f_real.resize(B);
    for (int64_t i = 0; i < B; ++i) f_real[i] = (1 - s_fgt[i].c) / tau_real;
    const double lse_real = logsumexp_weights(f_real);
    total += omega * ((keep_real - N * lse_real) * scale_real);
  }
  loss[0] = float(total);
  if (!g_mix) return kOk;

  // pass 2: the gradients, one row at a time
#pragma omp parallel num_threads(nt)
  {
    std::vector<double> acc(C);
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < B; ++i) {
      const int64_t k = perm ? perm[i] : i;
      const double l = lam[i * lam_stride];
      std::fill(acc.begin(), acc.end(), 0.0);
      add_row_grad(acc.data(), mix + i * C, C, s_keep[i], q_row(qr, k), y_of(yr, k), -(1 - l) * scale_mix);
      add_row_grad(acc.data(), mix + i * C, C, s_fmix[i], q_row(qf, i), y_of(yf, i),
                   (B / tau_mix) * f_mix[i] * l * scale_mix);
      for (int64_t j = 0; j < C; ++j) g_mix[i * C + j] = float(acc[j]);
    }
    if (real) {
#pragma omp for schedule(static) nowait
      for (int64_t i = 0; i < B; ++i) {
        std::fill(acc.begin(), acc.end(), 0.0);
        add_row_grad(acc.data(), forget + i * C, C, s_fgt[i], q_row(qf, i), y_of(yf, i),
                     omega * (N / tau_real) * f_real[i] * scale_real);
        for (int64_t j = 0; j < C; ++j) g_forget[i * C + j] = float(acc[j]);
      }
#pragma omp for schedule(static)
      for (int64_t j = 0; j < N; ++j) {
        std::fill(acc.begin(), acc.end(), 0.0);
        add_row_grad(acc.data(), retain + j * C, C, s_ret[j], q_row(qr, j), y_of(yr, j), -omega * scale_real);
        for (int64_t c = 0; c < C; ++c) g_retain[j * C + c] = float(acc[c]);
      }
    }
  }
  return kOk;
}

}  // extern "C"
