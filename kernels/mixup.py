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
BLOCK_PIX = 128


@triton.jit
def _retain_row(perm_ptr, b, pool, HAS_PERM: tl.constexpr):
    """Row of the retain pool paired with forget row b, and whether it is in range."""
    if HAS_PERM:
        r = tl.load(perm_ptr + b)
    else:
        r = b
    ok = (r >= 0) & (r < pool)
    return tl.where(ok, r, 0), ok


@triton.jit
def _and_row_ok(mask, ok):
    """mask & ok for a scalar ok, spelled so that the interpreter accepts it too."""
    return mask & ((mask.to(tl.int32) * 0 + ok.to(tl.int32)) != 0)


@triton.jit
def _mixup_flat_forward_kernel(
    xf_ptr, xr_ptr, w_ptr, perm_ptr, out_ptr, n_per_sample, pool, stride_w,
    HAS_PERM: tl.constexpr, BLOCK: tl.constexpr,
):
    chunk = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    r, ok = _retain_row(perm_ptr, b, pool, HAS_PERM)
    offs = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_per_sample
    w = tl.load(w_ptr + b * stride_w).to(tl.float32)
    xf = tl.load(xf_ptr + b * n_per_sample + offs, mask=mask, other=0.0).to(tl.float32)
    xr = tl.load(xr_ptr + r.to(tl.int64) * n_per_sample + offs, mask=_and_row_ok(mask, ok), other=float("nan")).to(tl.float32)
    tl.store(out_ptr + b * n_per_sample + offs, (w * xf + (1.0 - w) * xr).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _mixup_flat_backward_kernel(
    g_ptr, xf_ptr, xr_ptr, w_ptr, perm_ptr, gf_ptr, grows_ptr, partial_ptr,
    n_per_sample, pool, stride_w, n_chunks,
    HAS_PERM: tl.constexpr, NEED_F: tl.constexpr, NEED_R: tl.constexpr, NEED_W: tl.constexpr,
    BLOCK: tl.constexpr,
):
    chunk = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    r, ok = _retain_row(perm_ptr, b, pool, HAS_PERM)
    offs = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_per_sample
    base = b * n_per_sample + offs
    w = tl.load(w_ptr + b * stride_w).to(tl.float32)
    g = tl.load(g_ptr + base, mask=mask, other=0.0).to(tl.float32)
    if NEED_F:
        tl.store(gf_ptr + base, (w * g).to(gf_ptr.dtype.element_ty), mask=mask)
    if NEED_R:
        rows = tl.where(ok, (1.0 - w) * g, float("nan"))
        tl.store(grows_ptr + base, rows.to(grows_ptr.dtype.element_ty), mask=mask)
    if NEED_W:
        xf = tl.load(xf_ptr + base, mask=mask, other=0.0).to(tl.float32)
        xr = tl.load(xr_ptr + r.to(tl.int64) * n_per_sample + offs, mask=_and_row_ok(mask, ok), other=float("nan"))
        diff = tl.where(mask, g * (xf - xr.to(tl.float32)), 0.0)
        tl.store(partial_ptr + b * n_chunks + chunk, tl.sum(diff, 0))


@triton.jit
def _mixup_mask_forward_kernel(
    xf_ptr, xr_ptr, m_ptr, perm_ptr, out_ptr,
    n_channels, n_pix, pool, stride_b, stride_c, stride_p, stride_mb, stride_mp,
    HAS_PERM: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pblk = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    r, ok = _retain_row(perm_ptr, b, pool, HAS_PERM)
    pix = pblk * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = pix < n_pix
    m = tl.load(m_ptr + b * stride_mb + pix.to(tl.int64) * stride_mp, mask=pmask, other=0.0).to(tl.float32)
    chans = tl.arange(0, BLOCK_C)
    pix_off = pix.to(tl.int64)[None, :] * stride_p
    for c0 in range(0, n_channels, BLOCK_C):
        c = c0 + chans
        tile = (c[:, None] < n_channels) & pmask[None, :]
        off = c.to(tl.int64)[:, None] * stride_c + pix_off
        xf = tl.load(xf_ptr + b * stride_b + off, mask=tile, other=0.0).to(tl.float32)
        xr = tl.load(xr_ptr + r.to(tl.int64) * stride_b + off, mask=_and_row_ok(tile, ok), other=float("nan")).to(tl.float32)
        out = m[None, :] * xf + (1.0 - m[None, :]) * xr
        tl.store(out_ptr + b * stride_b + off, out.to(out_ptr.dtype.element_ty), mask=tile)


@triton.jit
def _mixup_mask_backward_kernel(
    g_ptr, xf_ptr, xr_ptr, m_ptr, perm_ptr, gf_ptr, grows_ptr, gm_ptr,
    n_channels, n_pix, pool, stride_b, stride_c, stride_p, stride_mb, stride_mp,
    HAS_PERM: tl.constexpr, NEED_F: tl.constexpr, NEED_R: tl.constexpr, NEED_W: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pblk = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    r, ok = _retain_row(perm_ptr, b, pool, HAS_PERM)
    pix = pblk * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = pix < n_pix
    m_off = b * stride_mb + pix.to(tl.int64) * stride_mp
    m = tl.load(m_ptr + m_off, mask=pmask, other=0.0).to(tl.float32)
    chans = tl.arange(0, BLOCK_C)
    pix_off = pix.to(tl.int64)[None, :] * stride_p
    acc = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
    for c0 in range(0, n_channels, BLOCK_C):
        c = c0 + chans
        tile = (c[:, None] < n_channels) & pmask[None, :]
        off = b * stride_b + c.to(tl.int64)[:, None] * stride_c + pix_off
        g = tl.load(g_ptr + off, mask=tile, other=0.0).to(tl.float32)
        if NEED_F:
            tl.store(gf_ptr + off, (m[None, :] * g).to(gf_ptr.dtype.element_ty), mask=tile)
        if NEED_R:
            rows = tl.where(ok, (1.0 - m[None, :]) * g, float("nan"))
            tl.store(grows_ptr + off, rows.to(grows_ptr.dtype.element_ty), mask=tile)
        if NEED_W:
            xf = tl.load(xf_ptr + off, mask=tile, other=0.0).to(tl.float32)
            r_off = r.to(tl.int64) * stride_b + c.to(tl.int64)[:, None] * stride_c + pix_off
            xr = tl.load(xr_ptr + r_off, mask=_and_row_ok(tile, ok), other=float("nan")).to(tl.float32)
            acc += tl.where(tile, g * (xf - xr), 0.0)
    if NEED_W:
        # the channel reduction of d/dM, fused: one store per pixel
        tl.store(gm_ptr + m_off, tl.sum(acc, 0).to(gm_ptr.dtype.element_ty), mask=pmask)


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


def _block_c(n_channels: int) -> int:
    return min(triton.next_power_of_2(n_channels), 8)


def mixup_forward(x_forget, x_retain, weight, perm):
    check_dtype("x_forget", x_forget)
    xf, xr, fmt = _prepare(x_forget, x_retain)
    out = new_output_like(xf, memory_format=fmt)
    B, pool = xf.shape[0], xr.shape[0]
    if out.numel() == 0:
        return out
    perm_arg = perm if perm is not None else xf  # unused pointer when HAS_PERM is False
    if weight.dim() <= 1:
        n = xf[0].numel()
        grid = (triton.cdiv(n, BLOCK_FLAT), B)
        _mixup_flat_forward_kernel[grid](
            xf, xr, weight, perm_arg, out, n, pool, weight.stride(0) if weight.dim() else 0,
            HAS_PERM=perm is not None, BLOCK=BLOCK_FLAT,
        )
    else:
        mask = _mask_rows(weight)
        n_pix = xf.shape[2] * xf.shape[3]
        grid = (triton.cdiv(n_pix, BLOCK_PIX), B)
        _mixup_mask_forward_kernel[grid](
            xf, xr, mask, perm_arg, out, xf.shape[1], n_pix, pool, *_pixel_strides(xf),
            mask.stride(0), mask.stride(3), HAS_PERM=perm is not None,
            BLOCK_C=_block_c(xf.shape[1]), BLOCK_P=BLOCK_PIX,
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
    perm_arg = perm if perm is not None else xf
    flags = dict(HAS_PERM=perm is not None, NEED_F=need_f, NEED_R=need_r, NEED_W=need_w)
    grad_w = weight.new_empty(0)
    if weight.dim() <= 1:
        n = xf[0].numel()
        n_chunks = max(triton.cdiv(n, BLOCK_FLAT), 1)
        partial = new_output((B, n_chunks), torch.float32, xf.device) if need_w else xf.new_empty(0)
        if n and B:
            _mixup_flat_backward_kernel[(n_chunks, B)](
                g, xf, xr, weight, perm_arg, grad_f, rows, partial, n, pool,
                weight.stride(0) if weight.dim() else 0, n_chunks, BLOCK=BLOCK_FLAT, **flags,
            )
        elif need_w:
            partial.zero_()
        if need_w:
            grad_w = (partial.sum() if weight.dim() == 0 else partial.sum(dim=1)).to(weight.dtype)
    else:
        mask = _mask_rows(weight)
        if need_w:
            grad_w = new_output_like(mask)
        n_pix = xf.shape[2] * xf.shape[3]
        if xf.numel():
            _mixup_mask_backward_kernel[(triton.cdiv(n_pix, BLOCK_PIX), B)](
                g, xf, xr, mask, perm_arg, grad_f, rows, grad_w, xf.shape[1], n_pix, pool,
                *_pixel_strides(xf), mask.stride(0), mask.stride(3),
                BLOCK_C=_block_c(xf.shape[1]), BLOCK_P=BLOCK_PIX, **flags,
            )
        elif need_w:
            grad_w.zero_()
    grad_r = rows
    if need_r and perm is not None:
        # out-of-range rows already carry NaN; the clamp only keeps index_add in bounds
        grad_r = torch.zeros_like(xr).index_add_(0, perm.clamp(0, pool - 1), rows)
    return grad_f, grad_r, grad_w
