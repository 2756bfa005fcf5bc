"""The contrastive family C_tau (SPEC 4): loss and logits gradient in one forward.

A small batch (up to ``FUSED_MAX_ELEMENTS`` logits, the trainer's case) runs in
one launch: ``_fused_kernel`` is a single program that does both steps below in
turn. A larger batch takes two kernels per set of rows, since a single kernel
would need a grid-wide barrier (a hang risk wherever programs are not co-resident):
1. ``_row_terms_kernel`` (a program per row) reads the logits and targets once,
   with an online softmax, and writes ``STATS`` floats for it: the softmax
   statistics, the coefficients of dc/dp (see ``fastmix.backends.torch_backend.cosine_parts``)
   and the row's keep and forget terms. The buffer is (STATS, rows), so that
   each kind of term lies contiguous for the batch-wide reductions.
2. ``_grad_kernel`` (a persistent grid) computes the batch-wide log-sum-exp of
   the forget terms in every program, from the small stats buffer, and writes
   the gradient rows (and, in program 0, the loss). No value goes to the host.

The backward of the op only scales the saved gradient by grad_output.
A label or ``perm`` index out of range is never dereferenced: the row's terms
become NaN, and so does the loss.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_dtype, new_output, persistent_programs, row_block, warps_for
from .sharpen import softmax_stats

MAX_BLOCK = 2048
BLOCK_ROWS = 1024
# up to this many logits (rows x classes) a loss runs in one launch of one program
FUSED_MAX_ELEMENTS = 1 << 16
EPS = 1e-8

# per-row stats, in this order: row max, 1 / sum exp, A_keep, Bp_keep, Dp_keep,
# A_forget, Bp_forget, Dp_forget, keep weight kappa, forget weight mu,
# keep term, forget term
STATS = 12

# which terms a row set contributes (SPEC 4): mixed rows both, real retain rows
# only keep terms, real forget rows only forget terms
MIX, KEEP, FORGET = 0, 1, 2


@triton.jit
def _target_row(t_ptr, perm_ptr, i, pool, HAS_PERM: tl.constexpr):
    """Row of a target tensor for logits row i (through perm), and whether it is in range."""
    if HAS_PERM:
        r = tl.load(perm_ptr + i)
    else:
        r = i
    ok = (r >= 0) & (r < pool)
    return tl.where(ok, r, 0).to(tl.int64), ok


@triton.jit
def _cosine_coefs(dot, pp, qq):
    """c = <p,q>/max(|p||q|, EPS) and dc/dp = A q - Bp p with <dc/dp, p> = Dp."""
    den = tl.sqrt(pp) * tl.sqrt(qq)
    clamped = den <= 1e-8
    A = 1.0 / tl.maximum(den, 1e-8)
    c = dot * A
    Bp = tl.where(clamped, 0.0, c / pp)
    Dp = tl.where(clamped, c, 0.0)
    return c, A, Bp, Dp


@triton.jit
def _label_prob(z_row, stride_zc, label, n_cols, row_max, inv_s):
    """p[label] from the softmax statistics; NaN for a label outside [0, n_cols)."""
    ok = (label >= 0) & (label < n_cols)
    z = tl.load(z_row + tl.where(ok, label, 0) * stride_zc).to(tl.float32)
    return tl.where(ok, tl.exp(z - row_max) * inv_s, float("nan"))


@triton.jit
def _row_terms(
    i,
    z_ptr, stride_zr, stride_zc,
    kt_ptr, stride_ktr, stride_ktc, keep_pool,
    ft_ptr, stride_ftr, stride_ftc,
    perm_ptr, lam_ptr, stride_lam, stats_ptr, n_rows, n_cols,
    MODE: tl.constexpr, HAS_KEEP: tl.constexpr, HAS_FORGET: tl.constexpr,
    LABELS: tl.constexpr, HAS_PERM: tl.constexpr, BLOCK: tl.constexpr,
):
    """Writes the STATS of logits row i (int64)."""
    z_row = z_ptr + i * stride_zr
    k_row, k_ok = _target_row(kt_ptr, perm_ptr, i, keep_pool, HAS_PERM)
    cols = tl.arange(0, BLOCK)

    # one online pass: softmax stats, |p|^2 and <p, q> rescaled as the max moves
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK], tl.float32)
    s2 = tl.zeros([BLOCK], tl.float32)
    dk = tl.zeros([BLOCK], tl.float32)
    df = tl.zeros([BLOCK], tl.float32)
    qk2 = tl.zeros([BLOCK], tl.float32)
    qf2 = tl.zeros([BLOCK], tl.float32)
    poison = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_cols, BLOCK):
        c = start + cols
        cmask = c < n_cols
        c64 = c.to(tl.int64)
        z = tl.load(z_row + c64 * stride_zc, mask=cmask, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, z)
        alive = m_new != float("-inf")
        rescale = tl.where(alive, tl.exp(m - m_new), 1.0)
        e = tl.where(alive, tl.exp(z - m_new), 0.0)
        s = s * rescale + e
        s2 = s2 * rescale * rescale + e * e
        if not LABELS:
            if HAS_KEEP:
                qk = tl.load(kt_ptr + k_row * stride_ktr + c64 * stride_ktc, mask=cmask, other=0.0).to(tl.float32)
                dk = dk * rescale + e * qk
                qk2 += qk * qk
            if HAS_FORGET:
                qf = tl.load(ft_ptr + i * stride_ftr + c64 * stride_ftc, mask=cmask, other=0.0).to(tl.float32)
                df = df * rescale + e * qf
                qf2 += qf * qf
        m = m_new
        poison += tl.where(z != z, z, 0.0)

    row_max = tl.max(m, 0)
    lane = tl.where(m != float("-inf"), tl.exp(m - row_max), 0.0)
    total = tl.sum(s * lane, 0) + tl.sum(poison, 0)  # a NaN logit makes the row NaN
    inv_s = 1.0 / total
    pp = tl.sum(s2 * lane * lane, 0) * inv_s * inv_s

    row = stats_ptr + i
    keep_term = 0.0
    forget_term = 0.0
    kappa = 0.0
    mu = 0.0
    if MODE == 0:
        lam = tl.load(lam_ptr + i * stride_lam).to(tl.float32)
        kappa = 1.0 - lam
        mu = lam
    elif MODE == 1:
        kappa = 1.0
    else:
        mu = 1.0
    if HAS_KEEP:
        if LABELS:
            label = tl.load(kt_ptr + k_row * stride_ktr)
            dot_k = _label_prob(z_row, stride_zc, label, n_cols, row_max, inv_s)
            qq_k = pp * 0.0 + 1.0  # |onehot| = 1, kept a tensor for tl.sqrt
        else:
            dot_k = tl.sum(dk * lane, 0) * inv_s
            qq_k = tl.sum(qk2, 0)
        dot_k = tl.where(k_ok, dot_k, float("nan"))
        c_k, A_k, Bp_k, Dp_k = _cosine_coefs(dot_k, pp, qq_k)
        keep_term = kappa * (1.0 - c_k)
        tl.store(row + 2 * n_rows, A_k)
        tl.store(row + 3 * n_rows, Bp_k)
        tl.store(row + 4 * n_rows, Dp_k)
    else:
        tl.store(row + 2 * n_rows, 0.0)
        tl.store(row + 3 * n_rows, 0.0)
        tl.store(row + 4 * n_rows, 0.0)
    if HAS_FORGET:
        if LABELS:
            label = tl.load(ft_ptr + i * stride_ftr)
            dot_f = _label_prob(z_row, stride_zc, label, n_cols, row_max, inv_s)
            qq_f = pp * 0.0 + 1.0
        else:
            dot_f = tl.sum(df * lane, 0) * inv_s
            qq_f = tl.sum(qf2, 0)
        c_f, A_f, Bp_f, Dp_f = _cosine_coefs(dot_f, pp, qq_f)
        forget_term = mu * (1.0 - c_f)
        tl.store(row + 5 * n_rows, A_f)
        tl.store(row + 6 * n_rows, Bp_f)
        tl.store(row + 7 * n_rows, Dp_f)
    else:
        tl.store(row + 5 * n_rows, 0.0)
        tl.store(row + 6 * n_rows, 0.0)
        tl.store(row + 7 * n_rows, 0.0)
    tl.store(row + 0 * n_rows, row_max)
    tl.store(row + 1 * n_rows, inv_s)
    tl.store(row + 8 * n_rows, kappa)
    tl.store(row + 9 * n_rows, mu)
    tl.store(row + 10 * n_rows, keep_term)
    tl.store(row + 11 * n_rows, forget_term)


@triton.jit
def _row_terms_kernel(
    z_ptr, stride_zr, stride_zc,
    kt_ptr, stride_ktr, stride_ktc, keep_pool,
    ft_ptr, stride_ftr, stride_ftc,
    perm_ptr, lam_ptr, stride_lam, stats_ptr, n_rows, n_cols,
    MODE: tl.constexpr, HAS_KEEP: tl.constexpr, HAS_FORGET: tl.constexpr,
    LABELS: tl.constexpr, HAS_PERM: tl.constexpr, BLOCK: tl.constexpr,
):
    _row_terms(
        tl.program_id(0).to(tl.int64), z_ptr, stride_zr, stride_zc, kt_ptr, stride_ktr, stride_ktc, keep_pool,
        ft_ptr, stride_ftr, stride_ftc, perm_ptr, lam_ptr, stride_lam, stats_ptr, n_rows, n_cols,
        MODE, HAS_KEEP, HAS_FORGET, LABELS, HAS_PERM, BLOCK,
    )


@triton.jit
def _grad_rows(
    pid, n_prog,
    z_ptr, stride_zr, stride_zc,
    kt_ptr, stride_ktr, stride_ktc, keep_pool,
    ft_ptr, stride_ftr, stride_ftc,
    perm_ptr, stats_ptr, grad_ptr, stride_gr,
    keep_stats_ptr, n_keep, forget_stats_ptr, n_forget, loss_ptr,
    n_rows, n_cols, inv_tau, scale,
    MODE: tl.constexpr, HAS_KEEP: tl.constexpr, HAS_FORGET: tl.constexpr,
    LABELS: tl.constexpr, HAS_PERM: tl.constexpr,
    WRITE_GRAD: tl.constexpr, WRITE_LOSS: tl.constexpr, BLOCK: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """Program pid of n_prog: the loss (program 0) and the gradient rows pid, pid + n_prog, ..."""
    # the batch couples through log sum exp(b / tau) only: every program recomputes it
    lse_max, lse_sum = softmax_stats(forget_stats_ptr + 11 * n_forget, 1, n_forget, inv_tau, BLOCK_R)
    lse = lse_max + tl.log(lse_sum)
    if WRITE_LOSS:
        if pid == 0:
            acc = tl.zeros([BLOCK_R], tl.float32)
            for start in range(0, n_keep, BLOCK_R):
                r = start + tl.arange(0, BLOCK_R)
                acc += tl.load(keep_stats_ptr + 10 * n_keep + r, mask=r < n_keep, other=0.0)
            loss = (tl.sum(acc, 0) - n_keep * lse) * scale
            tl.store(loss_ptr, loss)
    if WRITE_GRAD:
        cols = tl.arange(0, BLOCK)
        for i32 in range(pid, n_rows, n_prog):
            i = tl.cast(i32, tl.int64)
            row = stats_ptr + i
            row_max = tl.load(row + 0 * n_rows)
            inv_s = tl.load(row + 1 * n_rows)
            alpha = -tl.load(row + 8 * n_rows) * scale  # dC/dc_keep
            coef_q_k = alpha * tl.load(row + 2 * n_rows)
            coef_p = -alpha * tl.load(row + 3 * n_rows)
            gp = alpha * tl.load(row + 4 * n_rows)
            coef_q_f = 0.0
            if HAS_FORGET:
                w = tl.exp(tl.load(row + 11 * n_rows) * inv_tau - lse)
                beta = n_keep * inv_tau * w * tl.load(row + 9 * n_rows) * scale  # dC/dc_forget
                coef_q_f = beta * tl.load(row + 5 * n_rows)
                coef_p -= beta * tl.load(row + 6 * n_rows)
                gp += beta * tl.load(row + 7 * n_rows)
            k_row, k_ok = _target_row(kt_ptr, perm_ptr, i, keep_pool, HAS_PERM)
            if LABELS:
                label_k = -1
                label_f = -1
                if HAS_KEEP:
                    label_k = tl.load(kt_ptr + k_row * stride_ktr)
                if HAS_FORGET:
                    label_f = tl.load(ft_ptr + i * stride_ftr)
            z_row = z_ptr + i * stride_zr
            g_row = grad_ptr + i * stride_gr
            for start in range(0, n_cols, BLOCK):
                c = start + cols
                cmask = c < n_cols
                c64 = c.to(tl.int64)
                z = tl.load(z_row + c64 * stride_zc, mask=cmask, other=0.0).to(tl.float32)
                p = tl.exp(z - row_max) * inv_s
                g = coef_p * p - gp
                if LABELS:
                    if HAS_KEEP:
                        g += tl.where(c == label_k, coef_q_k, 0.0)
                    if HAS_FORGET:
                        g += tl.where(c == label_f, coef_q_f, 0.0)
                else:
                    if HAS_KEEP:
                        qk = tl.load(kt_ptr + k_row * stride_ktr + c64 * stride_ktc, mask=cmask, other=0.0)
                        g += coef_q_k * qk.to(tl.float32)
                    if HAS_FORGET:
                        qf = tl.load(ft_ptr + i * stride_ftr + c64 * stride_ftc, mask=cmask, other=0.0)
                        g += coef_q_f * qf.to(tl.float32)
                tl.store(g_row + c, (p * g).to(grad_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _grad_kernel(
    z_ptr, stride_zr, stride_zc,
    kt_ptr, stride_ktr, stride_ktc, keep_pool,
    ft_ptr, stride_ftr, stride_ftc,
    perm_ptr, stats_ptr, grad_ptr, stride_gr,
    keep_stats_ptr, n_keep, forget_stats_ptr, n_forget, loss_ptr,
    n_rows, n_cols, inv_tau, scale,
    MODE: tl.constexpr, HAS_KEEP: tl.constexpr, HAS_FORGET: tl.constexpr,
    LABELS: tl.constexpr, HAS_PERM: tl.constexpr,
    WRITE_GRAD: tl.constexpr, WRITE_LOSS: tl.constexpr, BLOCK: tl.constexpr, BLOCK_R: tl.constexpr,
):
    _grad_rows(
        tl.program_id(0), tl.num_programs(0), z_ptr, stride_zr, stride_zc, kt_ptr, stride_ktr, stride_ktc, keep_pool,
        ft_ptr, stride_ftr, stride_ftc, perm_ptr, stats_ptr, grad_ptr, stride_gr,
        keep_stats_ptr, n_keep, forget_stats_ptr, n_forget, loss_ptr, n_rows, n_cols, inv_tau, scale,
        MODE, HAS_KEEP, HAS_FORGET, LABELS, HAS_PERM, WRITE_GRAD, WRITE_LOSS, BLOCK, BLOCK_R,
    )


@triton.jit
def _fused_kernel(
    z0, sz0r, sz0c, kt0, skt0r, skt0c, kpool0, ft0, sft0r, sft0c, perm0, lam0, slam0, stats0, grad0, sg0r, n0,
    z1, sz1r, sz1c, kt1, skt1r, skt1c, kpool1, ft1, sft1r, sft1c, perm1, lam1, slam1, stats1, grad1, sg1r, n1,
    keep_stats_ptr, n_keep, forget_stats_ptr, n_forget, loss_ptr, n_cols, inv_tau, scale,
    MODE0: tl.constexpr, HAS_KEEP0: tl.constexpr, HAS_FORGET0: tl.constexpr, HAS_PERM0: tl.constexpr,
    MODE1: tl.constexpr, HAS_KEEP1: tl.constexpr, HAS_FORGET1: tl.constexpr, HAS_SET1: tl.constexpr,
    LABELS: tl.constexpr, WRITE_GRAD: tl.constexpr, BLOCK: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """A small batch in one launch and one program: every row's terms (of one or two
    row sets), then the log-sum-exp, the loss and the gradient rows."""
    for i in range(0, n0):
        _row_terms(
            tl.cast(i, tl.int64), z0, sz0r, sz0c, kt0, skt0r, skt0c, kpool0, ft0, sft0r, sft0c, perm0, lam0, slam0,
            stats0, n0, n_cols, MODE0, HAS_KEEP0, HAS_FORGET0, LABELS, HAS_PERM0, BLOCK,
        )
    if HAS_SET1:
        for i in range(0, n1):
            _row_terms(
                tl.cast(i, tl.int64), z1, sz1r, sz1c, kt1, skt1r, skt1c, kpool1, ft1, sft1r, sft1c, perm1, lam1, slam1,
                stats1, n1, n_cols, MODE1, HAS_KEEP1, HAS_FORGET1, LABELS, False, BLOCK,
            )
    tl.debug_barrier()  # the terms written by every thread are read by every thread below
    _grad_rows(
        0, 1, z0, sz0r, sz0c, kt0, skt0r, skt0c, kpool0, ft0, sft0r, sft0c, perm0, stats0, grad0, sg0r,
        keep_stats_ptr, n_keep, forget_stats_ptr, n_forget, loss_ptr, n0, n_cols, inv_tau, scale,
        MODE0, HAS_KEEP0, HAS_FORGET0, LABELS, HAS_PERM0, WRITE_GRAD, True, BLOCK, BLOCK_R,
    )
    if HAS_SET1:
        _grad_rows(
            0, 1, z1, sz1r, sz1c, kt1, skt1r, skt1c, kpool1, ft1, sft1r, sft1c, perm1, stats1, grad1, sg1r,
            keep_stats_ptr, n_keep, forget_stats_ptr, n_forget, loss_ptr, n1, n_cols, inv_tau, scale,
            MODE1, HAS_KEEP1, HAS_FORGET1, LABELS, False, WRITE_GRAD, False, BLOCK, BLOCK_R,
        )


class _RowSet:
    """One set of logits rows with its targets, as the kernels address it."""

    def __init__(self, logits, keep_target, forget_target, perm, lam, mode):
        check_dtype("logits", logits)
        self.logits, self.mode, self.perm, self.lam = logits, mode, perm, lam
        self.keep_target = keep_target if keep_target is not None else forget_target
        self.forget_target = forget_target if forget_target is not None else keep_target
        self.labels = self.keep_target.dtype == torch.int64
        self.n_rows, self.n_cols = logits.shape
        self.block = row_block(self.n_cols, MAX_BLOCK)
        self.stats = new_output((STATS, self.n_rows), torch.float32, logits.device)

    def _target_args(self):
        kt, ft = self.keep_target, self.forget_target
        k_strides = (kt.stride(0), 0) if self.labels else (kt.stride(0), kt.stride(1))
        f_strides = (ft.stride(0), 0) if self.labels else (ft.stride(0), ft.stride(1))
        perm = self.perm if self.perm is not None else kt
        return (kt, *k_strides, kt.shape[0], ft, *f_strides, perm)

    def _flags(self):
        return dict(
            MODE=self.mode, HAS_KEEP=self.mode != FORGET, HAS_FORGET=self.mode != KEEP,
            LABELS=self.labels, HAS_PERM=self.perm is not None, BLOCK=self.block,
        )

    def _lam_args(self):
        lam = self.lam if self.lam is not None else self.stats
        stride_lam = lam.stride(0) if (self.lam is not None and lam.dim() == 1) else 0
        return lam, stride_lam

    def new_grad(self, with_grad):
        z = self.logits
        return new_output(z.shape, z.dtype, z.device) if with_grad else z.new_empty(0)

    def fused_args(self, grad):
        """This set's arguments of ``_fused_kernel``."""
        z = self.logits
        return (
            z, z.stride(0), z.stride(1), *self._target_args(), *self._lam_args(), self.stats, grad,
            grad.stride(0) if grad.numel() else 0, self.n_rows,
        )

    def compute_terms(self):
        z = self.logits
        _row_terms_kernel[(self.n_rows,)](
            z, z.stride(0), z.stride(1), *self._target_args(), *self._lam_args(), self.stats, self.n_rows, self.n_cols,
            num_warps=warps_for(self.block), **self._flags(),
        )

    def write_grad(self, keep_set, forget_set, tau, scale, loss, with_grad):
        z = self.logits
        grad = self.new_grad(with_grad)
        write_loss = loss is not None
        n_prog = persistent_programs(z.device, self.n_rows) if with_grad else 1
        _grad_kernel[(n_prog,)](
            z, z.stride(0), z.stride(1), *self._target_args(), self.stats, grad,
            grad.stride(0) if with_grad else 0,
            keep_set.stats, keep_set.n_rows, forget_set.stats, forget_set.n_rows,
            loss if write_loss else self.stats, self.n_rows, self.n_cols, 1.0 / tau, scale,
            WRITE_GRAD=with_grad, WRITE_LOSS=write_loss, BLOCK_R=BLOCK_ROWS,
            num_warps=warps_for(self.block), **self._flags(),
        )
        return grad


