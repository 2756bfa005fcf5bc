"""Sharpen(softmax(z), T) = softmax(z / T) over the last dimension (SPEC 3)."""
from __future__ import annotations

import math

import torch

from fastmix.backends import kernels_for, resolve_backend

from . import _checks
from ._autograd import c_apply, eager, functorch_active


@torch.library.custom_op("fastmix::sharpen", mutates_args=())
def _sharpen(logits: torch.Tensor, T: float, backend: str) -> torch.Tensor:
    return kernels_for(backend).sharpen_forward(logits, T)


@_sharpen.register_fake
def _(logits, T, backend):
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


@torch.library.custom_op("fastmix::sharpen_backward", mutates_args=())
def _sharpen_backward(grad: torch.Tensor, out: torch.Tensor, T: float, backend: str) -> torch.Tensor:
    return kernels_for(backend).sharpen_backward(grad, out, T)


@_sharpen_backward.register_fake
def _(grad, out, T, backend):
    return torch.empty(out.shape, dtype=out.dtype, device=out.device)


def _setup_context(ctx, inputs, output):
    _, T, backend = inputs
    ctx.T, ctx.backend = T, backend
    ctx.save_for_backward(output)


def _backward(ctx, grad):
    (out,) = ctx.saved_tensors
    return _sharpen_backward(grad, out, ctx.T, ctx.backend), None, None


_sharpen.register_autograd(_backward, setup_context=_setup_context)


class _SharpenFunction(torch.autograd.Function):
    """The eager fast path: the backend's kernels without the custom ops' dispatch."""

    @staticmethod
    def forward(ctx, logits, T, kernels):
        out = kernels.sharpen_forward(logits, T)
        ctx.T, ctx.kernels = T, kernels
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return ctx.kernels.sharpen_backward(grad, out, ctx.T), None, None


_apply = c_apply(_SharpenFunction)


def sharpen(logits: torch.Tensor, T: float = 0.3, *, backend: str | None = None) -> torch.Tensor:
    """``softmax(logits / T)`` over the last dimension: the paper's Sharpen(softmax(logits), T).

    Computed as a softmax of scaled logits (SPEC 3), never with powers of
    probabilities. ``logits`` is ``(..., C)`` in float16, bfloat16, float32 or
    float64 (float64 only with the ``torch`` backend), any strides; the result
    is contiguous, in the input's dtype, computed in float32. Differentiable.
    A NaN in a row gives NaN in that row.
    """
    if not (isinstance(logits, torch.Tensor) and logits.dtype in _checks.FLOAT_DTYPES and logits.dim() > 0):
        _checks.float_tensor("logits", logits)
        raise ValueError("logits must have at least 1 dimension (..., C), got a 0-d tensor")
    if not (type(T) is float and 0.0 < T < math.inf):  # the common case without a call
        T = _checks.positive_finite("T", T)
    backend = resolve_backend(backend, logits.device, logits.dtype)
    if not eager():
        return _sharpen(logits, T, backend)
    kernels = kernels_for(backend)
    if logits.requires_grad and torch.is_grad_enabled():
        if functorch_active():
            return _SharpenFunction.apply(logits, T, kernels)
        return _apply(logits, T, kernels)
    return kernels.sharpen_forward(logits, T)
