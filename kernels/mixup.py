"""Batched mixup M * x_f + (1 - M) * x_r[perm]: forward and fused backward kernels.

Two layouts of M: one weight per sample (a 0-d weight is the same weight with
stride 0) and a (B, 1, H, W) mask broadcast over channels. All three image
tensors share x_forget's memory format (contiguous or channels_last), so a
sample is one dense block and the kernels address it through its strides.

An index in ``perm`` outside the retain pool is never dereferenced: its row of
the output (and of the gradients) is NaN, so the error cannot pass silently.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_dtype, new_output, new_output_like

BLOCK_FLAT = 1024
BLOCK_TILE = 1024  # channels x (sample, pixel) pairs of a mask kernel's tile


@triton.jit
def _retain_rows(perm_ptr, stride_perm, b, valid, pool, HAS_PERM: tl.constexpr):
    """Rows of the retain pool paired with forget rows b (int64), and whether each is in range."""
    if HAS_PERM:
        r = tl.load(perm_ptr + b * stride_perm, mask=valid, other=0)
    else:
        r = b
    ok = (r >= 0) & (r < pool)
    return tl.where(ok, r, 0).to(tl.int64), ok


@triton.jit
def _mixup_flat_forward_kernel(
    xf_ptr, xr_ptr, w_ptr, perm_ptr, stride_perm, out_ptr, n_samples, n_per_sample, n_chunks, pool, stride_w,
    HAS_PERM: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    # a 1-d grid of (ROWS samples) x (BLOCK elements of each): the grid's y and z axes stop at
    # 65,535, so the batch is never one of them, and tiny samples share a program
    pid = tl.program_id(0).to(tl.int64)
    b = (pid // n_chunks) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    offs = (pid % n_chunks) * BLOCK + tl.arange(0, BLOCK)
    valid = b < n_samples
    mask = valid[:, None] & (offs < n_per_sample)[None, :]
    r, ok = _retain_rows(perm_ptr, stride_perm, b, valid, pool, HAS_PERM)
    w = tl.load(w_ptr + b * stride_w, mask=valid, other=0.0).to(tl.float32)[:, None]
    base = b[:, None] * n_per_sample + offs[None, :]
    xf = tl.load(xf_ptr + base, mask=mask, other=0.0).to(tl.float32)
    xr = tl.load(xr_ptr + r[:, None] * n_per_sample + offs[None, :], mask=mask & ok[:, None], other=float("nan"))
    tl.store(out_ptr + base, (w * xf + (1.0 - w) * xr.to(tl.float32)).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _mixup_flat_backward_kernel(
    g_ptr, xf_ptr, xr_ptr, w_ptr, perm_ptr, stride_perm, gf_ptr, grows_ptr, partial_ptr,
    n_samples, n_per_sample, n_chunks, pool, stride_w,
    HAS_PERM: tl.constexpr, NEED_F: tl.constexpr, NEED_R: tl.constexpr, NEED_W: tl.constexpr,
    ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    chunk = pid % n_chunks
    b = (pid // n_chunks) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    offs = chunk * BLOCK + tl.arange(0, BLOCK)
    valid = b < n_samples
    mask = valid[:, None] & (offs < n_per_sample)[None, :]
    r, ok = _retain_rows(perm_ptr, stride_perm, b, valid, pool, HAS_PERM)
    w = tl.load(w_ptr + b * stride_w, mask=valid, other=0.0).to(tl.float32)[:, None]
    base = b[:, None] * n_per_sample + offs[None, :]
    g = tl.load(g_ptr + base, mask=mask, other=0.0).to(tl.float32)
    if NEED_F:
        tl.store(gf_ptr + base, (w * g).to(gf_ptr.dtype.element_ty), mask=mask)
    if NEED_R:
        rows = tl.where(ok[:, None], (1.0 - w) * g, float("nan"))
        tl.store(grows_ptr + base, rows.to(grows_ptr.dtype.element_ty), mask=mask)
    if NEED_W:
        xf = tl.load(xf_ptr + base, mask=mask, other=0.0).to(tl.float32)
        xr = tl.load(xr_ptr + r[:, None] * n_per_sample + offs[None, :], mask=mask & ok[:, None], other=float("nan"))
        diff = tl.where(mask, g * (xf - xr.to(tl.float32)), 0.0)
        tl.store(partial_ptr + b * n_chunks + chunk, tl.sum(diff, 1), mask=valid)


@triton.jit
def _mask_columns(n_samples, n_pix, perm_ptr, stride_perm, pool, stride_mb, stride_mp,
                  HAS_PERM: tl.constexpr, BLOCK_P: tl.constexpr):
    """This program's BLOCK_P (sample, pixel) pairs of the 1-d grid over B * H * W: the grid's
    y and z axes stop at 65,535, so the batch is never one of them, and small images share a program."""
    j = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    b = j // n_pix
    pix = j % n_pix
    valid = b < n_samples
    r, ok = _retain_rows(perm_ptr, stride_perm, b, valid, pool, HAS_PERM)
    return b, pix, valid, r, ok, b * stride_mb + pix * stride_mp


@triton.jit
def _mixup_mask_forward_kernel(
    xf_ptr, xr_ptr, m_ptr, perm_ptr, stride_perm, out_ptr,
    n_samples, n_channels, n_pix, pool, stride_b, stride_c, stride_p, stride_mb, stride_mp,
    HAS_PERM: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    b, pix, valid, r, ok, m_off = _mask_columns(n_samples, n_pix, perm_ptr, stride_perm, pool, stride_mb, stride_mp,
                                                HAS_PERM, BLOCK_P)
    m = tl.load(m_ptr + m_off, mask=valid, other=0.0).to(tl.float32)[None, :]
    f_col = (b * stride_b + pix * stride_p)[None, :]
    r_col = (r * stride_b + pix * stride_p)[None, :]
    chans = tl.arange(0, BLOCK_C)
    for c0 in range(0, n_channels, BLOCK_C):
        c = c0 + chans
        tile = (c[:, None] < n_channels) & valid[None, :]
        c_off = c.to(tl.int64)[:, None] * stride_c
        xf = tl.load(xf_ptr + f_col + c_off, mask=tile, other=0.0).to(tl.float32)
        xr = tl.load(xr_ptr + r_col + c_off, mask=tile & ok[None, :], other=float("nan")).to(tl.float32)
        tl.store(out_ptr + f_col + c_off, (m * xf + (1.0 - m) * xr).to(out_ptr.dtype.element_ty), mask=tile)


@triton.jit
def _mixup_mask_backward_kernel(
    g_ptr, xf_ptr, xr_ptr, m_ptr, perm_ptr, stride_perm, gf_ptr, grows_ptr, gm_ptr,
    n_samples, n_channels, n_pix, pool, stride_b, stride_c, stride_p, stride_mb, stride_mp,
    HAS_PERM: tl.constexpr, NEED_F: tl.constexpr, NEED_R: tl.constexpr, NEED_W: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    b, pix, valid, r, ok, m_off = _mask_columns(n_samples, n_pix, perm_ptr, stride_perm, pool, stride_mb, stride_mp,
                                                HAS_PERM, BLOCK_P)
    m = tl.load(m_ptr + m_off, mask=valid, other=0.0).to(tl.float32)[None, :]
    f_col = (b * stride_b + pix * stride_p)[None, :]
    r_col = (r * stride_b + pix * stride_p)[None, :]
    chans = tl.arange(0, BLOCK_C)
    acc = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
    for c0 in range(0, n_channels, BLOCK_C):
        c = c0 + chans
        tile = (c[:, None] < n_channels) & valid[None, :]
        off = f_col + c.to(tl.int64)[:, None] * stride_c
        g = tl.load(g_ptr + off, mask=tile, other=0.0).to(tl.float32)
        if NEED_F:
            tl.store(gf_ptr + off, (m * g).to(gf_ptr.dtype.element_ty), mask=tile)
        if NEED_R:
            rows = tl.where(ok[None, :], (1.0 - m) * g, float("nan"))
            tl.store(grows_ptr + off, rows.to(grows_ptr.dtype.element_ty), mask=tile)
        if NEED_W:
            xf = tl.load(xf_ptr + off, mask=tile, other=0.0).to(tl.float32)
            r_off = r_col + c.to(tl.int64)[:, None] * stride_c
            xr = tl.load(xr_ptr + r_off, mask=tile & ok[None, :], other=float("nan")).to(tl.float32)
            acc += tl.where(tile, g * (xf - xr), 0.0)
    if NEED_W:
        # the channel reduction of d/dM, fused: one store per pixel, into a fresh contiguous
        # (B, 1, H, W) tensor (the mask itself may be expanded, stride 0 over the batch)
        tl.store(gm_ptr + b * n_pix + pix, tl.sum(acc, 0).to(gm_ptr.dtype.element_ty), mask=valid)


def _shared_format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _prepare(x_forget, x_retain):
    fmt = _shared_format(x_forget)
    return x_forget.contiguous(memory_format=fmt), x_retain.contiguous(memory_format=fmt), fmt


def _pixel_strides(x: torch.Tensor):
    """(batch, channel, pixel) strides of a dense 4-d tensor whose H and W flatten to one index."""
    return x.stride(0), x.stride(1), x.stride(3)


def _mask_rows(mask: torch.Tensor) -> torch.Tensor:
    # (B, 1, H, W) with H and W flattening to one stride
    if mask.stride(2) != mask.shape[3] * mask.stride(3):
        mask = mask.contiguous()
    return mask


def _perm_args(perm, x):
    """(pointer, stride) of perm; x stands in as an unused pointer without one."""
    return (perm, perm.stride(0)) if perm is not None else (x, 0)


def _flat_tile(n_samples: int, n_per_sample: int) -> tuple[int, int, int]:
    """(samples per program, elements of each, chunks per sample): BLOCK_FLAT elements a program."""
    block = min(triton.next_power_of_2(max(n_per_sample, 1)), BLOCK_FLAT)
    rows = min(BLOCK_FLAT // block, triton.next_power_of_2(max(n_samples, 1)))
    return rows, block, triton.cdiv(n_per_sample, block)


def _mask_tile(n_channels: int) -> tuple[int, int]:
    """(channels, pixels) of a mask kernel's tile."""
    block_c = min(triton.next_power_of_2(n_channels), 8)
    return block_c, BLOCK_TILE // block_c