def _new_loss(device):
    return new_output((), torch.float32, device)


def _fits_one_program(*row_sets) -> bool:
    return sum(r.n_rows for r in row_sets) * row_sets[0].n_cols <= FUSED_MAX_ELEMENTS


def _fused(first, second, keep_set, forget_set, tau, scale, with_grad):
    """Launch ``_fused_kernel`` on one or two row sets; returns the loss and their gradients."""
    loss = _new_loss(first.logits.device)
    grads = [first.new_grad(with_grad)]
    args = first.fused_args(grads[0])
    flags = dict(MODE0=first.mode, HAS_KEEP0=first.mode != FORGET, HAS_FORGET0=first.mode != KEEP,
                 HAS_PERM0=first.perm is not None)
    if second is not None:
        grads.append(second.new_grad(with_grad))
        args += second.fused_args(grads[1])
        flags.update(MODE1=second.mode, HAS_KEEP1=second.mode != FORGET, HAS_FORGET1=second.mode != KEEP, HAS_SET1=True)
    else:
        args += first.fused_args(grads[0])  # unused: HAS_SET1 is False
        flags.update(MODE1=first.mode, HAS_KEEP1=False, HAS_FORGET1=False, HAS_SET1=False)
    block = max(first.block, second.block) if second is not None else first.block
    _fused_kernel[(1,)](
        *args, keep_set.stats, keep_set.n_rows, forget_set.stats, forget_set.n_rows, loss, first.n_cols,
        1.0 / tau, scale, LABELS=first.labels, WRITE_GRAD=with_grad, BLOCK=block, BLOCK_R=BLOCK_ROWS,
        num_warps=warps_for(block), **flags,
    )
    return loss, grads


