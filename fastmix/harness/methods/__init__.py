"""Unlearning methods by name, one module each in this package.

Every method has the same signature: it takes a :class:`MethodContext` and returns a
:class:`MethodResult`. A module adds its method with ``@register("name")``; the
modules below are imported at the end of this file, so that importing the registry
registers all of them. ``register`` stays open for methods defined elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn


@dataclass
class MethodContext:
    """What a method may use: the original model, D_f and D_r on the device (with
    labels; in the label-agnostic setting a method must not use them), the options."""

    original: nn.Module
    x_forget: torch.Tensor
    y_forget: torch.Tensor
    x_retain: torch.Tensor
    y_retain: torch.Tensor
    labels: str  # "aware" or "agnostic"
    options: dict
    seed: int
    quiet: bool = True


@dataclass
class MethodResult:
    model: nn.Module
    seconds: float
    extras: dict = field(default_factory=dict)


METHODS: dict[str, Callable[[MethodContext], MethodResult]] = {}


def register(name: str):
    def wrap(fn):
        METHODS[name] = fn
        return fn

    return wrap


def get_method(name: str):
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


# Each module registers its method when imported.
from . import finetune, mixunlearn  # noqa: E402,F401