def mixup_forward(x_forget, x_retain, weight, perm):
    check_dtype("x_forget", x_forget)
    xf, xr, fmt = _prepare(x_forget, x_retain)
    out = new_output_like(xf, memory_format=fmt)
    B, pool = xf.shape[0], xr.shape[0]
    if out.numel() == 0:
        return out
    perm_args = _perm_args(perm, xf)
    if weight.dim() <= 1:
        n = xf[0].numel()
        rows, block, n_chunks = _flat_tile(B, n)
        _mixup_flat_forward_kernel[(triton.cdiv(B, rows) * n_chunks,)](
            xf, xr, weight, *perm_args, out, B, n, n_chunks, pool, weight.stride(0) if weight.dim() else 0,
            HAS_PERM=perm is not None, ROWS=rows, BLOCK=block,
        )
    else:
        mask = _mask_rows(weight)
        n_pix = xf.shape[2] * xf.shape[3]
        block_c, block_p = _mask_tile(xf.shape[1])
        _mixup_mask_forward_kernel[(triton.cdiv(B * n_pix, block_p),)](
            xf, xr, mask, *perm_args, out, B, xf.shape[1], n_pix, pool, *_pixel_strides(xf),
            mask.stride(0), mask.stride(3), HAS_PERM=perm is not None,
            BLOCK_C=block_c, BLOCK_P=block_p,
        )
    return out


