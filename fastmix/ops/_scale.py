"""``g *= grad_output`` in place for a loss's saved gradient buffers, skipped when
``grad_output == 1``, without a host synchronisation; one launch for all buffers."""
from __future__ import annotations

import functools

import torch

_BLOCK = 4096


def host_reads(grad_output: torch.Tensor) -> bool:
    """Whether the 0-d ``grad_output`` may be read on the host: on the CPU it costs no
    synchronisation (tests turn this off to run the device path under the interpreter)."""
    return grad_output.is_cpu  # not device.type: building the device costs microseconds in a backward


def scale_(grads: list[torch.Tensor], grad_output: torch.Tensor) -> list[torch.Tensor]:
    """Scale each buffer of ``grads`` (owned by the op, contiguous) by ``grad_output``; returns them.

    Host-readable ``grad_output``: read once, nothing done when it is 1. On a device: one
    Triton launch over all the buffers whose programs load ``grad_output`` and return at
    once when it is 1, so the common case moves no data and the host never waits.
    Without Triton (or for other layouts), an in-place multiply per buffer.
    """
    if host_reads(grad_output):
        if grad_output.item() != 1.0:
            for g in grads:
                g.mul_(grad_output)
        return grads
    if not grads:
        return grads
    kernel = _triton_scale()
    if kernel is None or len(grads) > 3 or not all(g.is_contiguous() for g in grads):
        for g in grads:
            g.mul_(grad_output)
        return grads
    padded = list(grads) + [grads[0]] * (3 - len(grads))
    sizes = [g.numel() if i < len(grads) else 0 for i, g in enumerate(padded)]
    blocks = [(n + _BLOCK - 1) // _BLOCK for n in sizes]
    if sum(blocks):
        kernel[(sum(blocks),)](
            *padded, grad_output, sizes[0], sizes[1], sizes[2], blocks[0], blocks[0] + blocks[1], BLOCK=_BLOCK
        )
    return grads


@functools.cache
def _triton_scale():
    try:
        import triton
        import triton.language as tl
    except Exception:  # noqa: BLE001 (no Triton, or a broken install: the caller multiplies in place)
        return None

    @triton.jit
    def _scale_unless_one(a_ptr, b_ptr, c_ptr, s_ptr, n_a, n_b, n_c, start_b, start_c, BLOCK: tl.constexpr):
        s = tl.load(s_ptr).to(tl.float32)
        if s != 1.0:
            pid = tl.program_id(0)
            if pid < start_b:
                offs = pid * BLOCK + tl.arange(0, BLOCK)
                g = tl.load(a_ptr + offs, mask=offs < n_a).to(tl.float32)
                tl.store(a_ptr + offs, (g * s).to(a_ptr.dtype.element_ty), mask=offs < n_a)
            elif pid < start_c:
                offs = (pid - start_b) * BLOCK + tl.arange(0, BLOCK)
                g = tl.load(b_ptr + offs, mask=offs < n_b).to(tl.float32)
                tl.store(b_ptr + offs, (g * s).to(b_ptr.dtype.element_ty), mask=offs < n_b)
            else:
                offs = (pid - start_c) * BLOCK + tl.arange(0, BLOCK)
                g = tl.load(c_ptr + offs, mask=offs < n_c).to(tl.float32)
                tl.store(c_ptr + offs, (g * s).to(c_ptr.dtype.element_ty), mask=offs < n_c)

    return _scale_unless_one
