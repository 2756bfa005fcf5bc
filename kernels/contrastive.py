"""The contrastive family C_tau (SPEC 4): loss and logits gradients in one forward.

A call covers up to three sets of logits rows, each in a fixed slot of the kernels:
the mixed rows (``L_mix``: keep and forget terms, lambda-weighted, keep target
through ``perm``), the real retain rows (keep terms only) and the real forget rows
(forget terms only; the last two make ``L_real``). ``loss_forward`` fills all
three, ``contrastive_forward`` the first, ``real_forward`` the last two.

The batch couples only through the log-sum-exp of a set's forget terms. So:
- small sets (each a tile of at most ``TILE_ELEMENTS`` padded logits, the
  trainer's case): ``_tile_kernel``, one launch of one program that holds each
  set as a 2-D block of rows x classes in registers, every row in parallel;
- larger sets: a launch per log-sum-exp set and one more, each over the rows in
  parallel (one kernel would need a grid-wide barrier: a hang wherever programs are
  not co-resident, and nothing the interpreter can run). A row with a forget term
  needs its set's log-sum-exp before its gradient, so its logits and q_f are read
  twice; each launch re-reads the rows the one before read last, first, and the loads
  say which rows a later launch wants (L2 eviction hints), so that the second read is
  an L2 hit when a set's rows fit (BENCHMARKS.md counts both cases):
  1. ``_mix_terms_kernel``, a program per mix row: its forget term (stats ``S_*``).
  2. ``_rows_kernel``, a persistent grid, rows last to first: mix row i's keep term
     and whole gradient (the mix log-sum-exp is known now), forget row i's term, and
     retain row i's term and gradient (it has no forget term).
  3. ``_grad_kernel``, a persistent grid, rows first to last: the forget rows'
     gradients; program 0 writes the loss.
  Without mix rows (``real_forward``) launch 1 is left out.
No value goes to the host. The backward of the op only scales the saved gradients.

A label or ``perm`` index out of range is never dereferenced: the row's terms
become NaN, and so does the loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._common import EPS, check_dtype, new_output, persistent_programs, row_block, warps_for
from .sharpen import softmax_stats

MAX_BLOCK = 2048
BLOCK_ROWS = 1024
# a set runs in the one-program tile kernel when rows x classes, each padded to a power of two, fit this
TILE_ELEMENTS = 2048

# Per-row stats of the path over rows, one slot each: softmax max and 1 / sum exp; the forget
# term's dc/dp = A q - Bp p with <dc/dp, p> = Dp; the keep term; X = the forget term / tau;
# the forget weight mu. Only the forget slots cross launches with the whole gradient
# still to come; a retain row has S_KEEP alone.
S_M = tl.constexpr(0)
S_INV_S = tl.constexpr(1)
S_A_F = tl.constexpr(2)
S_BP_F = tl.constexpr(3)
S_DP_F = tl.constexpr(4)
S_KEEP = tl.constexpr(5)
S_X = tl.constexpr(6)
S_FW = tl.constexpr(7)
N_STATS = 8

# the role of a row set (SPEC 4): mixed rows have both terms, real retain rows only keep
# terms, real forget rows only forget terms
MIX = tl.constexpr(0)
KEEP = tl.constexpr(1)
FORGET = tl.constexpr(2)


@dataclass
class RowSet:
    """One set of logits rows with its targets and its share of the loss, as the kernels see it.

    ``n_keep`` is the keep-row count that multiplies this set's log-sum-exp (SPEC 4);
    ``scale`` is this set's factor in the loss (1 / n_keep for "mean", times omega for L_real).
    """

    role: int
    logits: torch.Tensor
    keep_target: torch.Tensor | None
    forget_target: torch.Tensor | None
    lam: torch.Tensor | None
    perm: torch.Tensor | None
    n_keep: int
    tau: float
    scale: float
    with_grad: bool

    def __post_init__(self):
        check_dtype("logits", self.logits)
        self.n_rows, self.n_cols = self.logits.shape
        self.labels = (self.keep_target if self.keep_target is not None else self.forget_target).dtype == torch.int64
        z = self.logits
        self.grad = new_output(z.shape, z.dtype, z.device) if self.with_grad else z.new_empty(0)
        self.stats = None

    def tile_shape(self) -> tuple[int, int]:
        return max(triton.next_power_of_2(self.n_rows), 2), max(triton.next_power_of_2(self.n_cols), 2)

    def fits_tile(self) -> bool:
        rows, cols = self.tile_shape()
        return rows * cols <= TILE_ELEMENTS

    def new_stats(self) -> None:
        self.stats = new_output((N_STATS, self.n_rows), torch.float32, self.logits.device)

    def kernel_args(self) -> tuple:
        """The set as one tuple argument of the kernels (unpacked by ``_unpack``)."""
        z = self.logits
        kt = self.keep_target if self.keep_target is not None else self.forget_target
        ft = self.forget_target if self.forget_target is not None else kt
        perm = self.perm if self.perm is not None else kt  # an unused pointer without perm
        lam = self.lam if self.lam is not None else z
        stats = self.stats if self.stats is not None else z
        return (
            z, z.stride(0), z.stride(1), self.n_rows, self.n_cols,
            kt, kt.stride(0), kt.stride(1) if kt.dim() == 2 else 0, kt.shape[0],
            ft, ft.stride(0), ft.stride(1) if ft.dim() == 2 else 0,
            perm, perm.stride(0) if self.perm is not None else 0,
            lam, lam.stride(0) if (self.lam is not None and lam.dim() == 1) else 0,
            self.grad, self.grad.stride(0) if self.with_grad else 0,
            stats, self.n_keep, 1.0 / self.tau, self.scale,
        )


@triton.jit
def _unpack(rs):
    (z_ptr, stride_zr, stride_zc, n_rows, n_cols,
     kt_ptr, stride_ktr, stride_ktc, keep_pool,
     ft_ptr, stride_ftr, stride_ftc,
     perm_ptr, stride_perm, lam_ptr, stride_lam,
     grad_ptr, stride_gr, stats_ptr, n_keep, inv_tau, scale) = rs
    return (z_ptr, stride_zr, stride_zc, n_rows, n_cols, kt_ptr, stride_ktr, stride_ktc, keep_pool,
            ft_ptr, stride_ftr, stride_ftc, perm_ptr, stride_perm, lam_ptr, stride_lam,
            grad_ptr, stride_gr, stats_ptr, n_keep, inv_tau, scale)


@triton.jit
def _keep_row(perm_ptr, stride_perm, i, pool, mask, HAS_PERM: tl.constexpr):
    """Row of the keep target for logits row(s) i (through perm), and whether it is in range."""
    if HAS_PERM:
        r = tl.load(perm_ptr + i * stride_perm, mask=mask, other=0)
    else:
        r = i
    ok = (r >= 0) & (r < pool)
    return tl.where(ok, r, 0).to(tl.int64), ok


@triton.jit
def _weights(lam_ptr, stride_lam, i, mask, ROLE: tl.constexpr):
    """Keep weight kappa and forget weight mu of row(s) i."""
    if ROLE == MIX:
        lam = tl.load(lam_ptr + i * stride_lam, mask=mask, other=0.0).to(tl.float32)
        return 1.0 - lam, lam
    elif ROLE == KEEP:
        return tl.where(mask, 1.0, 0.0), tl.where(mask, 0.0, 0.0)
    else:
        return tl.where(mask, 0.0, 0.0), tl.where(mask, 1.0, 0.0)


@triton.jit
def _cosine_coefs(dot, pp, qq):
    """c = <p,q>/max(|p||q|, EPS) and dc/dp = A q - Bp p with <dc/dp, p> = Dp."""
    den = tl.sqrt(pp) * tl.sqrt(qq)
    clamped = den <= EPS
    A = 1.0 / tl.maximum(den, EPS)
    c = dot * A
    Bp = tl.where(clamped, 0.0, c / pp)
    Dp = tl.where(clamped, c, 0.0)
    return c, A, Bp, Dp


# --- small sets: one program, a set at a time, its rows in parallel ---------------------------------


@triton.jit
def _tile_set(rs, ROLE: tl.constexpr, HAS_PERM: tl.constexpr, LABELS: tl.constexpr, WRITE_GRAD: tl.constexpr,
              BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """One set as a BLOCK_R x BLOCK_C tile: writes its gradient and returns its share of the loss."""
    (z_ptr, stride_zr, stride_zc, n_rows, n_cols, kt_ptr, stride_ktr, stride_ktc, keep_pool,
     ft_ptr, stride_ftr, stride_ftc, perm_ptr, stride_perm, lam_ptr, stride_lam,
     grad_ptr, stride_gr, _stats, n_keep, inv_tau, scale) = _unpack(rs)
    HAS_KEEP: tl.constexpr = ROLE != FORGET
    HAS_FORGET: tl.constexpr = ROLE != KEEP
    rows = tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    row_ok = rows < n_rows
    tile = row_ok[:, None] & (cols < n_cols)[None, :]
    r64 = rows.to(tl.int64)
    c64 = cols.to(tl.int64)

    z = tl.load(z_ptr + r64[:, None] * stride_zr + c64[None, :] * stride_zc, mask=tile, other=float("-inf"))
    z = z.to(tl.float32)
    row_max = tl.where(row_ok, tl.max(z, 1), 0.0)  # padding rows stay finite
    e = tl.where(tile, tl.exp(z - row_max[:, None]), 0.0)  # a NaN logit makes its row NaN
    inv_s = tl.where(row_ok, 1.0 / tl.sum(e, 1), 0.0)
    p = e * inv_s[:, None]
    pp = tl.sum(p * p, 1)
    kappa, mu = _weights(lam_ptr, stride_lam, r64, row_ok, ROLE)

    loss = 0.0
    coef_p = tl.zeros([BLOCK_R], tl.float32)
    gp = tl.zeros([BLOCK_R], tl.float32)
    g = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)
    if HAS_KEEP:
        k_row, k_ok = _keep_row(perm_ptr, stride_perm, r64, keep_pool, row_ok, HAS_PERM)
        if LABELS:
            label_k = tl.load(kt_ptr + k_row * stride_ktr, mask=row_ok, other=0)
            onehot_k = cols[None, :] == label_k[:, None]
            dot_k = tl.sum(tl.where(onehot_k, p, 0.0), 1)
            k_ok = k_ok & (label_k >= 0) & (label_k < n_cols)
            qq_k = tl.where(row_ok, 1.0, 1.0)
        else:
            q_k = tl.load(kt_ptr + k_row[:, None] * stride_ktr + c64[None, :] * stride_ktc, mask=tile, other=0.0)
            q_k = q_k.to(tl.float32)
            dot_k = tl.sum(p * q_k, 1)
            qq_k = tl.sum(q_k * q_k, 1)
        dot_k = tl.where(k_ok, dot_k, float("nan"))
        c_k, A_k, Bp_k, Dp_k = _cosine_coefs(dot_k, pp, qq_k)
        loss += tl.sum(tl.where(row_ok, kappa * (1.0 - c_k), 0.0), 0) * scale
        alpha = -kappa * scale  # dC/dc_keep
        coef_p -= alpha * Bp_k
        gp += alpha * Dp_k
        if LABELS:
            g += tl.where(onehot_k, (alpha * A_k)[:, None], 0.0)
        else:
            g += (alpha * A_k)[:, None] * q_k
    if HAS_FORGET:
        if LABELS:
            label_f = tl.load(ft_ptr + r64 * stride_ftr, mask=row_ok, other=0)
            onehot_f = cols[None, :] == label_f[:, None]
            dot_f = tl.sum(tl.where(onehot_f, p, 0.0), 1)
            dot_f = tl.where((label_f >= 0) & (label_f < n_cols), dot_f, float("nan"))
            qq_f = tl.where(row_ok, 1.0, 1.0)
        else:
            q_f = tl.load(ft_ptr + r64[:, None] * stride_ftr + c64[None, :] * stride_ftc, mask=tile, other=0.0)
            q_f = q_f.to(tl.float32)
            dot_f = tl.sum(p * q_f, 1)
            qq_f = tl.sum(q_f * q_f, 1)
        c_f, A_f, Bp_f, Dp_f = _cosine_coefs(dot_f, pp, qq_f)
        x = tl.where(row_ok, mu * (1.0 - c_f) * inv_tau, float("-inf"))
        x_max = tl.max(x, 0)
        lse = x_max + tl.log(tl.sum(tl.exp(x - x_max), 0))  # NaN in x reaches the sum
        loss -= n_keep * lse * scale
        beta = n_keep * inv_tau * tl.exp(x - lse) * mu * scale  # dC/dc_forget
        coef_p -= beta * Bp_f
        gp += beta * Dp_f
        if LABELS:
            g += tl.where(onehot_f, (beta * A_f)[:, None], 0.0)
        else:
            g += (beta * A_f)[:, None] * q_f
    if WRITE_GRAD:
        g = p * (g + coef_p[:, None] * p - gp[:, None])
        tl.store(grad_ptr + r64[:, None] * stride_gr + c64[None, :], g.to(grad_ptr.dtype.element_ty), mask=tile)
    return loss


@triton.jit
def _tile_kernel(
    mix, retain, forget, loss_ptr,
    HAS_MIX: tl.constexpr, HAS_REAL: tl.constexpr, HAS_PERM: tl.constexpr, LABELS: tl.constexpr,
    WRITE_GRAD: tl.constexpr, ROWS_MIX: tl.constexpr, ROWS_RETAIN: tl.constexpr, ROWS_FORGET: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Every set of a small call in one program: the loss and all gradients in one launch."""
    loss = 0.0
    if HAS_MIX:
        loss += _tile_set(mix, MIX, HAS_PERM, LABELS, WRITE_GRAD, ROWS_MIX, BLOCK_C)
    if HAS_REAL:
        loss += _tile_set(retain, KEEP, False, LABELS, WRITE_GRAD, ROWS_RETAIN, BLOCK_C)
        loss += _tile_set(forget, FORGET, False, LABELS, WRITE_GRAD, ROWS_FORGET, BLOCK_C)
    tl.store(loss_ptr, loss)


