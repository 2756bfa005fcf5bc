"""Random labelling (RL): fine-tune on D_f with random labels, then on D_r, each epoch.

Paper: Golatkar et al., "Eternal Sunshine of the Spotless Net" (CVPR 2020) introduced
random-label forgetting; this is the variant of Fan et al., "SalUn: Empowering Machine
Unlearning via Gradient-based Weight Saliency" (ICLR 2024). Reference code:
OPTML-Group/Unlearn-Saliency ``unlearn/RL.py`` (its CIFAR-10/SVHN branch): each epoch,
one pass over D_f with labels drawn uniformly from all classes (the true one included,
as there), then one pass over D_r with its true labels; SGD (momentum 0.9, weight decay
5e-4), lr 0.013, 10 epochs.

Choices: batch 64; constant learning rate (the reference's warm-up is for long runs).
Needs D_r's labels (the SalUn paper has no label-agnostic variant). :mod:`.salun` runs
the same loop on a subset of the weights.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from fastmix.settings import COUNT, POSITIVE, Grid, LogRange, setting

from . import MethodContext, MethodResult, register
from .common import (
    done,
    fit,
    generator,
    needs_labels,
    num_classes,
    read_settings,
    sgd,
    shuffled,
    steps_per_epoch,
    student,
)


@dataclass
class RLSettings:
    rl_lr: float = setting(0.013, "random labels: SGD learning rate", POSITIVE, flag="--rl-lr")
    rl_epochs: int = setting(10, "random labels: epochs (a pass over D_f, then one over D_r)", COUNT,
                             flag="--rl-epochs")
    rl_batch_size: int = setting(64, "random labels: batch size", COUNT, flag="--rl-batch-size")


SETTINGS = RLSettings
# lr around the reference's 0.013, up to its 10 epochs.
SEARCH_SPACE = {"rl_lr": LogRange(1e-3, 0.1), "rl_epochs": Grid((2, 5, 10))}


def random_label_loop(ctx: MethodContext, model: nn.Module, opt: torch.optim.Optimizer, *, epochs: int,
                      batch_size: int, desc: str, after_step: Callable[[], None] | None = None) -> None:
    """Each epoch: CE on D_f against uniformly random labels, then CE on D_r."""
    gen, classes = generator(ctx), num_classes(ctx)
    n_f, n_r = ctx.x_forget.shape[0], ctx.x_retain.shape[0]

    def batches(_):
        forget = [(True, i) for i in shuffled(gen, n_f, batch_size)]
        return forget + [(False, i) for i in shuffled(gen, n_r, batch_size)]

    def loss(_, batch):
        forget, idx = batch
        if forget:
            target = torch.randint(0, classes, idx.shape, generator=gen, device=idx.device)
            return F.cross_entropy(model(ctx.x_forget[idx]), target)
        return F.cross_entropy(model(ctx.x_retain[idx]), ctx.y_retain[idx])

    per_epoch = steps_per_epoch(n_f, batch_size) + steps_per_epoch(n_r, batch_size)
    fit(opt, loss, batches, epochs=epochs, total=epochs * per_epoch, desc=desc, quiet=ctx.quiet, after_step=after_step)


@register("rl", settings=RLSettings, search_space=SEARCH_SPACE,
          needs_labels="the true labels of D_r")
def run_rl(ctx: MethodContext) -> MethodResult:
    """Random labelling (Golatkar et al. 2020; the SalUn paper's RL)."""
    s = read_settings(RLSettings, ctx.options)
    needs_labels("rl", ctx)
    start = time.perf_counter()
    model = student(ctx)
    random_label_loop(ctx, model, sgd(model, s.rl_lr), epochs=s.rl_epochs, batch_size=s.rl_batch_size, desc="rl")
    return done(ctx, model, start)
