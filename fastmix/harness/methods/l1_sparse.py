"""l1-sparse: fine-tune on D_r with an l1 penalty on the weights that decays linearly.

Paper: Jia et al., "Model Sparsity Can Simplify Machine Unlearning" (NeurIPS 2023).
Reference code: OPTML-Group/Unlearn-Sparse ``unlearn/FT.py:FT_l1``: CE on D_r plus
``alpha_t * ||theta||_1`` with ``alpha_t = alpha * (1 - epoch / epochs)`` for epoch
0..epochs-1 (linear decay, per epoch, as there: the last epoch's is alpha / epochs, not
0), SGD (momentum 0.9, weight decay 5e-4), lr 0.01, 10 epochs, alpha 1e-4.

Choices: batch 64; the l1 norm is over every parameter, biases included, as there.
Needs D_r's labels.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from fastmix.settings import COUNT, NONNEG, POSITIVE, Grid, LogRange, setting

from . import MethodContext, MethodResult, register
from .common import done, fit, generator, needs_labels, read_settings, sgd, shuffled, steps_per_epoch, student


@dataclass
class L1SparseSettings:
    l1_lr: float = setting(0.01, "l1-sparse: SGD learning rate", POSITIVE, flag="--l1-lr")
    l1_epochs: int = setting(10, "l1-sparse: passes over D_r", COUNT, flag="--l1-epochs")
    l1_alpha: float = setting(1e-4, "l1-sparse: initial weight of ||theta||_1, decayed linearly "
                              "(alpha / epochs in the last epoch)", NONNEG, flag="--l1-alpha")
    l1_batch_size: int = setting(64, "l1-sparse: batch size", COUNT, flag="--l1-batch-size")


SETTINGS = L1SparseSettings
# lr and alpha around the reference's 0.01 and 1e-4.
SEARCH_SPACE = {"l1_lr": LogRange(1e-3, 0.1), "l1_epochs": Grid((2, 5, 10)), "l1_alpha": LogRange(1e-6, 1e-3)}


@register("l1_sparse", settings=L1SparseSettings, search_space=SEARCH_SPACE,
          needs_labels="the true labels of D_r")
def run_l1_sparse(ctx: MethodContext) -> MethodResult:
    """l1-sparse fine-tuning (Jia et al. 2023)."""
    s = read_settings(L1SparseSettings, ctx.options)
    needs_labels("l1_sparse", ctx)
    start = time.perf_counter()
    model, gen = student(ctx), generator(ctx)
    params = list(model.parameters())
    n = ctx.x_retain.shape[0]

    def loss(epoch, idx):
        alpha = s.l1_alpha * (1 - epoch / s.l1_epochs)
        l1 = torch.stack([p.abs().sum() for p in params]).sum()
        return F.cross_entropy(model(ctx.x_retain[idx]), ctx.y_retain[idx]) + alpha * l1

    fit(sgd(model, s.l1_lr), loss, lambda _: shuffled(gen, n, s.l1_batch_size), epochs=s.l1_epochs,
        total=s.l1_epochs * steps_per_epoch(n, s.l1_batch_size), desc="l1_sparse", quiet=ctx.quiet)
    return done(ctx, model, start)
