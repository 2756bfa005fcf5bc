"""Selective Synaptic Dampening (SSD): scale down the weights D_f leans on; no training.

Paper: Foster et al., "Fast Machine Unlearning Without Retraining Through Selective
Synaptic Dampening" (AAAI 2024). Reference code: if-loops/selective-synaptic-dampening
``src/ssd.py`` (``ParameterPerturber``): the importance of each weight is the diagonal
Fisher, the square of the gradient of the batch-mean cross-entropy, summed over the
batches and divided by their number, on all training data D (= D_r and D_f) and on D_f,
with the model in eval mode. Where ``I_f > alpha * I_D`` the weight is multiplied by
``min(lambda * I_D / I_f, 1)``; the others stay. alpha 10, lambda 1 (exponent 1).

Choices: batches of 64 in data order (D_r then D_f for D). Needs the labels of D_f and
D_r (the Fisher of the loss).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fastmix.mixunlearn.rows import cat_rows
from fastmix.settings import COUNT, POSITIVE, Grid, setting

from . import MethodContext, MethodResult, register
from .common import done, needs_labels, read_settings, student


@dataclass
class SSDSettings:
    ssd_alpha: float = setting(10.0, "SSD: a weight is dampened where I_f > alpha * I_D", POSITIVE,
                               flag="--ssd-alpha")
    ssd_lambda: float = setting(1.0, "SSD: dampening constant, the weight is scaled by min(lambda * I_D / I_f, 1)",
                                POSITIVE, flag="--ssd-lambda")
    ssd_batch_size: int = setting(64, "SSD: batch size of the Fisher estimates", COUNT, flag="--ssd-batch-size")


SETTINGS = SSDSettings
# Around the paper's alpha 10 and lambda 1 (its ablations vary both).
SEARCH_SPACE = {"ssd_alpha": Grid((1.0, 5.0, 10.0, 50.0, 100.0)), "ssd_lambda": Grid((0.1, 0.5, 1.0))}


def diagonal_fisher(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Mean over batches of the squared gradient of the batch's mean cross-entropy."""
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    starts = range(0, x.shape[0], batch_size)
    for i in starts:
        grads = torch.autograd.grad(F.cross_entropy(model(x[i : i + batch_size]), y[i : i + batch_size]), params)
        for t, g in zip(total, grads):
            t.add_(g.square())
    return [t / len(starts) for t in total]


@register("ssd", settings=SSDSettings, search_space=SEARCH_SPACE,
          needs_labels="the true labels of D_f and D_r (the Fisher information of the loss)")
def run_ssd(ctx: MethodContext) -> MethodResult:
    """Selective Synaptic Dampening (Foster et al. 2024)."""
    s = read_settings(SSDSettings, ctx.options)
    needs_labels("ssd", ctx)
    start = time.perf_counter()
    model = student(ctx).eval()
    x_all, y_all = cat_rows([ctx.x_retain, ctx.x_forget]), torch.cat([ctx.y_retain, ctx.y_forget])
    i_all = diagonal_fisher(model, x_all, y_all, s.ssd_batch_size)
    i_f = diagonal_fisher(model, ctx.x_forget, ctx.y_forget, s.ssd_batch_size)
    dampened = 0
    with torch.no_grad():
        for p, d, f in zip(model.parameters(), i_all, i_f):
            selected = f > s.ssd_alpha * d
            scale = (s.ssd_lambda * d / f).clamp(max=1.0)
            p.copy_(torch.where(selected, p * scale, p))
            dampened += selected.sum()
    return done(ctx, model, start, {"dampened_weights": int(dampened)})
