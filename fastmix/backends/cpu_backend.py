"""The ``cpu`` backend: fused C++ kernels with OpenMP (csrc/cpu/), loaded with ctypes.

``setup.py`` builds ``csrc/cpu/fastmix_cpu.cpp`` into ``fastmix/backends/libfastmix_cpu.so``
where a C++ compiler exists (``FASTMIX_CPU=0`` skips it). The kernels work on contiguous
float32 data: other layouts are made contiguous first (channels_last images are kept as
they are), float16 and bfloat16 are computed in float32 and returned in their dtype, and
float64 data never reaches this backend (``resolve_backend`` gives it to the reference).
The threads are torch's (``torch.get_num_threads()``).

The kernels check the values of their inputs themselves (``Kernels.checks_values``):
mixup's ``perm`` range and its weight in [0, 1] without NaN, the loss's label and ``perm``
range and ``lam`` before a row is read, NaN, infinite or negative probabilities in the pass
that reads them. The ops skip their own scans of those values for this backend; a bad value
raises the same ``ValueError``, naming the argument, and the outputs the kernel was filling
are dropped. The kernels check whether or not ``trusted_inputs()`` is on: it costs them a
comparison per element they read anyway.

The default backend for CPU tensors when the library loads (``fastmix.backends``).
``FASTMIX_CPU_LIB`` names another build of the library to load.
"""
from __future__ import annotations

import ctypes
import functools
import os
import struct
from pathlib import Path

import torch

from . import Kernels, register, torch_backend

LIB_FILE = "libfastmix_cpu.so"
ABI_VERSION = 3  # fastmix_cpu_version() in csrc/cpu/fastmix_cpu.cpp

# Each kernel takes one pointer to a struct of its arguments (csrc/cpu/fastmix_cpu.cpp),
# packed here with ``struct``: ctypes converts each argument of a call for about 0.25 us,
# packing all of them into one ``bytes`` costs less than two such conversions, and a
# ``bytes`` is its own per-call buffer (no state shared between threads). P: a pointer
# (0 for none), q: int64, d: double; every field is 8 bytes wide.
_SHARPEN_CALL = struct.Struct("@PPPqqqd")  # FastmixSharpenCall: x, y, out, rows, C, nthreads, T
_MIXUP_CALL = struct.Struct("@PPPPPPPPPqqqqqqqq")  # FastmixMixupCall
_LOSS_CALL = struct.Struct("@PPPPPPPPPPPPPqqqqdddqqq")  # FastmixLossCall
_KERNELS = ("sharpen_forward", "sharpen_backward", "mixup_forward", "mixup_backward", "loss_forward")


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
    for name in _KERNELS:
        fn = getattr(lib, f"fastmix_cpu_{name}")
        fn.argtypes = [ctypes.c_char_p]  # the packed struct: a bytes object is passed as its buffer
        fn.restype = ctypes.c_int
    return lib, None


def load_error() -> str | None:
    """Why the library cannot be used, or None."""
    return _load()[1]


@functools.cache
def _fn(name: str):
    """The C entry point ``fastmix_cpu_<name>``, looked up once."""
    lib, err = _load()
    if lib is None:
        raise RuntimeError(f"fastmix backend 'cpu': {err}")
    return getattr(lib, f"fastmix_cpu_{name}")


POISON_OUTPUTS = False  # tests: every output starts as NaN, so an element the kernel skips shows

_F32 = torch.float32


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _f32(t: torch.Tensor, memory_format=torch.contiguous_format) -> torch.Tensor:
    if t.dtype == _F32 and t.is_contiguous(memory_format=memory_format):  # the usual case: no dispatch
        return t
    return t.to(_F32).contiguous(memory_format=memory_format)


def _new_like(t: torch.Tensor) -> torch.Tensor:
    """A float32 output shaped and laid out as the float32 ``t``."""
    out = torch.empty_like(t)
    return out.fill_(float("nan")) if POISON_OUTPUTS else out


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if dtype == _F32 else t.to(dtype)


# --- sharpen -----------------------------------------------------------------------------


