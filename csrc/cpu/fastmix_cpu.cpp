// fastmix's CPU kernels: the ops of SPEC sections 2 to 4 fused into one or two passes
// over the rows, float32 data, float64 accumulators (the loss: float32 partial sums over
// chunks of a row, added in float64), OpenMP across rows when there is enough work. A plain C ABI loaded with ctypes (fastmix/backends/cpu_backend.py), no
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

}  // namespace

extern "C" {

int fastmix_cpu_version() { return 2; }  // cpu_backend.ABI_VERSION

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

// Row sums run in float lanes over chunks of this many elements, the chunks add up in
// float64: float64 lanes would halve the vector width of the loop that reads the data.
constexpr int64_t kChunk = 256;

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
    int t = 0, T = 1;
#ifdef _OPENMP
    t = omp_get_thread_num();
    T = omp_get_num_threads();
#endif
    const int64_t lo = B * t / T, hi = B * (t + 1) / T;
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

// L_mix + omega * L_real (SPEC 4 and 6) and its gradients to the three logits, the
// arguments bundled in one struct (ctypes then passes one pointer: marshalling two dozen
// arguments was a visible part of a small call). cpu_backend._LossCall mirrors it.
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
  int32_t mean, check_values, nthreads;
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
      if (c.perm && (c.perm[i] < 0 || c.perm[i] >= N)) return kPerm;
      const float l = c.lam[i * c.lam_stride];
      if (!(l >= 0.0f && l <= 1.0f)) return kLam;
    }
    if (labels)
      for (int64_t j = 0; j < N; ++j)
        if (c.yr[j] < 0 || c.yr[j] >= C) return kRetainLabel;
  }
  const int nt = threads_for((real ? 2 * B + N : B) * C, c.nthreads);
  const LossArgs a{c.mix, c.forget, c.retain, c.qf, c.qr, c.yf, c.yr, c.perm, c.lam, c.lam_stride, B, N, C,
                   c.g_mix, real ? c.g_forget : nullptr, real ? c.g_retain : nullptr};
  const bool mean = c.mean != 0, check = c.check_values != 0;
  return labels ? loss_forward<false>(a, c.tau_mix, c.tau_real, c.omega, mean, c.loss, check, nt)
                : loss_forward<true>(a, c.tau_mix, c.tau_real, c.omega, mean, c.loss, check, nt);
}

}  // extern "C"
