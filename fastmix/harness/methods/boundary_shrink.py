"""Boundary Shrink: relabel each forget sample with its nearest wrong class, then fine-tune.

Paper: Chen et al., "Boundary Unlearning: Rapid Forgetting of Deep Networks via Shifting
the Decision Space" (CVPR 2023). Reference code: TY-LEE-KR/Boundary-Unlearning-Code
(``boundary_shrink``): an FGSM step of size 0.1 on the original model (frozen, eval mode)
from each forget sample; the class the original predicts for the perturbed sample is
its new label; the unlearned copy is fine-tuned on D_f with those labels by SGD (lr
1e-5, momentum 0.9, no weight decay) for 10 passes over D_f.

The reference's step is 0.1 on pixels in [0, 1], clamped to [0, 1]; the data here are
standardised, so the step is ``boundary_eps`` times each channel's value range in the
training data (its lowest to highest value, the image of [0, 1]) and the perturbed
image is clamped to that range (the reference's rounding to 1/255 is left out).

Choices: the reference takes the argmax of the perturbed logits, which can still be
the true class; the paper's "nearest but incorrect class" is taken here, the argmax
over the other classes. The original is frozen, so the labels are computed once (the
reference recomputes the same labels every batch). Batch 64. Needs D_f's labels (the
FGSM step and the excluded class).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fastmix.mixunlearn.rows import Rows
from fastmix.settings import COUNT, POSITIVE, Grid, LogRange, setting

from . import MethodContext, MethodResult, register
from .common import (
    done,
    fit,
    frozen_copy,
    generator,
    needs_labels,
    read_settings,
    sgd,
    shuffled,
    steps_per_epoch,
    student,
)


@dataclass
class BoundaryShrinkSettings:
    boundary_eps: float = setting(0.1, "Boundary Shrink: FGSM step, a share of each channel's value range", POSITIVE,
                                  flag="--boundary-eps")
    boundary_lr: float = setting(1e-5, "Boundary Shrink: SGD learning rate", POSITIVE, flag="--boundary-lr")
    boundary_epochs: int = setting(10, "Boundary Shrink: passes over D_f", COUNT, flag="--boundary-epochs")
    boundary_batch_size: int = setting(64, "Boundary Shrink: batch size", COUNT, flag="--boundary-batch-size")


SETTINGS = BoundaryShrinkSettings
# Around the reference's step 0.1, lr 1e-5 and 10 passes.
SEARCH_SPACE = {"boundary_eps": Grid((0.05, 0.1, 0.2)), "boundary_lr": LogRange(1e-6, 1e-3),
                "boundary_epochs": Grid((5, 10))}


def channel_range(*sets) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel (dim 1), the lowest and highest value in ``sets`` (tensors or
    :class:`Rows`, read a chunk of rows at a time), shaped to broadcast."""
    lows, highs = [], []
    for x in sets:
        dims = [d for d in range(x.dim()) if d != 1]
        for chunk in Rows.of(x).chunks():
            lows.append(chunk.amin(dim=dims, keepdim=True))
            highs.append(chunk.amax(dim=dims, keepdim=True))
    return torch.cat(lows).amin(dim=0, keepdim=True), torch.cat(highs).amax(dim=0, keepdim=True)


def nearest_wrong_class(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, value_range,
                        batch_size: int = 1024) -> torch.Tensor:
    """The class ``model`` gives an FGSM step from ``x``, other than ``y``. The step is
    ``eps`` of each channel's value range, and the result is clamped to that range."""
    low, high = value_range
    out = []
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i : i + batch_size].clone().requires_grad_(True), y[i : i + batch_size]
        (grad,) = torch.autograd.grad(F.cross_entropy(model(xb), yb), xb)
        with torch.no_grad():
            x_adv = torch.maximum(torch.minimum(xb + eps * (high - low) * grad.sign(), high), low)
            out.append(model(x_adv).scatter(1, yb[:, None], float("-inf")).argmax(1))
    return torch.cat(out)


@register("boundary_shrink", settings=BoundaryShrinkSettings, search_space=SEARCH_SPACE,
          needs_labels="the true labels of D_f (its FGSM step and nearest wrong class)")
def run_boundary_shrink(ctx: MethodContext) -> MethodResult:
    """Boundary Shrink (Chen et al. 2023)."""
    s = read_settings(BoundaryShrinkSettings, ctx.options)
    needs_labels("boundary_shrink", ctx)
    start = time.perf_counter()
    model, gen = student(ctx), generator(ctx)
    value_range = channel_range(ctx.x_retain, ctx.x_forget)
    targets = nearest_wrong_class(frozen_copy(ctx.original), ctx.x_forget, ctx.y_forget, s.boundary_eps, value_range)
    n = ctx.x_forget.shape[0]
    fit(sgd(model, s.boundary_lr, weight_decay=0.0),
        lambda _, idx: F.cross_entropy(model(ctx.x_forget[idx]), targets[idx]),
        lambda _: shuffled(gen, n, s.boundary_batch_size), epochs=s.boundary_epochs,
        total=s.boundary_epochs * steps_per_epoch(n, s.boundary_batch_size), desc="boundary_shrink", quiet=ctx.quiet)
    return done(ctx, model, start)
