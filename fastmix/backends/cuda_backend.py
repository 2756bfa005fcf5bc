"""The ``cuda`` backend: fastmix's compiled CUDA C++ kernels (csrc/), loaded with ctypes.

``setup.py`` builds csrc into ``fastmix/backends/libfastmix_cuda.so``, a shared library of C
launchers that needs no CUDA build of torch to compile. This module loads it at
import, allocates outputs with torch, and passes raw pointers, sizes, strides and
``torch.cuda.current_stream().cuda_stream`` to the launchers. It offers the same
functions as :mod:`fastmix.backends.torch_backend`, with the same arguments and results.

No function here synchronises with the host, so the ops can be captured in a CUDA
graph; every launcher's error is raised as a ``RuntimeError`` naming the op.
float64 inputs and empty batches go to the PyTorch reference (on the same device).

Index errors (the device flag): labels and ``perm`` are read from GPU memory, so
their range is checked inside the kernels. An out-of-range index is never used to
read or write memory: the kernel fills what depends on it with NaN (the loss and
its gradient, or the mixed rows) and sets a per-device flag. The flag is read, and
reported as an ``IndexError``, at points that synchronise: after every op of this
backend while ``fastmix.debug_checks(True)`` is on, and whenever
:func:`check_index_error` is called. (With debug checks on, the public functions
reject bad indices with a ValueError before any kernel runs; the flag is the guard
for GPU calls made without them.)

``FASTMIX_CUDA_LIB`` names another build of the library to load (for tests), and
``FASTMIX_CUDA_EMULATE=1`` lets CPU tensors through to a build made with
tests/cuda_emulate.h, which runs the kernels on the host (tests only).
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

import torch

from fastmix.ops.debug import debug_checks_enabled

from . import Kernels, register, torch_backend

ABI_VERSION = 2  # FASTMIX_ABI_VERSION in csrc/fastmix_cuda.h
BAD_ARGUMENT = -1
_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3, torch.int64: 4}
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_FLAG_BITS = {1: "a label outside [0, C)", 2: "a perm index outside the retain pool"}

_i, _i64, _f, _p = ctypes.c_int, ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
_SIGNATURES = {
    "fastmix_cuda_abi_version": (_i, []),
    "fastmix_cuda_runtime_version": (_i, []),
    "fastmix_cuda_driver_version": (_i, [ctypes.POINTER(_i)]),
    "fastmix_cuda_error_string": (ctypes.c_char_p, [_i]),
    "fastmix_cuda_flag_address": (_i, [_i, ctypes.POINTER(_p)]),
    "fastmix_cuda_read_flag": (_i, [_i, _p, ctypes.POINTER(_i), _i]),
    "fastmix_sharpen_forward": (_i, [_i, _p, _i, _p, _i64, _i64, _i64, _i64, _f, _p]),
    "fastmix_sharpen_backward": (_i, [_i, _p, _i, _p, _i64, _i64, _p, _i64, _i64, _i64, _i64, _f, _p]),
    "fastmix_mixup_forward": (
        _i,
        [_i, _p, _i, _p, _p, _p, _i64, _i64, _p, _i64, _p, _i, _i, _i64, _i, _i64, _i64, _p],
    ),
    "fastmix_mixup_backward": (
        _i,
        [_i, _p, _i, _p, _p, _p, _i64, _i64, _p, _i64, _p, _i, _i, _i64, _i, _i64, _i64, _p, _p, _p, _p, _p],
    ),
    "fastmix_loss_workspace_floats": (_i64, [_i64, _i64, _i64]),
    "fastmix_loss_forward": (
        _i,
        [_i, _p, _i, _i, _p, _i64, _i64, _i64, _p, _i64, _i64, _i64, _i64, _p, _i, _i64, _i64, _p, _i64,
         _p, _i, _i64, _i64, _p, _i, _i64, _f, _f, _p, _p, _p, _p, _p],
    ),
    "fastmix_unlearn_loss_forward": (
        _i,
        [_i, _p, _i, _p, _i64, _i64, _i64, _p, _i64, _i64, _i64, _p, _i64, _i64, _i64, _i64,
         _p, _i, _i64, _i64, _p, _i64, _p, _i, _i64, _i64, _p, _i, _i64, _f, _f, _f, _f,
         _p, _p, _p, _p, _p, _p],
    ),
}
LAUNCHERS = tuple(_SIGNATURES)


def library_path() -> Path:
    """Where the compiled library is looked for."""
    override = os.environ.get("FASTMIX_CUDA_LIB")
    return Path(override) if override else Path(__file__).resolve().parent / "libfastmix_cuda.so"


def _load():
    """(library or None, why it cannot be used or None)."""
    path = library_path()
    if not path.is_file():
        return None, (
            "fastmix was installed without its CUDA kernels (no nvcc at install time, or FASTMIX_CUDA=0); "
            "reinstall with nvcc on PATH to build them"
        )
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        return None, f"the CUDA kernel library {path.name} does not load: {exc}"
    try:
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
    except AttributeError as exc:
        return None, f"the CUDA kernel library {path.name} lacks a launcher ({exc}); rebuild fastmix"
    if lib.fastmix_cuda_abi_version() != ABI_VERSION:
        return None, f"the CUDA kernel library {path.name} is from another fastmix version; rebuild fastmix"
    built = lib.fastmix_cuda_runtime_version()
    driver = _i(0)
    lib.fastmix_cuda_driver_version(ctypes.byref(driver))
    if driver.value == 0:
        return lib, "the CUDA kernels are built, but no NVIDIA driver was found"
    if driver.value < built:
        return lib, (
            f"the NVIDIA driver supports CUDA {_version(driver.value)} but the kernels were built with CUDA "
            f"{_version(built)}: update the driver or reinstall fastmix with an older nvcc"
        )
    return lib, None


def _version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


_LIB, _ERROR = _load()
_EMULATED = os.environ.get("FASTMIX_CUDA_EMULATE") == "1"


def load_error() -> str | None:
    """None when the compiled CUDA kernels can run here, else why they cannot."""
    return _ERROR


def library_loaded() -> bool:
    """Whether the compiled library was found and loaded (a driver may still be missing)."""
    return _LIB is not None


# --- plumbing ------------------------------------------------------------------------------

_flag_addresses: dict[int, int] = {}


def _lib():
    if _LIB is None or _ERROR is not None:
        raise RuntimeError(f"fastmix's cuda backend cannot run: {_ERROR}")
    return _LIB


def _raise_on(code: int, op: str) -> None:
    if code != 0:
        msg = _LIB.fastmix_cuda_error_string(code).decode(errors="replace")
        raise RuntimeError(f"fastmix cuda {op}: {msg} (error {code})")


def _device(t: torch.Tensor) -> int:
    if _EMULATED and t.device.type == "cpu":
        return 0
    if t.device.type != "cuda":
        raise RuntimeError(f"fastmix's cuda backend needs CUDA tensors, got one on {t.device}")
    return t.device.index


def _stream(device: int) -> int | None:
    if _EMULATED:
        return None
    return torch.cuda.current_stream(device).cuda_stream


def _flag(device: int) -> int:
    addr = _flag_addresses.get(device)
    if addr is None:
        out = _p()
        _raise_on(_lib().fastmix_cuda_flag_address(device, ctypes.byref(out)), "index-error flag")
        addr = _flag_addresses[device] = out.value
    return addr


def check_index_error(device: int | torch.device | None = None, *, op: str = "kernels") -> None:
    """Raise IndexError if a kernel on ``device`` met an out-of-range label or ``perm`` index.

    Synchronises with the current stream of ``device`` (default: the current device)
    and clears the flag. Called after every op of this backend under
    ``fastmix.debug_checks(True)``.
    """
    if device is None:
        device = 0 if _EMULATED else torch.cuda.current_device()
    device = device.index if isinstance(device, torch.device) else int(device)
    value = _i(0)
    _raise_on(_lib().fastmix_cuda_read_flag(device, _stream(device), ctypes.byref(value), 1), op)
    if value.value:
        what = " and ".join(text for bit, text in _FLAG_BITS.items() if value.value & bit)
        raise IndexError(f"fastmix cuda {op}: the kernels met {what}; the affected outputs are NaN")


def _after(op: str, device: int) -> None:
    if debug_checks_enabled():
        check_index_error(device, op=op)


def _code(t: torch.Tensor) -> int:
    return _DTYPE_CODES[t.dtype]


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _runs_here(*tensors: torch.Tensor) -> bool:
    """False for what the kernels do not take (float64, empty tensors): those go to the torch_backend."""
    return all(t.dtype in _KERNEL_DTYPES and t.numel() > 0 for t in tensors)


# --- sharpen -------------------------------------------------------------------------------


def sharpen_forward(logits: torch.Tensor, T: float) -> torch.Tensor:
    if not _runs_here(logits):
        return torch_backend.sharpen_forward(logits, T)
    lib, dev = _lib(), _device(logits)
    C = logits.shape[-1]
    x = logits.reshape(-1, C)
    out = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    code = lib.fastmix_sharpen_forward(
        dev, _stream(dev), _code(x), x.data_ptr(), x.shape[0], C, x.stride(0), x.stride(1), 1.0 / T, out.data_ptr()
    )
    _raise_on(code, "sharpen")
    return out


def sharpen_backward(grad: torch.Tensor, out: torch.Tensor, T: float) -> torch.Tensor:
    if not _runs_here(out):
        return torch_backend.sharpen_backward(grad, out, T)
    lib, dev = _lib(), _device(out)
    C = out.shape[-1]
    g = grad.to(out.dtype).reshape(-1, C)
    y = out.reshape(-1, C)
    res = torch.empty(out.shape, dtype=out.dtype, device=out.device)
    code = lib.fastmix_sharpen_backward(
        dev, _stream(dev), _code(y), g.data_ptr(), g.stride(0), g.stride(1), y.data_ptr(), y.stride(0),
        y.stride(1), y.shape[0], C, 1.0 / T, res.data_ptr(),
    )
    _raise_on(code, "sharpen_backward")
    return res


# --- mixup ---------------------------------------------------------------------------------


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last when x is stored so (and not also plainly contiguous), else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class _MixLayout:
    """The dense inputs and the weight description the mixup launchers take."""

    def __init__(self, x_forget, x_retain, weight, perm):
        self.fmt = _memory_format(x_forget)
        self.xf = x_forget.contiguous(memory_format=self.fmt)
        self.xr = x_retain.contiguous(memory_format=self.fmt)
        self.B = x_forget.shape[0]
        self.inner = self.xf.numel() // self.B
        self.perm = None if perm is None else perm.contiguous()
        self.pool = x_retain.shape[0]
        self.channels_last = int(self.fmt == torch.channels_last)
        self.Cc, self.HW, self.w_stride = 0, 0, 0
        if weight.dim() == 0:
            self.kind, self.w = 0, weight
        elif weight.dim() == 1:
            self.kind, self.w, self.w_stride = 1, weight, weight.stride(0)
        else:
            self.kind = 2
            self.Cc, self.HW = x_forget.shape[1], x_forget.shape[2] * x_forget.shape[3]
            self.w = weight.reshape(self.B, self.HW).contiguous()

    def args(self):
        """The launcher arguments from B to HW."""
        return (
            self.B, self.inner, _ptr(self.perm), self.pool, self.w.data_ptr(), _code(self.w), self.kind,
            self.w_stride, self.channels_last, self.Cc, self.HW,
        )


def mixup_forward(x_forget, x_retain, weight, perm):
    if not _runs_here(x_forget, x_retain):
        return torch_backend.mixup_forward(x_forget, x_retain, weight, perm)
    lib, dev = _lib(), _device(x_forget)
    lay = _MixLayout(x_forget, x_retain, weight, perm)
    out = torch.empty_like(lay.xf)
    code = lib.fastmix_mixup_forward(
        dev, _stream(dev), _code(lay.xf), lay.xf.data_ptr(), lay.xr.data_ptr(), out.data_ptr(), *lay.args(), _flag(dev)
    )
    _raise_on(code, "mixup")
    _after("mixup", dev)
    return out


def mixup_backward(grad, x_forget, x_retain, weight, perm, needs):
    """Gradients to (x_forget, x_retain, weight); an empty tensor where ``needs`` is False."""
    if not _runs_here(x_forget, x_retain):
        return torch_backend.mixup_backward(grad, x_forget, x_retain, weight, perm, needs)
    lib, dev = _lib(), _device(x_forget)
    lay = _MixLayout(x_forget, x_retain, weight, perm)
    g = grad.to(lay.xf.dtype).contiguous(memory_format=lay.fmt)
    grad_f = torch.empty_like(lay.xf) if needs[0] else None
    grad_r_native = grad_r_acc = None
    if needs[1]:
        if lay.perm is None:
            grad_r_native = torch.empty_like(lay.xr)
        else:  # repeats in perm: float32 atomic adds, then the input's dtype
            grad_r_acc = torch.zeros_like(lay.xr, dtype=torch.float32)
    grad_w = None
    if needs[2]:
        if lay.kind == 2:
            grad_w = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
        else:
            grad_w = torch.zeros(lay.B, dtype=torch.float64, device=weight.device)  # sums that cancel
    code = lib.fastmix_mixup_backward(
        dev, _stream(dev), _code(lay.xf), g.data_ptr(), lay.xf.data_ptr(), lay.xr.data_ptr(), *lay.args(),
        _ptr(grad_f), _ptr(grad_r_acc), _ptr(grad_r_native), _ptr(grad_w), _flag(dev),
    )
    _raise_on(code, "mixup_backward")
    _after("mixup_backward", dev)
    if grad_r_acc is not None:
        grad_r_native = grad_r_acc.to(x_retain.dtype)
    if grad_w is not None and lay.kind != 2:
        grad_w = (grad_w.sum() if lay.kind == 0 else grad_w).to(weight.dtype)
    return (  # distinct empties: a custom op's outputs may not alias each other
        x_forget.new_empty(0) if grad_f is None else grad_f,
        x_retain.new_empty(0) if grad_r_native is None else grad_r_native,
        weight.new_empty(0) if grad_w is None else grad_w,
    )


# --- the contrastive family ----------------------------------------------------------------


def _target_args(t: torch.Tensor):
    """(pointer, dtype code, row stride, column stride) of a label or probability target."""
    if t.dtype == torch.int64:
        return t.data_ptr(), _code(t), t.stride(0), 0
    return t.data_ptr(), _code(t), t.stride(0), t.stride(1)


def _loss_call(op, mode, logits0, logits1, keep_t, forget_t, perm, lam, tau, scale, with_grad):
    lib, dev = _lib(), _device(logits0)
    B0, C = logits0.shape
    B1 = 0 if logits1 is None else logits1.shape[0]
    loss = torch.empty((), dtype=torch.float32, device=logits0.device)
    grad0 = torch.empty((B0, C), dtype=logits0.dtype, device=logits0.device) if with_grad else None
    grad1 = None
    if with_grad and logits1 is not None:
        grad1 = torch.empty((B1, C), dtype=logits1.dtype, device=logits1.device)
    n_ws = lib.fastmix_loss_workspace_floats(B0, B1, C)
    ws = torch.empty(n_ws, dtype=torch.float32, device=logits0.device) if n_ws else None
    perm = None if perm is None else perm.contiguous()
    lam_args = (None, 0, 0) if lam is None else _lam_args(lam)
    l1 = (None, 0, 0, 0) if logits1 is None else (logits1.data_ptr(), B1, logits1.stride(0), logits1.stride(1))
    code = lib.fastmix_loss_forward(
        dev, _stream(dev), _code(logits0), mode, logits0.data_ptr(), B0, logits0.stride(0), logits0.stride(1),
        *l1, C, *_target_args(keep_t), _ptr(perm), keep_t.shape[0], *_target_args(forget_t), *lam_args,
        tau, scale, loss.data_ptr(), _ptr(grad0), _ptr(grad1), _ptr(ws), _flag(dev),
    )
    _raise_on(code, op)
    _after(op, dev)
    return loss, grad0, grad1


def contrastive_forward(logits, forget_target, retain_target, lam, perm, tau, reduction, with_grad):
    """C_tau on mixed predictions and d C / d logits (see fastmix.backends.torch_backend.contrastive_forward)."""
    if not _runs_here(logits):
        return torch_backend.contrastive_forward(
            logits, forget_target, retain_target, lam, perm, tau, reduction, with_grad
        )
    B = logits.shape[0]
    scale = 1.0 / B if reduction == "mean" else 1.0
    loss, grad, _ = _loss_call(
        "contrastive_loss", 0, logits, None, retain_target, forget_target, perm, lam, tau, scale, with_grad
    )
    return loss, (grad if with_grad else logits.new_empty(0))


def real_forward(retain_logits, forget_logits, retain_target, forget_target, tau, reduction, with_grad):
    """C_tau on real data and its gradients to both logits (see fastmix.backends.torch_backend.real_forward)."""
    if not _runs_here(retain_logits, forget_logits):
        return torch_backend.real_forward(
            retain_logits, forget_logits, retain_target, forget_target, tau, reduction, with_grad
        )
    scale = 1.0 / retain_logits.shape[0] if reduction == "mean" else 1.0
    loss, grad_r, grad_f = _loss_call(
        "real_loss", 1, retain_logits, forget_logits, retain_target, forget_target, None, None, tau, scale,
        with_grad,
    )
    if not with_grad:  # distinct empties: a custom op's outputs may not alias each other
        return loss, retain_logits.new_empty(0), forget_logits.new_empty(0)
    return loss, grad_r, grad_f


def _lam_args(lam: torch.Tensor):
    return lam.data_ptr(), _code(lam), 0 if lam.dim() == 0 else lam.stride(0)


def _check_loss_shapes(B, C, Br, Bf, real, retain_logits, forget_logits, forget_target, retain_target, lam, perm):
    """Shapes the kernels index by (host-side, no synchronisation): a mismatch would read out of bounds."""
    def rows_of(t, name, n):
        ok = t.dim() == 1 if t.dtype == torch.int64 else (t.dim() == 2 and t.shape[1] == C)
        if not ok or t.shape[0] != n:
            raise ValueError(f"{name} must hold {n} rows of {C} classes (or {n} labels), got shape {tuple(t.shape)}")

    rows_of(forget_target, "forget_target", B)
    if real:
        for name, z in (("retain_logits", retain_logits), ("forget_logits", forget_logits)):
            if z.dim() != 2 or z.shape[1] != C:
                raise ValueError(f"{name} must be (rows, {C}) like mix_logits, got shape {tuple(z.shape)}")
        if Bf != B:
            raise ValueError(f"forget_logits must have {B} rows (forget_target's), got {Bf}")
        rows_of(retain_target, "retain_target", Br)
    else:  # with perm, any pool of rows
        rows_of(retain_target, "retain_target", B if perm is None else retain_target.shape[0])
    if (forget_target.dtype == torch.int64) != (retain_target.dtype == torch.int64):
        raise ValueError("forget_target and retain_target must both be labels or both be probabilities")
    if lam.dim() > 1 or (lam.dim() == 1 and lam.shape[0] != B):
        raise ValueError(f"lam must be 0-d or ({B},), got shape {tuple(lam.shape)}")
    if perm is not None and (perm.dim() != 1 or perm.shape[0] != B or perm.dtype != torch.int64):
        raise ValueError(f"perm must be an int64 ({B},) tensor, got {perm.dtype} of shape {tuple(perm.shape)}")


def loss_forward(mix_logits, forget_logits, retain_logits, forget_target, retain_target, lam, perm,
                 tau_mix, tau_real, omega, reduction, with_grad):
    """``L_mix + omega * L_real`` and its gradients to the three logits in one op (one launch for
    small batches); see :func:`fastmix.backends.torch_backend.loss_forward`."""
    real = omega != 0
    logits = (mix_logits, retain_logits, forget_logits) if real else (mix_logits,)
    if not _runs_here(*logits) or any(z.dtype != mix_logits.dtype for z in logits):
        return torch_backend.loss_forward(mix_logits, forget_logits, retain_logits, forget_target, retain_target,
                                          lam, perm, tau_mix, tau_real, omega, reduction, with_grad)
    lib, dev = _lib(), _device(mix_logits)
    B, C = mix_logits.shape
    Br, Bf = (retain_logits.shape[0], forget_logits.shape[0]) if real else (0, 0)
    _check_loss_shapes(B, C, Br, Bf, real, retain_logits, forget_logits, forget_target, retain_target, lam, perm)
    mean = reduction == "mean"
    scale_mix = 1.0 / B if mean else 1.0
    scale_real = omega / Br if real and mean else float(omega)
    dev_kw = {"device": mix_logits.device}
    loss = torch.empty((), dtype=torch.float32, **dev_kw)
    grad_mix = torch.empty((B, C), dtype=mix_logits.dtype, **dev_kw) if with_grad else None
    grad_retain = torch.empty((Br, C), dtype=mix_logits.dtype, **dev_kw) if with_grad and real else None
    grad_forget = torch.empty((Bf, C), dtype=mix_logits.dtype, **dev_kw) if with_grad and real else None
    n_ws = lib.fastmix_loss_workspace_floats(B, Br + Bf, C)
    ws = torch.empty(n_ws, dtype=torch.float32, **dev_kw) if n_ws else None
    perm = None if perm is None else perm.contiguous()

    def rows(z):
        return (None, 0, 0, 0) if not real else (z.data_ptr(), z.shape[0], z.stride(0), z.stride(1))

    code = lib.fastmix_unlearn_loss_forward(
        dev, _stream(dev), _code(mix_logits), mix_logits.data_ptr(), B, mix_logits.stride(0), mix_logits.stride(1),
        *rows(retain_logits), *rows(forget_logits), C, *_target_args(retain_target), _ptr(perm),
        retain_target.shape[0], *_target_args(forget_target), *_lam_args(lam), tau_mix, scale_mix, tau_real,
        scale_real, loss.data_ptr(), _ptr(grad_mix), _ptr(grad_retain), _ptr(grad_forget), _ptr(ws), _flag(dev),
    )
    _raise_on(code, "loss")
    _after("loss", dev)

    def out(g):  # distinct empties: a custom op's outputs may not alias each other
        return mix_logits.new_empty(0) if g is None else g

    return loss, out(grad_mix), out(grad_forget), out(grad_retain)


register("cuda", Kernels(
    sharpen_forward=sharpen_forward, sharpen_backward=sharpen_backward,
    mixup_forward=mixup_forward, mixup_backward=mixup_backward,
    contrastive_forward=contrastive_forward, real_forward=real_forward,
    loss_forward=loss_forward,
))