def contrastive_forward(logits, forget_target, retain_target, lam, perm, tau, reduction, with_grad):
    rows = _RowSet(logits, retain_target, forget_target, perm, lam, MIX)
    scale = 1.0 / rows.n_rows if reduction == "mean" else 1.0
    if _fits_one_program(rows):
        loss, (grad,) = _fused(rows, None, rows, rows, tau, scale, with_grad)
        return loss, grad
    rows.compute_terms()
    loss = _new_loss(logits.device)
    grad = rows.write_grad(rows, rows, tau, scale, loss, with_grad)
    return loss, grad


def real_forward(retain_logits, forget_logits, retain_target, forget_target, tau, reduction, with_grad):
    keep = _RowSet(retain_logits, retain_target, None, None, None, KEEP)
    forget = _RowSet(forget_logits, None, forget_target, None, None, FORGET)
    scale = 1.0 / keep.n_rows if reduction == "mean" else 1.0
    if _fits_one_program(keep, forget):
        loss, (grad_r, grad_f) = _fused(keep, forget, keep, forget, tau, scale, with_grad)
        return loss, grad_r, grad_f
    keep.compute_terms()
    forget.compute_terms()
    loss = _new_loss(retain_logits.device)
    grad_f = forget.write_grad(keep, forget, tau, scale, loss, with_grad)
    if not with_grad:
        return loss, retain_logits.new_empty(0), grad_f
    grad_r = keep.write_grad(keep, forget, tau, scale, None, with_grad)
    return loss, grad_r, grad_f
