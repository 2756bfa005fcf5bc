"""Sharpen = softmax(z / T) over rows: forward and backward kernels."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import as_rows, check_dtype, new_output, row_block, warps_for

MAX_BLOCK = 2048


@triton.jit
def softmax_stats(row_ptr, stride_c, n_cols, scale, BLOCK: tl.constexpr):
    """Max and sum of exp(scale * z - max) over one row, in one online pass."""
    cols = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK], tl.float32)
    poison = tl.zeros([BLOCK], tl.float32)  # NaN once a NaN was read: max() may skip NaN
    for start in range(0, n_cols, BLOCK):
        c = start + cols
        z = tl.load(row_ptr + c.to(tl.int64) * stride_c, mask=c < n_cols, other=float("-inf")).to(tl.float32) * scale
        m_new = tl.maximum(m, z)
        # lanes still at -inf hold nothing yet: keep them at 0 instead of exp(nan)
        alive = m_new != float("-inf")
        s = tl.where(alive, s * tl.exp(m - m_new) + tl.exp(z - m_new), s)
        m = m_new
        poison += tl.where(z != z, z, 0.0)  # noqa: PLR0124 (true for NaN only)
    row_max = tl.max(m, 0)
    total = tl.sum(tl.where(m != float("-inf"), s * tl.exp(m - row_max), 0.0), 0)
    total += tl.sum(poison, 0)
    return row_max, total


@triton.jit
def _sharpen_forward_kernel(
    x_ptr, y_ptr, n_cols, stride_xr, stride_xc, stride_yr, inv_T, BLOCK: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xr
    y_row = y_ptr + row * stride_yr
    row_max, total = softmax_stats(x_row, stride_xc, n_cols, inv_T, BLOCK)
    inv_total = 1.0 / total
    cols = tl.arange(0, BLOCK)
    for start in range(0, n_cols, BLOCK):
        c = start + cols
        mask = c < n_cols
        z = tl.load(x_row + c.to(tl.int64) * stride_xc, mask=mask, other=0.0).to(tl.float32) * inv_T
        y = tl.exp(z - row_max) * inv_total
        tl.store(y_row + c, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sharpen_backward_kernel(
    g_ptr, y_ptr, dx_ptr, n_cols, stride_gr, stride_gc, stride_yr, stride_dr, inv_T, BLOCK: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    g_row = g_ptr + row * stride_gr
    y_row = y_ptr + row * stride_yr
    dx_row = dx_ptr + row * stride_dr
    cols = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_cols, BLOCK):
        c = start + cols
        mask = c < n_cols
        g = tl.load(g_row + c.to(tl.int64) * stride_gc, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(y_row + c, mask=mask, other=0.0).to(tl.float32)
        acc += g * y
    dot = tl.sum(acc, 0)
    for start in range(0, n_cols, BLOCK):
        c = start + cols
        mask = c < n_cols
        g = tl.load(g_row + c.to(tl.int64) * stride_gc, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(y_row + c, mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_row + c, (y * (g - dot) * inv_T).to(dx_ptr.dtype.element_ty), mask=mask)


def sharpen_forward(logits: torch.Tensor, T: float) -> torch.Tensor:
    check_dtype("logits", logits)
    x = as_rows(logits)
    n_rows, n_cols = x.shape
    y = new_output((n_rows, n_cols), logits.dtype, logits.device)
    if y.numel():
        block = row_block(n_cols, MAX_BLOCK)
        _sharpen_forward_kernel[(n_rows,)](
            x, y, n_cols, x.stride(0), x.stride(1), y.stride(0), 1.0 / T, BLOCK=block, num_warps=warps_for(block)
        )
    return y.view(logits.shape)


def sharpen_backward(grad: torch.Tensor, out: torch.Tensor, T: float) -> torch.Tensor:
    check_dtype("grad", grad)
    g = as_rows(grad)
    y = out.reshape(-1, out.shape[-1]).contiguous()
    n_rows, n_cols = y.shape
    dx = new_output((n_rows, n_cols), out.dtype, out.device)
    if dx.numel():
        block = row_block(n_cols, MAX_BLOCK)
        _sharpen_backward_kernel[(n_rows,)](
            g, y, dx, n_cols, g.stride(0), g.stride(1), y.stride(0), dx.stride(0), 1.0 / T,
            BLOCK=block, num_warps=warps_for(block),
        )
    return dx.view(out.shape)
