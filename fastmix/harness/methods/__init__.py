"""Unlearning methods by name, one module each in this package.

Every method has the same signature: it takes a :class:`MethodContext` and returns a
:class:`MethodResult`. A module adds its method with ``@register("name", settings=...,
search_space=...)``, where ``settings`` is the dataclass of its settings
(:mod:`fastmix.settings`), read from ``ctx.options`` by field name, and ``search_space``
what ``fastmix tune`` searches (``{setting: Grid or LogRange}``); the modules below are imported at the end of this
file, so that importing the registry registers all of them. ``register`` stays open for
methods defined elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from fastmix.mixunlearn.rows import Rows


@dataclass
class MethodContext:
    """What a method may use: the original model, D_f and D_r on the device (with
    labels; in the label-agnostic setting a method must not use them), the options.

    The images are tensors or, from :func:`~fastmix.harness.experiment.run_experiment`,
    :class:`Rows` of the one training tensor (no copies): a method reads them by batch
    (``x[idx]``, ``x[i:j]``, ``x.shape``) and joins or subsets them with ``cat_rows`` and
    ``take_rows`` (:mod:`fastmix.mixunlearn.rows`), never ``torch.cat`` on whole sets."""

    original: nn.Module
    x_forget: torch.Tensor | Rows
    y_forget: torch.Tensor
    x_retain: torch.Tensor | Rows
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
# The settings dataclass of each method (None: the method reads ``ctx.options`` its own way).
METHOD_SETTINGS: dict[str, type | None] = {}
# What `fastmix tune` searches for each method: {setting name: fastmix.settings.Grid or LogRange}.
SEARCH_SPACES: dict[str, dict] = {}
# What a method needs the true labels for ({options} -> text, or None when it needs none): such a method
# cannot run label-agnostic. Missing: it runs in both settings.
LABEL_NEEDS: dict[str, Callable[[dict], str | None]] = {}


def register(name: str, settings: type | None = None, search_space: dict | None = None,
             needs_labels: str | Callable[[dict], str | None] | None = None):
    """Add a method. ``needs_labels``: what it uses the true labels for (a text, or a function
    of the resolved options giving the text or None); such a method is refused in the
    label-agnostic setting before any work, and ``--method all`` leaves it out there."""
    def wrap(fn):
        METHODS[name] = fn
        METHOD_SETTINGS[name] = settings
        SEARCH_SPACES[name] = dict(search_space or {})
        if needs_labels is None:
            LABEL_NEEDS.pop(name, None)
        else:
            LABEL_NEEDS[name] = needs_labels if callable(needs_labels) else (lambda options: needs_labels)
        return fn

    return wrap


def labels_needed(name: str, options: dict | None = None) -> str | None:
    """What method ``name`` needs the true labels for with these options, or None."""
    get_method(name)
    need = LABEL_NEEDS.get(name)
    return need(options or {}) if need else None


def check_labels(name: str, labels: str, options: dict | None = None) -> None:
    """Refuse a method that needs the true labels in the label-agnostic setting."""
    what = labels_needed(name, options) if labels == "agnostic" else None
    if what:
        raise ValueError(f"method {name!r} needs {what}, so it cannot run in the label-agnostic setting "
                         "(labels='agnostic'); run it label-aware")


def get_method(name: str):
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def method_settings(name: str) -> type | None:
    """The settings dataclass ``name`` was registered with (None if it has none)."""
    get_method(name)
    return METHOD_SETTINGS[name]


def recipe_settings(name: str) -> dict:
    """``{setting name: dataclass field}`` of method ``name`` that a recipe or a search may
    set: the fields of its settings dataclass that have a command-line flag."""
    from fastmix.settings import setting_fields

    cls = method_settings(name)
    return {} if cls is None else {f.name: f for f in setting_fields(cls) if f.metadata["flag"] is not None}


def expand_method_names(text: str, labels: str = "aware", options: dict | None = None) -> list[str]:
    """``"mixunlearn,ga"`` -> ``["mixunlearn", "ga"]``; ``all`` stands for every registered
    method that runs in the ``labels`` setting (with ``options``), in registration order.
    Repeats are dropped; unknown names are refused."""
    names: list[str] = []
    for part in str(text).split(","):
        part = part.strip()
        every = [m for m in METHODS if labels != "agnostic" or not labels_needed(m, options)]
        for name in (every if part == "all" else [part] if part else []):
            get_method(name)
            if name not in names:
                names.append(name)
    if not names:
        raise ValueError(f"method needs at least one method name or 'all', got {text!r}")
    return names


# Each module registers its method when imported; "all" runs them in this order.
from . import mixunlearn, finetune  # noqa: E402,F401,I001
from . import (  # noqa: E402,F401
    ga,
    neggrad_plus,
    rl,
    salun,
    l1_sparse,
    scrub,
    bad_teacher,
    ssd,
    laf,
    boundary_shrink,
)
