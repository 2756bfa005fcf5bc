"""Which implementation runs an op: the PyTorch reference, Triton or CUDA C++.

Each backend module registers its kernels with :func:`register` when it is imported
(``torch_backend``, ``triton_backend``, ``cuda_backend``); :func:`kernels_for` imports a
backend on its first use, so Triton and the CUDA library load only when asked for.

Resolution order for each call: the ``backend=`` keyword, else the
``FASTMIX_BACKEND`` environment variable, else the fastest backend usable on
the tensor's device (``cuda`` > ``triton`` > ``torch`` on a GPU; ``torch`` on
the CPU and for float64 data). Asking for a backend that cannot run raises ``RuntimeError`` with
the reason.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable

import torch

BACKENDS = ("torch", "triton", "cuda")


@dataclass(frozen=True)
class BackendStatus:
    name: str
    usable: bool
    reason: str


def _triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return f"triton is not importable ({exc.__class__.__name__}: {exc})"
    return None


def _cuda_library_error() -> str | None:
    from . import cuda_backend

    return cuda_backend.load_error()


@dataclass(frozen=True)
class Kernels:
    """The functions every backend provides; their signatures are those of
    :mod:`fastmix.backends.torch_backend`, the reference."""

    sharpen_forward: Callable
    sharpen_backward: Callable
    mixup_forward: Callable
    mixup_backward: Callable
    contrastive_forward: Callable
    real_forward: Callable
    # L_mix + omega * L_real as one op; None where a backend has no fused version yet
    loss_forward: Callable | None = None


_REGISTERED: dict[str, Kernels] = {}


def register(name: str, kernels: Kernels) -> None:
    """Called by a backend module at import: ``name`` runs ``kernels``."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _REGISTERED[name] = kernels


def _import_backend(name: str) -> None:
    if name == "torch":
        from . import torch_backend  # noqa: F401
    elif name == "triton":
        from . import triton_backend  # noqa: F401
    elif name == "cuda":
        from . import cuda_backend  # noqa: F401


def kernels_for(backend: str) -> Kernels:
    """The kernels of a resolved backend name (see :func:`resolve_backend`)."""
    kernels = _REGISTERED.get(backend)
    if kernels is None:
        _import_backend(backend)
        kernels = _REGISTERED[backend]
    return kernels


def backend_status(name: str, device: torch.device | str | None = None) -> BackendStatus:
    """Whether backend ``name`` can run ops on ``device`` (default: the best device here)."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if device is None:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if name == "torch":
        return BackendStatus(name, True, "PyTorch reference: runs on every device")
    if name == "triton":
        err = _triton_import_error()
        if err:
            return BackendStatus(name, False, err)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                return BackendStatus(name, False, "no CUDA device is visible to torch")
            return BackendStatus(name, True, "Triton kernels compiled for the GPU")
        if device.type == "cpu":
            if _triton_interpreting():
                return BackendStatus(name, True, "Triton kernels under the interpreter (TRITON_INTERPRET=1)")
            return BackendStatus(
                name, False, "Triton needs a CUDA tensor; on CPU tensors it runs only under TRITON_INTERPRET=1"
            )
        return BackendStatus(name, False, f"Triton does not run on {device.type} tensors")
    # cuda
    err = _cuda_library_error()
    if err:
        return BackendStatus(name, False, err)
    if device.type != "cuda":
        return BackendStatus(name, False, f"the CUDA kernels need a CUDA tensor, not a {device.type} one")
    if not torch.cuda.is_available():
        return BackendStatus(name, False, "no CUDA device is visible to torch")
    return BackendStatus(name, True, "compiled CUDA C++ kernels")


def backends(device: torch.device | str | None = None) -> dict[str, BackendStatus]:
    """Every backend with whether it can run here (on ``device``) and why or why not."""
    return {name: backend_status(name, device) for name in BACKENDS}


def resolve_backend(backend: str | None, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """The concrete backend for one call on ``device``; raises if the requested one cannot run.

    The default never picks a kernel backend for float64 data: only the reference computes in it.
    """
    requested = backend if backend is not None else os.environ.get("FASTMIX_BACKEND") or None
    if requested is not None:
        if not isinstance(requested, str) or requested not in BACKENDS + ("auto",):
            raise ValueError(f"backend must be one of {BACKENDS} or 'auto', got {requested!r}")
        if requested != "auto":
            status = backend_status(requested, device)
            if not status.usable:
                raise RuntimeError(f"fastmix backend {requested!r} cannot run on {device}: {status.reason}")
            return requested
    if device.type == "cuda" and dtype != torch.float64:
        for name in ("cuda", "triton"):
            if backend_status(name, device).usable:
                return name
    return "torch"
