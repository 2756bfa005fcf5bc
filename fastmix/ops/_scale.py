"""``g *= grad_output`` in place, skipped when ``grad_output == 1``, without a host sync."""
from __future__ import annotations

import functools

import torch


def scale_(g: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
    """Scale the gradient buffer ``g`` (owned by the op) by the 0-d ``grad_output``; returns ``g``.

    CPU: reading the 0-d tensor costs no synchronisation. GPU: a Triton kernel whose
    programs read ``grad_output`` and return at once when it is 1, so the common case
    moves no data and the host never waits; without Triton, a plain in-place multiply.
    """
    if grad_output.device.type == "cpu":
        if grad_output.item() != 1.0:
            g.mul_(grad_output)
        return g
    kernel = _triton_scale()
    if kernel is None or not g.is_contiguous() or g.numel() == 0:
        return g.mul_(grad_output)
    block = 4096
    kernel[(triton_cdiv(g.numel(), block),)](g, grad_output, g.numel(), BLOCK=block)
    return g


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


@functools.lru_cache(maxsize=None)
def _triton_scale():
    try:
        import triton
        import triton.language as tl
    except Exception:  # no Triton: the caller multiplies in place
        return None

    @triton.jit
    def _scale_unless_one(g_ptr, s_ptr, n, BLOCK: tl.constexpr):
        s = tl.load(s_ptr).to(tl.float32)
        if s != 1.0:
            offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            mask = offs < n
            g = tl.load(g_ptr + offs, mask=mask).to(tl.float32)
            tl.store(g_ptr + offs, (g * s).to(g_ptr.dtype.element_ty), mask=mask)

    return _scale_unless_one