# --- larger sets: three launches over rows, each LSE set re-read while it is still in L2 -----------


@triton.jit
def _label_prob(z_row, stride_zc, label, n_cols, row_max, inv_s):
    """p[label] from the softmax statistics; NaN for a label outside [0, n_cols)."""
    ok = (label >= 0) & (label < n_cols)
    z = tl.load(z_row + tl.where(ok, label, 0) * stride_zc).to(tl.float32)
    return tl.where(ok, tl.exp(z - row_max) * inv_s, float("nan"))


@triton.jit
def _row_terms(i, rs, ROLE: tl.constexpr, DO_KEEP: tl.constexpr, DO_FORGET: tl.constexpr, HAS_PERM: tl.constexpr,
               LABELS: tl.constexpr, BLOCK: tl.constexpr, EVICT: tl.constexpr):
    """One online pass over logits row i (int64) of a set and the targets of the terms asked for.

    The forget term goes to the stats (its gradient needs the set's log-sum-exp, a later
    launch); the keep term's value goes to S_KEEP and its gradient coefficients are returned,
    for the caller to write the row's gradient at once. ``EVICT`` is the L2 policy of the
    loads: "evict_last" for rows a later launch reads again.
    Returns (row_max, inv_s, coef_p, gp, coef_q_k, k_row): the keep part of
    dC/dz = p * (coef_p p + coef_q_k q_k - gp) (zeros without DO_KEEP).
    """
    (z_ptr, stride_zr, stride_zc, n_rows, n_cols, kt_ptr, stride_ktr, stride_ktc, keep_pool,
     ft_ptr, stride_ftr, stride_ftc, perm_ptr, stride_perm, lam_ptr, stride_lam,
     _grad, _stride_gr, stats_ptr, _n_keep, inv_tau, scale) = _unpack(rs)
    z_row = z_ptr + i * stride_zr
    k_row, k_ok = _keep_row(perm_ptr, stride_perm, i, keep_pool, True, HAS_PERM)
    cols = tl.arange(0, BLOCK)

    # one online pass: softmax stats, |p|^2 and <p, q> rescaled as the max moves
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK], tl.float32)
    s2 = tl.zeros([BLOCK], tl.float32)
    dk = tl.zeros([BLOCK], tl.float32)
    df = tl.zeros([BLOCK], tl.float32)
    qk2 = tl.zeros([BLOCK], tl.float32)
    qf2 = tl.zeros([BLOCK], tl.float32)
    poison = tl.zeros([BLOCK], tl.float32)  # NaN once a NaN was read: max() may skip NaN
    for start in range(0, n_cols, BLOCK):
        c = start + cols
        cmask = c < n_cols
        c64 = c.to(tl.int64)
        z = tl.load(z_row + c64 * stride_zc, mask=cmask, other=float("-inf"), eviction_policy=EVICT)
        z = z.to(tl.float32)
        m_new = tl.maximum(m, z)
        alive = m_new != float("-inf")
        rescale = tl.where(alive, tl.exp(m - m_new), 1.0)
        e = tl.where(alive, tl.exp(z - m_new), 0.0)
        s = s * rescale + e
        s2 = s2 * rescale * rescale + e * e
        if not LABELS:
            if DO_KEEP:
                qk = tl.load(kt_ptr + k_row * stride_ktr + c64 * stride_ktc, mask=cmask, other=0.0,
                             eviction_policy=EVICT).to(tl.float32)
                dk = dk * rescale + e * qk
                qk2 += qk * qk
            if DO_FORGET:
                qf = tl.load(ft_ptr + i * stride_ftr + c64 * stride_ftc, mask=cmask, other=0.0,
                             eviction_policy=EVICT).to(tl.float32)
                df = df * rescale + e * qf
                qf2 += qf * qf
        m = m_new
        poison += tl.where(z != z, z, 0.0)  # noqa: PLR0124 (true for NaN only)

    row_max = tl.max(m, 0)
    lane = tl.where(m != float("-inf"), tl.exp(m - row_max), 0.0)
    inv_s = 1.0 / (tl.sum(s * lane, 0) + tl.sum(poison, 0))
    pp = tl.sum(s2 * lane * lane, 0) * inv_s * inv_s
    kappa, mu = _weights(lam_ptr, stride_lam, i, True, ROLE)

    row = stats_ptr + i
    coef_p, gp, coef_q_k = 0.0, 0.0, 0.0
    if DO_KEEP:
        if LABELS:
            dot_k = _label_prob(z_row, stride_zc, tl.load(kt_ptr + k_row * stride_ktr), n_cols, row_max, inv_s)
            qq_k = 1.0
        else:
            dot_k = tl.sum(dk * lane, 0) * inv_s
            qq_k = tl.sum(qk2, 0)
        dot_k = tl.where(k_ok, dot_k, float("nan"))
        c_k, A_k, Bp_k, Dp_k = _cosine_coefs(dot_k, pp, qq_k)
        tl.store(row + S_KEEP * n_rows, kappa * (1.0 - c_k))
        alpha = -kappa * scale  # dC/dc_keep
        coef_q_k = alpha * A_k
        coef_p = -alpha * Bp_k
        gp = alpha * Dp_k
    if DO_FORGET:
        if LABELS:
            dot_f = _label_prob(z_row, stride_zc, tl.load(ft_ptr + i * stride_ftr), n_cols, row_max, inv_s)
            qq_f = 1.0
        else:
            dot_f = tl.sum(df * lane, 0) * inv_s
            qq_f = tl.sum(qf2, 0)
        c_f, A_f, Bp_f, Dp_f = _cosine_coefs(dot_f, pp, qq_f)
        tl.store(row + S_M * n_rows, row_max)
        tl.store(row + S_INV_S * n_rows, inv_s)
        tl.store(row + S_A_F * n_rows, A_f)
        tl.store(row + S_BP_F * n_rows, Bp_f)
        tl.store(row + S_DP_F * n_rows, Dp_f)
        tl.store(row + S_X * n_rows, mu * (1.0 - c_f) * inv_tau)
        tl.store(row + S_FW * n_rows, mu)
    return row_max, inv_s, coef_p, gp, coef_q_k, k_row


