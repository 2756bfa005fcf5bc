"""Process-wide switches: value checks that cost a host synchronisation."""
from __future__ import annotations

import threading

import torch


class _State(threading.local):
    enabled = False  # debug_checks
    trusted = False  # trusted_inputs


_state = _State()  # the class defaults: a plain attribute read per call, no getattr default


def debug_checks_enabled() -> bool:
    return _state.enabled


class debug_checks:
    """Turn on the checks that need a host synchronisation on GPU tensors.

    Value checks (label and ``perm`` range, mixing weights in [0, 1], NaN or
    negative values in targets, ``lam`` and weights) always run on CPU tensors,
    where they cost nothing extra. On GPU tensors they would synchronise the
    host with the device (and break CUDA-graph capture), so they run only while
    this switch is on. Shape, dtype, device and scalar-argument checks always run.
    Inside a region that torch.compile traces, value checks are skipped.

    ``fastmix.debug_checks(True)`` turns them on for this thread;
    ``with fastmix.debug_checks(True): ...`` turns them on for a block and then
    restores the previous setting.
    """

    def __init__(self, enabled: bool = True):
        if not isinstance(enabled, bool):
            raise TypeError(f"debug_checks: enabled must be a bool, got {type(enabled).__name__}")
        self._previous = debug_checks_enabled()
        _state.enabled = enabled

    def __enter__(self) -> debug_checks:  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc) -> None:
        _state.enabled = self._previous


def trusted_inputs_enabled() -> bool:
    return _state.trusted


class trusted_inputs:
    """Skip the value checks for a caller that guarantees its values (fastmix's trainer).

    ``with fastmix.ops.debug.trusted_inputs(): ...`` turns off, for this thread and this
    block, the checks that read tensor values (label and ``perm`` range, weights in [0, 1],
    NaN or negative probabilities); shape, dtype, device and scalar checks still run.
    Only for code that builds those tensors itself (labels from a data set's targets,
    ``perm`` from ``randperm``, ``lam`` from ``sample_lambda``): a bad value then gives
    wrong results instead of an error. ``debug_checks(True)`` overrides it.
    """

    def __init__(self, enabled: bool = True):
        if not isinstance(enabled, bool):
            raise TypeError(f"trusted_inputs: enabled must be a bool, got {type(enabled).__name__}")
        self._previous = trusted_inputs_enabled()
        _state.trusted = enabled

    def __enter__(self) -> trusted_inputs:  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc) -> None:
        _state.trusted = self._previous


def value_checks_wanted(t) -> bool:
    """Whether checks that read tensor values should run for ``t``'s device.

    Never while torch.compile traces (the values are not known then), nor inside
    ``trusted_inputs()`` unless ``debug_checks(True)`` is on too.
    """
    if torch.compiler.is_compiling():
        return False
    return _state.enabled or (t.is_cpu and not _state.trusted)  # is_cpu: no device object built
