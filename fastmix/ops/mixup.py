"""Batched mixup x_mix = M * x_f + (1 - M) * x_r[perm] (SPEC 2)."""
from __future__ import annotations

import torch

from fastmix.backends import kernels_for, resolve_backend

from . import _checks
from ._autograd import c_apply, functorch_active


@torch.library.custom_op("fastmix::mixup", mutates_args=())
def _mixup(
    x_forget: torch.Tensor, x_retain: torch.Tensor, weight: torch.Tensor, perm: torch.Tensor | None, backend: str
) -> torch.Tensor:
    return kernels_for(backend).mixup_forward(x_forget, x_retain, weight, perm)


@_mixup.register_fake
def _(x_forget, x_retain, weight, perm, backend):
    return torch.empty_like(x_forget)


@torch.library.custom_op("fastmix::mixup_backward", mutates_args=())
def _mixup_backward(
    grad: torch.Tensor,
    x_forget: torch.Tensor,
    x_retain: torch.Tensor,
    weight: torch.Tensor,
    perm: torch.Tensor | None,
    needs: list[bool],
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return kernels_for(backend).mixup_backward(grad, x_forget, x_retain, weight, perm, tuple(needs))


@_mixup_backward.register_fake
def _(grad, x_forget, x_retain, weight, perm, needs, backend):
    grad_f = torch.empty_like(x_forget) if needs[0] else x_forget.new_empty(0)
    grad_r = torch.empty_like(x_retain) if needs[1] else x_forget.new_empty(0)
    grad_w = torch.empty_like(weight) if needs[2] else weight.new_empty(0)
    return grad_f, grad_r, grad_w


def _setup_context(ctx, inputs, output):
    x_forget, x_retain, weight, perm, backend = inputs
    ctx.backend = backend
    ctx.save_for_backward(x_forget, x_retain, weight, perm)


def _backward(ctx, grad):
    x_forget, x_retain, weight, perm = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:3])
    if not any(needs):
        return None, None, None, None, None
    grads = _mixup_backward(grad, x_forget, x_retain, weight, perm, needs, ctx.backend)
    return tuple(g if need else None for g, need in zip(grads, needs)) + (None, None)


_mixup.register_autograd(_backward, setup_context=_setup_context)


class _MixupFunction(torch.autograd.Function):
    """The eager fast path: the backend's kernels without the custom ops' dispatch."""

    @staticmethod
    def forward(ctx, x_forget, x_retain, weight, perm, kernels):
        ctx.kernels = kernels
        ctx.save_for_backward(x_forget, x_retain, weight, perm)
        return kernels.mixup_forward(x_forget, x_retain, weight, perm)

    @staticmethod
    def backward(ctx, grad):
        x_forget, x_retain, weight, perm = ctx.saved_tensors
        needs = tuple(ctx.needs_input_grad[:3])
        if not any(needs):
            return None, None, None, None, None
        grad_f, grad_r, grad_w = ctx.kernels.mixup_backward(grad, x_forget, x_retain, weight, perm, needs)
        # written out: a generator costs a microsecond per call
        return grad_f if needs[0] else None, grad_r if needs[1] else None, grad_w if needs[2] else None, None, None


_apply = c_apply(_MixupFunction)