@triton.jit
def _forget_coefs(i, rs, lse):
    """The forget part of row i's gradient, dC/dz = p * (coef_p p + coef_q_f q_f - gp), from its
    stats and the set's log-sum-exp; also the row's softmax max and 1 / sum."""
    (_z, _szr, _szc, n_rows, _n_cols, _kt, _sktr, _sktc, _pool, _ft, _sftr, _sftc, _perm, _sperm, _lam, _slam,
     _grad, _sgr, stats_ptr, n_keep, inv_tau, scale) = _unpack(rs)
    row = stats_ptr + i
    w = tl.exp(tl.load(row + S_X * n_rows) - lse)
    beta = n_keep * inv_tau * w * tl.load(row + S_FW * n_rows) * scale  # dC/dc_forget
    coef_q_f = beta * tl.load(row + S_A_F * n_rows)
    coef_p = -beta * tl.load(row + S_BP_F * n_rows)
    gp = beta * tl.load(row + S_DP_F * n_rows)
    return tl.load(row + S_M * n_rows), tl.load(row + S_INV_S * n_rows), coef_p, gp, coef_q_f


@triton.jit
def _write_grad(i, rs, row_max, inv_s, coef_p, gp, coef_q_k, k_row, coef_q_f, HAS_KEEP: tl.constexpr,
                HAS_FORGET: tl.constexpr, LABELS: tl.constexpr, BLOCK: tl.constexpr, EVICT_QF: tl.constexpr):
    """dC/dz of row i = p * (coef_p p + coef_q_k q_k + coef_q_f q_f - gp). The logits and q_k are
    read for the last time here; ``EVICT_QF`` keeps q_f in L2 when a later launch reads it."""
    (z_ptr, stride_zr, stride_zc, _n_rows, n_cols, kt_ptr, stride_ktr, stride_ktc, _pool,
     ft_ptr, stride_ftr, stride_ftc, _perm, _sperm, _lam, _slam,
     grad_ptr, stride_gr, _stats, _n_keep, _inv_tau, _scale) = _unpack(rs)
    cols = tl.arange(0, BLOCK)
    if HAS_KEEP:
        if LABELS:
            label_k = tl.load(kt_ptr + k_row * stride_ktr)
    if HAS_FORGET:
        if LABELS:
            label_f = tl.load(ft_ptr + i * stride_ftr)
    z_row = z_ptr + i * stride_zr
    g_row = grad_ptr + i * stride_gr
    for start in range(0, n_cols, BLOCK):
        c = start + cols
        cmask = c < n_cols
        c64 = c.to(tl.int64)
        z = tl.load(z_row + c64 * stride_zc, mask=cmask, other=0.0, eviction_policy="evict_first").to(tl.float32)
        p = tl.exp(z - row_max) * inv_s
        g = coef_p * p - gp
        if HAS_KEEP:
            if LABELS:
                g += tl.where(c == label_k, coef_q_k, 0.0)
            else:
                qk = tl.load(kt_ptr + k_row * stride_ktr + c64 * stride_ktc, mask=cmask, other=0.0,
                             eviction_policy="evict_first")
                g += coef_q_k * qk.to(tl.float32)
        if HAS_FORGET:
            if LABELS:
                g += tl.where(c == label_f, coef_q_f, 0.0)
            else:
                qf = tl.load(ft_ptr + i * stride_ftr + c64 * stride_ftc, mask=cmask, other=0.0,
                             eviction_policy=EVICT_QF)
                g += coef_q_f * qf.to(tl.float32)
        tl.store(g_row + c, (p * g).to(grad_ptr.dtype.element_ty), mask=cmask, eviction_policy="evict_first")


