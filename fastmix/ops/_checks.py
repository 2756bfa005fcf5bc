"""Argument checks shared by the public ops.

Shape, dtype, device and scalar checks always run. Checks that read tensor
values (and so would synchronise a GPU with the host) run through
``value_checks_wanted``: always on CPU tensors, on GPU tensors only under
``fastmix.debug_checks(True)``.
"""
from __future__ import annotations

import math

import torch

from .debug import value_checks_wanted

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
REDUCTIONS = ("sum", "mean")


def positive_finite(name: str, value) -> float:
    if type(value) is float and 0.0 < value < math.inf:  # the common case in one test
        return value
    if isinstance(value, (torch.Tensor, bool)) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a Python float, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and positive, got {value!r}")
    return float(value)


def non_negative_finite(name: str, value) -> float:
    if type(value) is float and 0.0 <= value < math.inf:
        return value
    if isinstance(value, (torch.Tensor, bool)) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a Python float, got {type(value).__name__}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite float >= 0, got {value!r}")
    return float(value)


def reduction_arg(reduction) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def float_tensor(name: str, t, ndim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), got "
                        f"{t.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if t.dim() not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(t.shape)}")
    return t


def logits(name: str, t) -> torch.Tensor:
    """(B, C) floating logits with B >= 1 and C >= 1."""
    float_tensor(name, t, ndim=2)
    if t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"{name} must have at least one row and one class, got shape {tuple(t.shape)}")
    return t


def is_logits(t) -> bool:
    """What :func:`logits` accepts, as one test (no call that raises, no message built)."""
    return isinstance(t, torch.Tensor) and t.dtype in FLOAT_DTYPES and t.dim() == 2 and t.shape[0] >= 1 \
        and t.shape[1] >= 1


def on_device(device: torch.device, *tensors) -> bool:
    """Whether every tensor among ``tensors`` is on ``device`` (anything else is skipped, as
    :func:`same_device` does): the test alone, :func:`same_device` words the error."""
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device != device:
            return False
    return True


def same_device(**tensors) -> torch.device:
    first = None
    for t in tensors.values():
        if isinstance(t, torch.Tensor):
            if first is None:
                first = t.device
            elif t.device != first:
                break
    else:
        return first
    devices = {name: t.device for name, t in tensors.items() if isinstance(t, torch.Tensor)}
    listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
    odd = next(n for n, d in devices.items() if d != first)
    raise ValueError(f"all tensors must be on one device, got {listing} ({odd} differs)")


def meta(t) -> tuple:
    """What the metadata checks read of one argument: a tensor's type, dtype, shape and
    device; anything else's type. Part of the key of a :class:`Passed` cache."""
    if isinstance(t, torch.Tensor):
        return type(t), t.dtype, t.shape, t.device
    return (type(t),)


class Passed(dict):
    """Per op: the metadata (what :func:`meta` reads, of every argument) of calls whose
    metadata checks all passed, each with what the op derived from it. A call whose arguments have the same
    metadata would pass them again, so it skips them; any change of type, dtype, shape or
    device is a new key and is checked. Value checks are not cached. Bounded: full, it
    starts again (a training loop sees a handful of keys)."""

    LIMIT = 64

    def add(self, key: tuple, derived) -> None:
        if len(self) >= self.LIMIT:
            self.clear()
        self[key] = derived


def same_dtype(**tensors) -> None:
    dtypes = {name: t.dtype for name, t in tensors.items()}
    if len(set(dtypes.values())) > 1:
        listing = ", ".join(f"{n}: {d}" for n, d in dtypes.items())
        raise TypeError(f"these tensors must share one dtype, got {listing}")


def values_wanted(t: torch.Tensor, backend_checks: bool = False) -> bool:
    """Whether an op call runs its value checks (decided once per call): not when the
    backend checks the values itself (``backend_checks``), else as ``value_checks_wanted``."""
    return not backend_checks and value_checks_wanted(t)


