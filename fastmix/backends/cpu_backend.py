"""The ``cpu`` backend: fused C++ kernels with OpenMP (csrc/cpu/), loaded with ctypes.

``setup.py`` builds ``csrc/cpu/fastmix_cpu.cpp`` into ``fastmix/backends/libfastmix_cpu.so``
where a C++ compiler exists (``FASTMIX_CPU=0`` skips it). The kernels work on contiguous
float32 data: other layouts are made contiguous first (channels_last images are kept as
they are), float16 and bfloat16 are computed in float32 and returned in their dtype, and
float64 data never reaches this backend (``resolve_backend`` gives it to the reference).
The threads are torch's (``torch.get_num_threads()``).

The loss kernel checks the values of its inputs itself (label and ``perm`` range, ``lam``
in [0, 1] before it reads a row; NaN, infinite or negative probabilities in the pass that
reads them), so the ops skip their own value checks for this backend; a bad value raises
the same ``ValueError``, naming the argument, and the outputs the kernel was filling are
dropped.

Opt-in for now (``backend="cpu"``, ``FASTMIX_BACKEND=cpu``): its sums round differently
from the reference's, and the trainer's CPU results are pinned to the reference bit for bit.
``FASTMIX_CPU_LIB`` names another build of the library to load.
"""
from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import torch

from . import Kernels, register, torch_backend

LIB_FILE = "libfastmix_cpu.so"
ABI_VERSION = 2  # fastmix_cpu_version() in csrc/cpu/fastmix_cpu.cpp

_P = ctypes.c_void_p
_I = ctypes.c_int64
_D = ctypes.c_double
_INT = ctypes.c_int

_SIGNATURES = {
    "fastmix_cpu_sharpen_forward": [_P, _P, _I, _I, _D, _INT],
    "fastmix_cpu_sharpen_backward": [_P, _P, _P, _I, _I, _D, _INT],
    "fastmix_cpu_mixup_forward": [_P, _P, _P, _P, _P, _I, _I, _I, _I, _I, _I, _INT],
    "fastmix_cpu_mixup_backward": [_P, _P, _P, _P, _P, _P, _P, _P, _I, _I, _I, _I, _I, _I, _I, _I, _INT],
    "fastmix_cpu_loss_forward": [_P],  # a _LossCall
}


class _LossCall(ctypes.Structure):
    """The fused loss's arguments, FastmixLossCall in csrc/cpu/fastmix_cpu.cpp field for field."""

    _fields_ = [(name, _P) for name in ("mix", "forget", "retain", "qf", "qr", "yf", "yr", "lam", "perm", "loss",
                                         "g_mix", "g_forget", "g_retain")] + [
        (name, _I) for name in ("lam_stride", "B", "N", "C")] + [
        (name, _D) for name in ("tau_mix", "tau_real", "omega")] + [
        (name, ctypes.c_int32) for name in ("mean", "check_values", "nthreads")]


@functools.cache
def _load():
    """(library, None) or (None, why it cannot be loaded)."""
    path = os.environ.get("FASTMIX_CPU_LIB") or str(Path(__file__).resolve().parent / LIB_FILE)
    if not os.path.isfile(path):
        return None, f"the C++ CPU kernels are not built ({LIB_FILE} is missing: reinstall with a C++ compiler)"
    try:
        lib = ctypes.CDLL(path)
        version = lib.fastmix_cpu_version()
    except (OSError, AttributeError) as exc:
        return None, f"{LIB_FILE} cannot be loaded: {exc}"
    if version != ABI_VERSION:
        return None, f"{LIB_FILE} has ABI version {version}, this fastmix needs {ABI_VERSION}: rebuild it"
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = _INT
    return lib, None


def load_error() -> str | None:
    """Why the library cannot be used, or None."""
    return _load()[1]


def _lib():
    lib, err = _load()
    if lib is None:
        raise RuntimeError(f"fastmix backend 'cpu': {err}")
    return lib


POISON_OUTPUTS = False  # tests: every output starts as NaN, so an element the kernel skips shows


def _new(shape, memory_format=torch.contiguous_format) -> torch.Tensor:
    """A float32 output for a kernel to fill."""
    out = torch.empty(shape, dtype=torch.float32, memory_format=memory_format)
    return out.fill_(float("nan")) if POISON_OUTPUTS else out


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _f32(t: torch.Tensor) -> torch.Tensor:
    if t.dtype == torch.float32 and t.is_contiguous():  # the usual case: no dispatch at all
        return t
    return t.to(torch.float32).contiguous()