@triton.jit
def _set_lse(rs, BLOCK_R: tl.constexpr):
    """log sum exp of the set's X slot (forget terms / tau) over its rows."""
    stats_ptr = _unpack(rs)[18]
    n_rows = _unpack(rs)[3]
    x_max, total = softmax_stats(stats_ptr + S_X * n_rows, 1, n_rows, 1.0, BLOCK_R)
    return x_max + tl.log(total)


@triton.jit
def _set_keep_sum(rs, BLOCK_R: tl.constexpr):
    stats_ptr = _unpack(rs)[18]
    n_rows = _unpack(rs)[3]
    acc = tl.zeros([BLOCK_R], tl.float32)
    for start in range(0, n_rows, BLOCK_R):
        r = start + tl.arange(0, BLOCK_R)
        acc += tl.load(stats_ptr + S_KEEP * n_rows + r, mask=r < n_rows, other=0.0)
    return tl.sum(acc, 0)


@triton.jit
def _mix_terms_kernel(mix, LABELS: tl.constexpr, BLOCK: tl.constexpr):
    """Launch 1 of 3, program i: the forget term of mix row i (logits and q_f kept in L2 for launch 2)."""
    i = tl.program_id(0).to(tl.int64)
    _row_terms(i, mix, MIX, False, True, False, LABELS, BLOCK, "evict_last")


