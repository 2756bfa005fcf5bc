"""Which implementation runs an op: the PyTorch reference, Triton, CUDA C++ or C++ on the CPU.

Each backend module registers its kernels with :func:`register` when it is imported
(``torch_backend``, ``triton_backend``, ``cuda_backend``, ``cpu_backend``); :func:`kernels_for` imports a
backend on its first use, so Triton and the CUDA library load only when asked for.

Resolution order for each call: the ``backend=`` keyword, else the
``FASTMIX_BACKEND`` environment variable, else the fastest backend usable on
the tensor's device: ``cuda`` > ``triton`` > ``torch`` on a GPU; ``cpu`` on the CPU when
its library loads, else ``torch``; ``torch`` for float64 data everywhere. Asking for a
backend that cannot run raises ``RuntimeError`` with the reason.

Why ``cpu`` is the CPU default: its fused C++ kernels (OpenMP, ``csrc/cpu/``, built by
``setup.py`` where a C++ compiler exists) check the input values inside the passes that
read them and take one ctypes call per kernel, so a call costs less host time than the
reference's chain of PyTorch ops with its value scans, and at the large sizes each op is one
pass over the data instead of several. It rounds differently from the reference (sums in
another order, its own exp): results agree to float32 rounding, not bit for bit. The
reference stays one setting away (``backend="torch"``, ``FASTMIX_BACKEND=torch``), and is
the default wherever the library is missing or fails to load (``fastmix info`` says why).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

BACKENDS = ("torch", "triton", "cuda", "cpu")


@dataclass(frozen=True)
class BackendStatus:
    name: str
    usable: bool
    reason: str


def _triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def _triton_import_error() -> str | None:
    try:
        import triton
        import triton.language  # noqa: F401
    except Exception as exc:  # noqa: BLE001 (ImportError, or a broken install)
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
    # (mix, forget, retain, forget_target, retain_target, lam, perm, tau_mix, tau_real, omega,
    # reduction, with_grad) -> (loss, grad_mix, grad_forget, grad_retain); None: composed by
    # kernels_for() from contrastive_forward and real_forward
    loss_forward: Callable | None = None
    # True: mixup_forward, contrastive_forward and loss_forward check the values the ops would otherwise scan on
    # the host (perm and label range, weight and lam in [0, 1], NaN, infinite or negative
    # probabilities) and raise the ops' errors, so the ops skip those scans for this backend
    checks_values: bool = False


def compose_loss_forward(contrastive_forward: Callable, real_forward: Callable) -> Callable:
    """``loss_forward`` from a backend's two loss kernels: ``C_mix + omega * C_real``.

    Used for the torch reference and for a backend that registers no fused kernel;
    multiplies by ``omega`` after the kernels (skipped for ``omega == 1``) so that the
    result rounds as ``contrastive_forward(...) + omega * real_forward(...)`` does.
    """

    def loss_forward(mix_logits, forget_logits, retain_logits, forget_target, retain_target, lam, perm,
                     tau_mix, tau_real, omega, reduction, with_grad):
        loss, grad_mix = contrastive_forward(
            mix_logits, forget_target, retain_target, lam, perm, tau_mix, reduction, with_grad
        )
        if omega == 0:  # distinct tensors: a custom op's outputs may not alias one another
            return loss, grad_mix, mix_logits.new_empty(0), mix_logits.new_empty(0)
        loss_real, grad_retain, grad_forget = real_forward(
            retain_logits, forget_logits, retain_target, forget_target, tau_real, reduction, with_grad
        )
        if omega != 1:
            loss_real = loss_real * omega
            if with_grad:
                grad_retain, grad_forget = grad_retain * omega, grad_forget * omega
        return loss + loss_real, grad_mix, grad_forget, grad_retain

    return loss_forward


_REGISTERED: dict[str, Kernels] = {}
_FUSED_LOSS: dict[str, bool] = {}


def register(name: str, kernels: Kernels) -> None:
    """Called by a backend module at import: ``name`` runs ``kernels``."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _FUSED_LOSS[name] = kernels.loss_forward is not None
    _RESOLVED.clear()
    if kernels.loss_forward is None:
        kernels = dataclasses.replace(
            kernels, loss_forward=compose_loss_forward(kernels.contrastive_forward, kernels.real_forward)
        )
    _REGISTERED[name] = kernels


