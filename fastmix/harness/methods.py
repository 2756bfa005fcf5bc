"""Unlearning methods by name. Each takes a :class:`MethodContext` and returns a
:class:`MethodResult`; ``register`` adds more (the registry is open)."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .training import Recipe, train_classifier
from fastmix.mixunlearn.method import MixUnlearn


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


@register("mixunlearn")
def run_mixunlearn(ctx: MethodContext) -> MethodResult:
    opts = ctx.options
    mu = MixUnlearn(
        ctx.original,
        opts.get("feature_layer"),
        seed=ctx.seed,
        quiet=ctx.quiet,
        labels=ctx.labels,
        **{k: v for k, v in opts.items() if k in _MIXUNLEARN_KEYS or k in ENGINE_KEYS},
    )
    if ctx.labels == "aware":
        model = mu.unlearn((ctx.x_forget, ctx.y_forget), (ctx.x_retain, ctx.y_retain))
    else:
        model = mu.unlearn(ctx.x_forget, ctx.x_retain)
    return MethodResult(model, mu.seconds, {"mixunlearn": mu})


_MIXUNLEARN_KEYS = (
    "alpha", "tau_gen", "tau_mix", "tau_real", "omega", "sharpen_T", "gen_interval", "lr", "gen_lr",
    "epochs", "batch_size", "mask", "use_mix",
)

# How MixUnlearn runs (fastmix.mixunlearn.engine), passed through when set.
ENGINE_KEYS = ("step", "cache", "cache_limit_mb", "augment", "amp", "channels_last", "cuda_graphs", "flush_subnormals")


@register("finetune")
def run_finetune(ctx: MethodContext) -> MethodResult:
    """Fine-tune the original model on D_r with cross-entropy (Adam, ``ft_lr``,
    ``ft_epochs``). Label-agnostic: the labels are the original model's predictions."""
    start = time.perf_counter()
    model = copy.deepcopy(ctx.original).train().requires_grad_(True)
    labels = ctx.y_retain
    if ctx.labels == "agnostic":
        with torch.no_grad():
            ctx.original.eval()
            labels = torch.cat([ctx.original(ctx.x_retain[i : i + 1024]).argmax(1) for i in range(0, ctx.x_retain.shape[0], 1024)])
    recipe = Recipe(epochs=ctx.options["ft_epochs"], batch_size=ctx.options["batch_size"], lr=ctx.options["ft_lr"], weight_decay=0.0)
    train_classifier(model, ctx.x_retain, labels, recipe, seed=ctx.seed, desc="finetune", quiet=ctx.quiet)
    if ctx.x_retain.device.type == "cuda":
        torch.cuda.synchronize(ctx.x_retain.device)
    return MethodResult(model.requires_grad_(False), time.perf_counter() - start)