@triton.jit
def _rows_kernel(
    mix, retain, forget, n_max,
    HAS_MIX: tl.constexpr, HAS_REAL: tl.constexpr, HAS_PERM: tl.constexpr, LABELS: tl.constexpr,
    WRITE_GRAD: tl.constexpr, BLOCK: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """Launch 2 of 3, a persistent grid over i = n_max - 1 down to 0 (the mix rows launch 1 read
    last come first): mix row i's keep term and whole gradient; forget row i's term (its logits
    and q_f kept in L2 for launch 3); retain row i's term and gradient (no log-sum-exp in it)."""
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    if HAS_MIX:
        if WRITE_GRAD:
            lse_mix = _set_lse(mix, BLOCK_R)
    for k in range(pid, n_max, n_prog):
        i = tl.cast(n_max - 1 - k, tl.int64)
        if HAS_MIX:
            if i < _unpack(mix)[3]:
                row_max, inv_s, coef_p, gp, coef_q_k, k_row = _row_terms(
                    i, mix, MIX, True, False, HAS_PERM, LABELS, BLOCK, "")
                if WRITE_GRAD:
                    _m, _s, f_p, f_gp, coef_q_f = _forget_coefs(i, mix, lse_mix)
                    _write_grad(i, mix, row_max, inv_s, coef_p + f_p, gp + f_gp, coef_q_k, k_row, coef_q_f,
                                True, True, LABELS, BLOCK, "evict_last")
        if HAS_REAL:
            if i < _unpack(forget)[3]:
                _row_terms(i, forget, FORGET, False, True, False, LABELS, BLOCK, "evict_last")
            if i < _unpack(retain)[3]:
                row_max, inv_s, coef_p, gp, coef_q_k, k_row = _row_terms(
                    i, retain, KEEP, True, False, False, LABELS, BLOCK, "evict_first")
                if WRITE_GRAD:
                    _write_grad(i, retain, row_max, inv_s, coef_p, gp, coef_q_k, k_row, 0.0,
                                True, False, LABELS, BLOCK, "")


@triton.jit
def _grad_kernel(
    mix, retain, forget, loss_ptr,
    HAS_MIX: tl.constexpr, HAS_REAL: tl.constexpr, LABELS: tl.constexpr,
    WRITE_GRAD: tl.constexpr, BLOCK: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """Launch 3 of 3, a persistent grid: the loss (program 0) and the forget rows' gradients,
    i = 0 upwards (the rows launch 2 read last come first)."""
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    if HAS_REAL:
        lse_real = _set_lse(forget, BLOCK_R)
        if WRITE_GRAD:
            for k in range(pid, _unpack(forget)[3], n_prog):
                i = tl.cast(k, tl.int64)
                row_max, inv_s, coef_p, gp, coef_q_f = _forget_coefs(i, forget, lse_real)
                _write_grad(i, forget, row_max, inv_s, coef_p, gp, 0.0, i, coef_q_f, False, True, LABELS, BLOCK,
                            "evict_first")
    if pid == 0:
        loss = 0.0
        if HAS_MIX:
            loss += (_set_keep_sum(mix, BLOCK_R) - _unpack(mix)[19] * _set_lse(mix, BLOCK_R)) * _unpack(mix)[21]
        if HAS_REAL:
            loss += _set_keep_sum(retain, BLOCK_R) * _unpack(retain)[21]
            loss -= _unpack(forget)[19] * lse_real * _unpack(forget)[21]
        tl.store(loss_ptr, loss)


# --- launchers ---------------------------------------------------------------------------------------


def _launch(mix: RowSet | None, retain: RowSet | None, forget: RowSet | None, with_grad: bool) -> torch.Tensor:
    """Runs the sets present (mix, or retain and forget, or all three); returns the 0-d float32 loss."""
    sets = [s for s in (mix, retain, forget) if s is not None]
    first = sets[0]
    loss = new_output((), torch.float32, first.logits.device)
    flags = {
        "HAS_MIX": mix is not None, "HAS_REAL": retain is not None,
        "HAS_PERM": mix is not None and mix.perm is not None, "LABELS": first.labels,
    }
    if all(s.fits_tile() for s in sets):
        args = [(s or first).kernel_args() for s in (mix, retain, forget)]
        rows = [(s or first).tile_shape()[0] for s in (mix, retain, forget)]
        block_c = first.tile_shape()[1]
        _tile_kernel[(1,)](
            *args, loss, WRITE_GRAD=with_grad, ROWS_MIX=rows[0], ROWS_RETAIN=rows[1], ROWS_FORGET=rows[2],
            BLOCK_C=block_c, num_warps=4, **flags,
        )
        return loss
    if mix is not None and retain is not None and mix.n_rows != forget.n_rows:
        raise ValueError(f"loss_forward: {mix.n_rows} mix rows but {forget.n_rows} forget rows; they pair row by row")
    for s in sets:
        s.new_stats()
    args = [(s or first).kernel_args() for s in (mix, retain, forget)]
    block = row_block(first.n_cols, MAX_BLOCK)
    warps = warps_for(block)
    device = first.logits.device
    if mix is not None:
        _mix_terms_kernel[(mix.n_rows,)](args[0], LABELS=first.labels, BLOCK=block, num_warps=warps)
    n_max = max(s.n_rows for s in sets)
    _rows_kernel[(persistent_programs(device, n_max),)](
        *args, n_max, WRITE_GRAD=with_grad, BLOCK=block, BLOCK_R=BLOCK_ROWS, num_warps=warps, **flags,
    )
    n_prog = persistent_programs(device, forget.n_rows) if (with_grad and forget is not None) else 1
    _grad_kernel[(n_prog,)](
        *args, loss, HAS_MIX=flags["HAS_MIX"], HAS_REAL=flags["HAS_REAL"], LABELS=first.labels,
        WRITE_GRAD=with_grad, BLOCK=block, BLOCK_R=BLOCK_ROWS, num_warps=warps,
    )
    return loss


def _mix_set(logits, forget_target, retain_target, lam, perm, tau, reduction, with_grad) -> RowSet:
    n = logits.shape[0]
    return RowSet(MIX, logits, retain_target, forget_target, lam, perm, n, tau,
                  1.0 / n if reduction == "mean" else 1.0, with_grad)


def _real_sets(retain_logits, forget_logits, retain_target, forget_target, tau, reduction, weight, with_grad):
    n_keep = retain_logits.shape[0]
    scale = weight / n_keep if reduction == "mean" else weight
    retain = RowSet(KEEP, retain_logits, retain_target, None, None, None, n_keep, tau, scale, with_grad)
    forget = RowSet(FORGET, forget_logits, None, forget_target, None, None, n_keep, tau, scale, with_grad)
    return retain, forget


def contrastive_forward(logits, forget_target, retain_target, lam, perm, tau, reduction, with_grad):
    mix = _mix_set(logits, forget_target, retain_target, lam, perm, tau, reduction, with_grad)
    return _launch(mix, None, None, with_grad), mix.grad


def real_forward(retain_logits, forget_logits, retain_target, forget_target, tau, reduction, with_grad):
    retain, forget = _real_sets(retain_logits, forget_logits, retain_target, forget_target, tau, reduction, 1.0,
                                with_grad)
    return _launch(None, retain, forget, with_grad), retain.grad, forget.grad


def loss_forward(mix_logits, forget_logits, retain_logits, forget_target, retain_target, lam, perm,
                 tau_mix, tau_real, omega, reduction, with_grad):
    """L_mix + omega * L_real (SPEC 4, 6) in one call: the mix, retain and forget rows together.
    With ``omega == 0`` the real rows are not read and their gradients are empty, as the
    backends' interface says."""
    mix = _mix_set(mix_logits, forget_target, retain_target, lam, perm, tau_mix, reduction, with_grad)
    retain = forget = None
    if omega != 0:
        if retain_logits is None or forget_logits is None:
            raise ValueError("loss_forward: omega != 0 needs retain_logits and forget_logits")
        retain, forget = _real_sets(retain_logits, forget_logits, retain_target, forget_target, tau_real,
                                    reduction, float(omega), with_grad)
    loss = _launch(mix, retain, forget, with_grad)
    empty = mix_logits.new_empty(0)
    return (loss, mix.grad, forget.grad if forget is not None else empty,
            retain.grad if retain is not None else mix_logits.new_empty(0))