def sharpen_forward(logits: torch.Tensor, T: float) -> torch.Tensor:
    if logits.dtype == torch.float64:
        return torch_backend.sharpen_forward(logits, T)
    z = _f32(logits)
    out = _new_like(z)
    C = z.shape[-1]
    _fn("sharpen_forward")(_SHARPEN_CALL.pack(
        z.data_ptr(), 0, out.data_ptr(), z.numel() // C if C else 0, C, torch.get_num_threads(), T))
    return _as(out, logits.dtype)


def sharpen_backward(grad: torch.Tensor, out: torch.Tensor, T: float) -> torch.Tensor:
    if out.dtype == torch.float64:
        return torch_backend.sharpen_backward(grad, out, T)
    g, y = _f32(grad), _f32(out)
    res = _new_like(y)
    C = y.shape[-1]
    _fn("sharpen_backward")(_SHARPEN_CALL.pack(
        g.data_ptr(), y.data_ptr(), res.data_ptr(), y.numel() // C if C else 0, C, torch.get_num_threads(), T))
    return _as(res, out.dtype)


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
    row = x_forget.numel() // x_forget.shape[0] if x_forget.shape[0] else 0
    return fmt, 1, row, ((1 if weight.dim() == 1 else 0), 0, 0)


# The kernels' error codes (csrc/cpu/fastmix_cpu.cpp): the argument that holds a bad value.
# The words are a fallback only: a flagged call reruns the op's own checks (_host_checks).
_ERRORS = {
    1: "forget_target holds labels outside [0, {C})",
    2: "retain_target holds labels outside [0, {C})",
    3: "perm holds indices outside [0, {N})",
    4: "lam must lie in [0, 1] (it holds NaN or values outside)",
    5: "forget_target holds NaN, infinite or negative probabilities",
    6: "retain_target holds NaN, infinite or negative probabilities",
    7: "weight must lie in [0, 1] (it holds NaN or values outside)",
}


def _host_checks(checks, values: bool | None = True) -> None:
    """Run the op's value checks ``checks`` ((name of a ``fastmix.ops._checks`` function, its
    arguments before ``values``), in the op's order): after a kernel flagged a bad value,
    so that the error is the one the host path gives (its first bad argument, its message
    with the values); and for float64 inputs, which the kernels see rounded to float32
    (``values=None``: as the op would decide)."""
    from fastmix.ops import _checks  # here: the op layer imports the backends

    for name, *args in checks:
        getattr(_checks, name)(*args, values)


def _raise_flagged(code: int, checks, **sizes):
    _host_checks(checks)
    raise ValueError(_ERRORS.get(code, "fastmix backend 'cpu': kernel error {code}").format(code=code, **sizes))


def _mixup_checks(weight, perm, B, pool):
    return [("perm", "perm", perm, B, pool), ("unit_interval", "weight", weight)]


def _mixup_call(name, grad, x_forget, x_retain, weight, perm, wants):
    """Run mixup kernel ``name`` on float32 data laid out alike; ``wants``: which of (out,
    grad_f, grad_r, grad_w) to make, returned as float32 tensors (None where not wanted).
    Raises the op's error on a bad value."""
    fmt, P, Q, (wb, wp, wq) = _mixup_layout(x_forget, weight)
    xf, xr, w = _f32(x_forget, fmt), _f32(x_retain, fmt), _f32(weight)
    g = _f32(grad, fmt) if grad is not None else None
    if perm is not None and not perm.is_contiguous():
        perm = perm.contiguous()
    outs = [_new_like(like) if want else None for like, want in zip((xf, xf, xr, w), wants)]  # xf, xr in fmt
    B, pool = xf.shape[0], xr.shape[0]
    code = _fn(name)(_MIXUP_CALL.pack(
        _ptr(g), xf.data_ptr(), xr.data_ptr(), w.data_ptr(), _ptr(perm), *map(_ptr, outs),
        B, P, Q, pool, wb, wp, wq, torch.get_num_threads(),
    ))
    if code:
        _raise_flagged(code, _mixup_checks(weight, perm, B, pool), N=pool, C=0)
    return outs


def mixup_forward(x_forget, x_retain, weight, perm):
    """Checks ``perm`` (in range) and the weight (in [0, 1], no NaN) in the kernel, in the
    pass that reads them: the ops leave those value checks to this backend
    (``Kernels.checks_values``)."""
    # float32 could round a float64 value into [0, 1]: checked as the op would, here rather
    # than in the op because this also runs inside a compiled graph, where the op reads no values
    if weight.dtype == torch.float64:
        _host_checks([("unit_interval", "weight", weight)], None)
    out = _mixup_call("mixup_forward", None, x_forget, x_retain, weight, perm, (True, False, False, False))[0]
    return _as(out, x_forget.dtype)


def mixup_backward(grad, x_forget, x_retain, weight, perm, needs):
    if x_forget.numel() == 0:  # zeros for the weight, perm checked by the forward
        return torch_backend.mixup_backward(grad, x_forget, x_retain, weight, perm, needs)
    _, grad_f, grad_r, grad_w = _mixup_call("mixup_backward", grad, x_forget, x_retain, weight, perm, (False, *needs))
    return (
        _as(grad_f, x_forget.dtype) if grad_f is not None else x_forget.new_empty(0),
        _as(grad_r, x_retain.dtype) if grad_r is not None else x_retain.new_empty(0),
        _as(grad_w, weight.dtype) if grad_w is not None else weight.new_empty(0),
    )


# --- the fused loss ----------------------------------------------------------------------

def _loss_checks(forget_target, retain_target, perm, lam, B, N, C):
    return [("target", "forget_target", forget_target, None, C), ("target", "retain_target", retain_target, None, C),
            ("perm", "perm", perm, B, N), ("unit_interval", "lam", lam)]


def loss_forward(mix_logits, forget_logits, retain_logits, forget_target, retain_target, lam, perm,
                 tau_mix, tau_real, omega, reduction, with_grad):
    """``L_mix + omega * L_real`` and its gradients: each row is read once for its terms;
    the retain rows' gradients are written in that visit, the mix and forget rows' in a
    second one after the batch's log-sum-exp."""
    if mix_logits.dtype == torch.float64:
        return torch_backend.loss_forward(mix_logits, forget_logits, retain_logits, forget_target, retain_target,
                                          lam, perm, tau_mix, tau_real, omega, reduction, with_grad)
    real = omega != 0
    B, C = mix_logits.shape
    N = retain_target.shape[0]
    if torch.float64 in (lam.dtype, forget_target.dtype, retain_target.dtype):  # float32 could round a bad value in
        _host_checks(_loss_checks(forget_target, retain_target, perm, lam, B, N, C), None)
    mix = _f32(mix_logits)
    forget = _f32(forget_logits) if real else None
    retain = _f32(retain_logits) if real else None
    if forget_target.dtype == torch.int64:
        yf, yr, qf, qr = forget_target.contiguous(), retain_target.contiguous(), None, None
    else:
        yf, yr, qf, qr = None, None, _f32(forget_target), _f32(retain_target)
    lam32 = _f32(lam)
    perm_c = perm.contiguous() if perm is not None else None
    loss = torch.empty((), dtype=torch.float32)
    if POISON_OUTPUTS:
        loss.fill_(float("nan"))
    g_mix = _new_like(mix) if with_grad else None
    g_f = _new_like(forget) if with_grad and real else None
    g_r = _new_like(retain) if with_grad and real else None
    code = _fn("loss_forward")(_LOSS_CALL.pack(
        mix.data_ptr(), _ptr(forget), _ptr(retain), _ptr(qf), _ptr(qr), _ptr(yf), _ptr(yr), lam32.data_ptr(),
        _ptr(perm_c), loss.data_ptr(), _ptr(g_mix), _ptr(g_f), _ptr(g_r),
        1 if lam32.dim() == 1 else 0, B, N, C, tau_mix, tau_real, omega,
        1 if reduction == "mean" else 0, 1, torch.get_num_threads(),
    ))
    if code:
        _raise_flagged(code, _loss_checks(forget_target, retain_target, perm, lam, B, N, C), C=C, N=N)
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
    loss_forward=loss_forward, checks_values=True,
))