def target(name: str, t, n_rows: int | None, n_classes: int, values: bool | None = None) -> torch.Tensor:
    """A (N, C) probability target or (N,) int64 labels; returns it unchanged.

    ``n_rows`` None means any number of rows (a pool gathered through ``perm``).
    ``values``: whether to check the values (None: ``value_checks_wanted``; False: the
    caller decided against, e.g. for a backend that checks them in its kernel).
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype == torch.int64:
        if t.dim() != 1:
            raise ValueError(f"{name} as labels must be a 1-d int64 tensor (N,), got shape {tuple(t.shape)}")
    elif t.dtype in FLOAT_DTYPES:
        if t.dim() != 2 or t.shape[1] != n_classes:
            raise ValueError(
                f"{name} as probabilities must have shape (N, {n_classes}) to match the logits, got {tuple(t.shape)}"
            )
    else:
        raise TypeError(f"{name} must be int64 labels or floating-point probabilities, got {t.dtype}")
    if n_rows is not None and t.shape[0] != n_rows:
        raise ValueError(f"{name} must have {n_rows} rows to match the logits, got {t.shape[0]}")
    if (value_checks_wanted(t) if values is None else values) and t.numel() > 0:
        lo, hi = value_range(t)
        if t.dtype == torch.int64:
            if lo < 0 or hi >= n_classes:
                raise ValueError(f"{name} holds labels outside [0, {n_classes}): e.g. {lo if lo < 0 else hi}")
        else:
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError(f"{name} holds NaN or infinite probabilities")
            if lo < 0:
                raise ValueError(f"{name} holds negative probabilities")
    return t


def perm(name: str, p, n_rows: int, pool: int, values: bool | None = None) -> torch.Tensor | None:
    if p is None:
        return None
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of int64 indices or None, got {type(p).__name__}")
    if p.dtype != torch.int64:
        raise TypeError(f"{name} must be an int64 tensor, got {p.dtype}")
    if p.dim() != 1 or p.shape[0] != n_rows:
        raise ValueError(f"{name} must have shape ({n_rows},), got {tuple(p.shape)}")
    if (value_checks_wanted(p) if values is None else values) and p.numel() > 0:
        lo, hi = value_range(p)
        if lo < 0 or hi >= pool:
            raise ValueError(f"{name} holds indices outside [0, {pool}): e.g. {lo if lo < 0 else hi}")
    return p


def lam(name: str, value, n_rows: int, device: torch.device, values: bool | None = None,
        like: torch.dtype = torch.float32) -> torch.Tensor:
    """A Python float, 0-d or (B,) tensor in [0, 1]; returned as a tensor on ``device``
    (a float becomes float64 for float64 data ``like``, else float32)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
        raise TypeError(f"{name} must be a float or a 0-d or (B,) tensor, got {type(value).__name__}")
    if not isinstance(value, torch.Tensor):
        if not (0.0 <= value <= 1.0):
            raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
        return torch.full((), float(value), device=device,
                          dtype=torch.float64 if like == torch.float64 else torch.float32)
    float_tensor(name, value, ndim=(0, 1))
    if value.dim() == 1 and value.shape[0] != n_rows:
        raise ValueError(f"{name} must be 0-d or have shape ({n_rows},), got {tuple(value.shape)}")
    if value.device != device:
        raise ValueError(f"{name} must be on {device} like the other inputs, got {value.device}")
    unit_interval(name, value, values)
    return value


def unit_interval(name: str, t: torch.Tensor, values: bool | None = None) -> None:
    if (value_checks_wanted(t) if values is None else values) and t.numel() > 0:
        lo, hi = value_range(t)
        if math.isnan(lo) or math.isnan(hi):
            raise ValueError(f"{name} holds NaN")
        if lo < 0 or hi > 1:
            raise ValueError(f"{name} must lie in [0, 1], got values from {lo} to {hi}")


def value_range(t: torch.Tensor) -> tuple:
    """``(min, max)`` of ``t`` as Python numbers, in one pass and one read-back (NaN if
    ``t`` holds NaN): the value checks' only reduction."""
    lo, hi = torch.aminmax(t)
    return lo.item(), hi.item()