def mixup_backward(grad, x_forget, x_retain, weight, perm, needs):
    check_dtype("grad", grad)
    need_f, need_r, need_w = needs
    xf, xr, fmt = _prepare(x_forget, x_retain)
    g = grad.contiguous(memory_format=fmt)
    B, pool = xf.shape[0], xr.shape[0]
    grad_f = new_output_like(xf, memory_format=fmt) if need_f else xf.new_empty(0)
    rows = new_output_like(xf, memory_format=fmt) if need_r else xf.new_empty(0)
    perm_args = _perm_args(perm, xf)
    flags = {"HAS_PERM": perm is not None, "NEED_F": need_f, "NEED_R": need_r, "NEED_W": need_w}
    grad_w = weight.new_empty(0)
    if weight.dim() <= 1:
        n = xf[0].numel()
        per_program, block, n_chunks = _flat_tile(B, n)
        n_chunks = max(n_chunks, 1)
        partial = new_output((B, n_chunks), torch.float32, xf.device) if need_w else xf.new_empty(0)
        if n and B:
            _mixup_flat_backward_kernel[(triton.cdiv(B, per_program) * n_chunks,)](
                g, xf, xr, weight, *perm_args, grad_f, rows, partial, B, n, n_chunks, pool,
                weight.stride(0) if weight.dim() else 0, ROWS=per_program, BLOCK=block, **flags,
            )
        elif need_w:
            partial.zero_()
        if need_w:
            grad_w = (partial.sum() if weight.dim() == 0 else partial.sum(dim=1)).to(weight.dtype)
    else:
        mask = _mask_rows(weight)
        if need_w:
            grad_w = new_output(mask.shape, mask.dtype, mask.device)  # per sample, even for an expanded mask
        n_pix = xf.shape[2] * xf.shape[3]
        block_c, block_p = _mask_tile(xf.shape[1])
        if xf.numel():
            _mixup_mask_backward_kernel[(triton.cdiv(B * n_pix, block_p),)](
                g, xf, xr, mask, *perm_args, grad_f, rows, grad_w, B, xf.shape[1], n_pix, pool,
                *_pixel_strides(xf), mask.stride(0), mask.stride(3),
                BLOCK_C=block_c, BLOCK_P=block_p, **flags,
            )
        elif need_w:
            grad_w.zero_()
    grad_r = rows
    if need_r and perm is not None:
        # out-of-range rows already carry NaN; the clamp only keeps index_add in bounds
        grad_r = torch.zeros_like(xr).index_add_(0, perm.clamp(0, pool - 1), rows)
    return grad_f, grad_r, grad_w