def _new_like(t: torch.Tensor) -> torch.Tensor:
    """A float32 output shaped as the contiguous float32 ``t``."""
    out = torch.empty_like(t)
    return out.fill_(float("nan")) if POISON_OUTPUTS else out


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if dtype == torch.float32 else t.to(dtype)


# --- sharpen -----------------------------------------------------------------------------


def sharpen_forward(logits: torch.Tensor, T: float) -> torch.Tensor:
    if logits.dtype == torch.float64 or logits.numel() == 0:
        return torch_backend.sharpen_forward(logits, T)
    z = _f32(logits)
    out = _new(z.shape)
    C = z.shape[-1]
    _lib().fastmix_cpu_sharpen_forward(z.data_ptr(), out.data_ptr(), z.numel() // C, C, T, torch.get_num_threads())
    return out.to(logits.dtype)


def sharpen_backward(grad: torch.Tensor, out: torch.Tensor, T: float) -> torch.Tensor:
    if out.dtype == torch.float64 or out.numel() == 0:
        return torch_backend.sharpen_backward(grad, out, T)
    g, y = _f32(grad), _f32(out)
    res = _new(y.shape)
    C = y.shape[-1]
    _lib().fastmix_cpu_sharpen_backward(
        g.data_ptr(), y.data_ptr(), res.data_ptr(), y.numel() // C, C, T, torch.get_num_threads()
    )
    return res.to(out.dtype)


# --- mixup -------------------------------------------------------------------------------


def _mixup_layout(x_forget: torch.Tensor, weight: torch.Tensor):
    """(memory format, P, Q, weight strides (b, p, q)) of x viewed as (B, P, Q) in memory:
    channels_last images stay channels_last, everything else is made contiguous."""
    fmt = torch.contiguous_format
    if x_forget.dim() == 4 and not x_forget.is_contiguous() and x_forget.is_contiguous(
        memory_format=torch.channels_last
    ):
        fmt = torch.channels_last
    if weight.dim() == 4:
        _, C, H, W = x_forget.shape
        if fmt == torch.channels_last:
            return fmt, H * W, C, (H * W, 1, 0)
        return fmt, C, H * W, (H * W, 0, 1)
    row = x_forget.numel() // x_forget.shape[0]
    return fmt, 1, row, ((1 if weight.dim() == 1 else 0), 0, 0)


def _native(x: torch.Tensor) -> bool:
    return x.dtype == torch.float32 and x.numel() > 0


def mixup_forward(x_forget, x_retain, weight, perm):
    if not _native(x_forget):
        return torch_backend.mixup_forward(x_forget, x_retain, weight, perm)
    fmt, P, Q, (wb, wp, wq) = _mixup_layout(x_forget, weight)
    xf = x_forget.contiguous(memory_format=fmt)
    xr = x_retain.contiguous(memory_format=fmt)
    w = _f32(weight)
    out = _new(x_forget.shape, fmt)
    _lib().fastmix_cpu_mixup_forward(
        xf.data_ptr(), xr.data_ptr(), w.data_ptr(), _ptr(perm.contiguous() if perm is not None else None),
        out.data_ptr(), xf.shape[0], P, Q, wb, wp, wq, torch.get_num_threads(),
    )
    return out


def mixup_backward(grad, x_forget, x_retain, weight, perm, needs):
    if not _native(x_forget):
        return torch_backend.mixup_backward(grad, x_forget, x_retain, weight, perm, needs)
    fmt, P, Q, (wb, wp, wq) = _mixup_layout(x_forget, weight)
    g = grad.to(torch.float32).contiguous(memory_format=fmt)
    xf = x_forget.contiguous(memory_format=fmt)
    xr = x_retain.contiguous(memory_format=fmt)
    w = _f32(weight)
    grad_f = _new(xf.shape, fmt) if needs[0] else None
    grad_r = _new(xr.shape, fmt) if needs[1] else None
    grad_w = _new(w.shape) if needs[2] else None
    _lib().fastmix_cpu_mixup_backward(
        g.data_ptr(), xf.data_ptr(), xr.data_ptr(), w.data_ptr(),
        _ptr(perm.contiguous() if perm is not None else None),
        _ptr(grad_f), _ptr(grad_r), _ptr(grad_w), xf.shape[0], P, Q, xr.shape[0], wb, wp, wq, w.numel(),
        torch.get_num_threads(),
    )
    empty = x_forget.new_empty(0)
    return (
        grad_f if grad_f is not None else empty,
        grad_r if grad_r is not None else x_retain.new_empty(0),
        grad_w.to(weight.dtype) if grad_w is not None else weight.new_empty(0),
    )


# --- the fused loss ----------------------------------------------------------------------

# the kernel's error codes: the argument that holds a bad value, and what is wrong
_LOSS_ERRORS = {
    1: "forget_target holds labels outside [0, {C})",
    2: "retain_target holds labels outside [0, {C})",
    3: "perm holds indices outside [0, {N})",
    4: "lam must lie in [0, 1] (it holds NaN or values outside)",
    5: "forget_target holds NaN, infinite or negative probabilities",
    6: "retain_target holds NaN, infinite or negative probabilities",
}


def checks_values(backend_dtype: torch.dtype) -> bool:
    """Whether this backend checks the loss inputs' values itself for logits of this dtype."""
    return backend_dtype != torch.float64


def loss_forward(mix_logits, forget_logits, retain_logits, forget_target, retain_target, lam, perm,
                 tau_mix, tau_real, omega, reduction, with_grad):
    """``L_mix + omega * L_real`` and its gradients: each row is read once for its terms;
    the retain rows' gradients are written in that visit, the mix and forget rows' in a
    second one after the batch's log-sum-exp."""
    if mix_logits.dtype == torch.float64:
        return torch_backend.loss_forward(mix_logits, forget_logits, retain_logits, forget_target, retain_target,
                                          lam, perm, tau_mix, tau_real, omega, reduction, with_grad)
    real = omega != 0
    mix = _f32(mix_logits)
    forget = _f32(forget_logits) if real else None
    retain = _f32(retain_logits) if real else None
    if forget_target.dtype == torch.int64:
        yf, yr, qf, qr = forget_target.contiguous(), retain_target.contiguous(), None, None
    else:
        yf, yr, qf, qr = None, None, _f32(forget_target), _f32(retain_target)
    lam32 = _f32(lam)
    perm_c = perm.contiguous() if perm is not None else None
    B, C = mix.shape
    N = retain_target.shape[0]
    loss = torch.empty((), dtype=torch.float32)
    if POISON_OUTPUTS:
        loss.fill_(float("nan"))
    g_mix = _new_like(mix) if with_grad else None
    g_f = _new_like(forget) if with_grad and real else None
    g_r = _new_like(retain) if with_grad and real else None
    call = _LossCall(
        mix.data_ptr(), _ptr(forget), _ptr(retain), _ptr(qf), _ptr(qr), _ptr(yf), _ptr(yr), lam32.data_ptr(),
        _ptr(perm_c), loss.data_ptr(), _ptr(g_mix), _ptr(g_f), _ptr(g_r),
        1 if lam32.dim() == 1 else 0, B, N, C, tau_mix, tau_real, omega,
        1 if reduction == "mean" else 0, 1, torch.get_num_threads(),
    )
    code = _lib().fastmix_cpu_loss_forward(ctypes.addressof(call))
    if code:
        raise ValueError(_LOSS_ERRORS.get(code, f"error {code}").format(C=C, N=N))
    if not with_grad:  # distinct tensors: a custom op's outputs may not alias one another
        return loss, mix_logits.new_empty(0), mix_logits.new_empty(0), mix_logits.new_empty(0)
    g_mix = _as(g_mix, mix_logits.dtype)
    if not real:
        return loss, g_mix, mix_logits.new_empty(0), mix_logits.new_empty(0)
    return loss, g_mix, _as(g_f, forget_logits.dtype), _as(g_r, retain_logits.dtype)


def contrastive_forward(logits, forget_target, retain_target, lam, perm, tau, reduction, with_grad):
    loss, grad, _, _ = loss_forward(logits, None, None, forget_target, retain_target, lam, perm,
                                    tau, 1.0, 0.0, reduction, with_grad)
    return loss, grad


def real_forward(retain_logits, forget_logits, retain_target, forget_target, tau, reduction, with_grad):
    # C_real alone: the fused kernel at lam = 0 on a mix term whose value and gradient are
    # dropped would cost a pass; the reference composes it instead
    return torch_backend.real_forward(retain_logits, forget_logits, retain_target, forget_target, tau, reduction,
                                      with_grad)


register("cpu", Kernels(
    sharpen_forward=sharpen_forward, sharpen_backward=sharpen_backward,
    mixup_forward=mixup_forward, mixup_backward=mixup_backward,
    contrastive_forward=contrastive_forward, real_forward=real_forward,
    loss_forward=loss_forward,
))