def _import_backend(name: str) -> None:
    if name == "torch":
        from . import torch_backend  # noqa: F401
    elif name == "triton":
        from . import triton_backend  # noqa: F401
    elif name == "cuda":
        from . import cuda_backend  # noqa: F401
    elif name == "cpu":
        from . import cpu_backend  # noqa: F401


def has_fused_loss(backend: str) -> bool:
    """Whether ``backend`` registered a fused ``loss_forward`` (else it is composed)."""
    kernels_for(backend)
    return _FUSED_LOSS[backend]


def kernels_for(backend: str) -> Kernels:
    """The kernels of a resolved backend name (see :func:`resolve_backend`); ``loss_forward``
    is always set (composed from the two loss kernels where the backend has none)."""
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
    if name == "cpu":
        from . import cpu_backend

        err = cpu_backend.load_error()
        if err:
            return BackendStatus(name, False, err)
        if device.type != "cpu":
            return BackendStatus(name, False, f"the C++ CPU kernels need a CPU tensor, not a {device.type} one")
        return BackendStatus(name, True, "fused C++ CPU kernels (the default on the CPU)")
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


@functools.cache
def _cpu_library_loads() -> bool:
    """Whether the C++ CPU kernels load (decided once per process, as cpu_backend's loading is)."""
    from . import cpu_backend

    return cpu_backend.load_error() is None


# os.environ's own store and its key for FASTMIX_BACKEND: os.environ.get costs about 1 us
# when the variable is unset (it raises and catches KeyError inside), as much as the rest
# of resolve_backend; the store is what os.environ reads and writes, so a change made
# through os.environ (or monkeypatch.setenv) is seen at the next call all the same.
_ENV_STORE = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey("FASTMIX_BACKEND") if _ENV_STORE is not None else None


def _env_backend() -> str | None:
    """FASTMIX_BACKEND, read on every call; None when unset or empty."""
    if _ENV_STORE is None:
        return os.environ.get("FASTMIX_BACKEND") or None
    raw = _ENV_STORE.get(_ENV_KEY)
    return os.environ.decodevalue(raw) if raw else None


# (requested name or None, device, dtype) -> backend: what resolve_backend found for a call
# like it. The requested name (the backend= argument, else FASTMIX_BACKEND read on every
# call) is part of the key, so changing either takes effect at the next call; register()
# empties it. Failures are not kept: they raise again, with the reason of the moment.
_RESOLVED: dict[tuple, str] = {}


def resolve_backend(backend: str | None, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """The concrete backend for one call on ``device``; raises if the requested one cannot run.

    The default never picks a kernel backend for float64 data: only the reference computes in it.
    Resolved once per (requested backend, device, dtype): an op call costs a dictionary lookup.
    """
    requested = backend if backend is not None else _env_backend()
    if requested is not None and type(requested) is not str:
        return _resolve(requested, device, dtype)  # raises with the message
    key = (requested, device, dtype)
    name = _RESOLVED.get(key)
    if name is None:
        name = _resolve(requested, device, dtype)
        if not (name == "triton" and device.type != "cuda"):  # the interpreter: TRITON_INTERPRET may change
            _RESOLVED[key] = name
    return name


def _resolve(requested, device: torch.device, dtype: torch.dtype) -> str:
    if requested is not None:
        if not isinstance(requested, str) or requested not in BACKENDS + ("auto",):
            raise ValueError(f"backend must be one of {BACKENDS} or 'auto', got {requested!r}")
        if requested != "auto":
            if requested == "cpu" and device.type == "cpu" and dtype != torch.float64 and _cpu_library_loads():
                return "cpu"  # no status to build
            status = backend_status(requested, device)
            if not status.usable:
                raise RuntimeError(f"fastmix backend {requested!r} cannot run on {device}: {status.reason}")
            if requested == "cpu" and dtype == torch.float64:
                return "torch"  # the C++ kernels compute in float32; float64 stays exact
            return requested
    if dtype == torch.float64:
        return "torch"
    if device.type == "cpu":
        return "cpu" if _cpu_library_loads() else "torch"
    if device.type == "cuda":
        for name in ("cuda", "triton"):
            if backend_status(name, device).usable:
                return name
    return "torch"