def mixup(
    x_forget: torch.Tensor,
    x_retain: torch.Tensor,
    weight,
    perm: torch.Tensor | None = None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """``M * x_forget + (1 - M) * x_retain[perm]`` with one of three kinds of ``M`` (SPEC 2).

    Args:
        x_forget: ``(B, ...)`` float16, bfloat16 or float32 samples (float64 with the
            ``torch`` backend); a ``(B, C, H, W)`` image batch when ``weight`` is a mask.
        x_retain: ``(N, ...)`` samples of the same trailing shape and dtype. With
            ``perm`` it is a pool of ``N >= 1`` rows to gather from; without, ``N == B``.
        weight: the weight of ``x_forget``: a float or 0-d tensor (one lambda for the
            batch), a ``(B,)`` tensor (one per sample) or a ``(B, 1, H, W)`` mask
            broadcast over channels. Any floating dtype; its gradient comes back in it.
        perm: optional ``(B,)`` int64 indices into ``x_retain``; repeats are allowed.

    The output has ``x_forget``'s dtype and memory format (contiguous or
    channels_last; other strides give a contiguous output). Arithmetic is float32.
    Gradients flow to ``x_forget``, ``x_retain`` (summed over repeated indices) and
    ``weight`` (summed over the dimensions it broadcasts over).

    Checks: shapes, dtypes and devices always; ``perm`` in ``[0, N)`` and
    ``weight`` in ``[0, 1]`` without NaN on CPU tensors always (by the kernel itself on
    the ``cpu`` backend), on GPU tensors only under ``fastmix.debug_checks(True)`` (they
    would synchronise).
    """
    compiling = torch.compiler.is_compiling()
    if compiling:
        device = None
    else:
        meta = _checks.meta
        key = (meta(x_forget), meta(x_retain), meta(weight), meta(perm))
        device = _PASSED.get(key)
    passed = device is not None
    from_float = False  # a float weight is never in _PASSED: checked and made a tensor per call
    if not passed:
        device, weight, from_float = _check_metadata(x_forget, x_retain, weight, perm)
    backend = resolve_backend(backend, device, x_forget.dtype)
    kernels = kernels_for(backend)
    values = _checks.values_wanted(x_forget, backend_checks=kernels.checks_values)
    if not passed or values:
        B = x_forget.shape[0]
        _checks.perm("perm", perm, B, x_retain.shape[0], values)
        if perm is None and x_retain.shape[0] != B:
            raise ValueError(f"without perm, x_retain must have B={B} rows like x_forget, got {x_retain.shape[0]}")
        if not from_float:
            _checks.unit_interval("weight", weight, values)
        if not (passed or from_float or compiling):
            _PASSED.add(key, device)
    if compiling:
        return _mixup(x_forget, x_retain, weight, perm, backend)
    if torch.is_grad_enabled() and (x_forget.requires_grad or x_retain.requires_grad or weight.requires_grad):
        if functorch_active():
            return _MixupFunction.apply(x_forget, x_retain, weight, perm, kernels)
        return _apply(x_forget, x_retain, weight, perm, kernels)
    return kernels.mixup_forward(x_forget, x_retain, weight, perm)


# metadata of the arguments -> their device, for calls that passed the metadata checks
_PASSED = _checks.Passed()


def _check_metadata(x_forget, x_retain, weight, perm) -> tuple:
    """The checks of types, dtypes, shapes and devices; returns the device, the weight as a
    tensor and whether it was given as a float (then checked in [0, 1] already)."""
    floats = _checks.FLOAT_DTYPES
    if not (isinstance(x_forget, torch.Tensor) and x_forget.dtype in floats):
        _checks.float_tensor("x_forget", x_forget)
    if not (isinstance(x_retain, torch.Tensor) and x_retain.dtype in floats):
        _checks.float_tensor("x_retain", x_retain)
    shape = x_forget.shape
    if not shape:
        raise ValueError("x_forget must have a batch dimension (B, ...), got a 0-d tensor")
    if x_retain.dtype != x_forget.dtype:
        _checks.same_dtype(x_forget=x_forget, x_retain=x_retain)
    if x_retain.shape[1:] != shape[1:]:
        raise ValueError(
            f"x_retain must have the trailing shape {tuple(shape[1:])} of x_forget, got {tuple(x_retain.shape)}"
        )
    device = x_forget.device
    if not _checks.on_device(device, x_retain, perm):
        _checks.same_device(x_forget=x_forget, x_retain=x_retain, perm=perm)
    B = shape[0]
    from_float = not isinstance(weight, torch.Tensor)
    if from_float:  # checked in [0, 1] as a Python number: no value check of the tensor made of it
        weight = _checks.lam("weight", weight, B, device, like=x_forget.dtype)
    else:
        if not (weight.dtype in floats and weight.dim() in (0, 1, 4)):
            _checks.float_tensor("weight", weight, ndim=(0, 1, 4))
        if weight.device != device:
            _checks.same_device(x_forget=x_forget, weight=weight)
    w_shape = weight.shape
    if len(w_shape) == 1 and w_shape[0] != B:
        raise ValueError(f"weight as per-sample lambdas must have shape ({B},), got {tuple(w_shape)}")
    if len(w_shape) == 4:
        if len(shape) != 4:
            raise ValueError(f"a (B, 1, H, W) mask weight needs (B, C, H, W) images, got x_forget of shape "
                             f"{tuple(shape)}")
        want = (B, 1, shape[2], shape[3])
        if w_shape != want:
            raise ValueError(f"weight as a mask must have shape {want}, got {tuple(w_shape)}")
    return device, weight, from_float
