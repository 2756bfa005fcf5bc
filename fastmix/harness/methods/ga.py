"""Gradient ascent (GA) on the forget set.

Paper: Thudi et al., "Unrolling SGD: Understanding Factors Influencing Machine
Unlearning" (EuroS&P 2022), as run by Jia et al., "Model Sparsity Can Simplify Machine
Unlearning" (NeurIPS 2023). Reference code: OPTML-Group/Unlearn-Sparse ``unlearn/GA.py``:
SGD (momentum 0.9, weight decay 5e-4) on ``-CE(f(x_f), y_f)`` over D_f.

Choices: lr 1e-4 and 5 epochs are the reference's small-task defaults; its maintainers
advise 5e-4 to 1e-3 when forgetting stalls (``--ga-lr``). Batch 64. Needs D_f's labels.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from torch.nn import functional as F

from fastmix.settings import COUNT, POSITIVE, Grid, LogRange, setting

from . import MethodContext, MethodResult, register
from .common import done, fit, generator, needs_labels, read_settings, sgd, shuffled, steps_per_epoch, student


@dataclass
class GASettings:
    ga_lr: float = setting(1e-4, "gradient ascent: SGD learning rate (5e-4 to 1e-3 when forgetting stalls)",
                           POSITIVE, flag="--ga-lr")
    ga_epochs: int = setting(5, "gradient ascent: passes over D_f", COUNT, flag="--ga-epochs")
    ga_batch_size: int = setting(64, "gradient ascent: batch size", COUNT, flag="--ga-batch-size")


SETTINGS = GASettings
# The reference's default lr and epochs and its maintainers' advice (5e-4 to 1e-3 when forgetting
# stalls), and two decades below: on Fashion-MNIST's CNN every lr from 2.8e-5 up exploded to NaN
# within a few hundred steps (at 6.8e-5 the ascent's loss went from 0.4 to 3e4 in 60 steps).
SEARCH_SPACE = {"ga_lr": LogRange(1e-7, 1e-3), "ga_epochs": Grid((1, 5, 10))}


@register("ga", settings=GASettings, search_space=SEARCH_SPACE,
          needs_labels="the true labels of D_f")
def run_ga(ctx: MethodContext) -> MethodResult:
    """Gradient ascent on D_f's cross-entropy (Thudi et al. 2022; Unlearn-Sparse)."""
    s = read_settings(GASettings, ctx.options)
    needs_labels("ga", ctx)
    start = time.perf_counter()
    model, gen = student(ctx), generator(ctx)
    n = ctx.x_forget.shape[0]
    fit(sgd(model, s.ga_lr),
        lambda _, idx: -F.cross_entropy(model(ctx.x_forget[idx]), ctx.y_forget[idx]),
        lambda _: shuffled(gen, n, s.ga_batch_size),
        epochs=s.ga_epochs, total=s.ga_epochs * steps_per_epoch(n, s.ga_batch_size), desc="ga", quiet=ctx.quiet)
    return done(ctx, model, start)
