"""Fine-tuning on the retain set: the simplest baseline."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from fastmix.harness.training import Recipe, train_classifier
from fastmix.settings import COUNT, POSITIVE, Grid, LogRange, setting

from . import MethodContext, MethodResult, register


@dataclass
class FinetuneSettings:
    """Its defaults are the data set's (fastmix.harness.experiment.DEFAULTS); these are
    the ones of the paper-size data sets."""

    ft_lr: float = setting(1e-4, "fine-tuning: Adam learning rate", POSITIVE, flag="--ft-lr")
    ft_epochs: int = setting(2, "fine-tuning: passes over D_r", COUNT, flag="--ft-epochs")


SETTINGS = FinetuneSettings
SEARCH_SPACE = {"ft_lr": LogRange(1e-5, 1e-2), "ft_epochs": Grid((1, 2, 5))}


@register("finetune", settings=FinetuneSettings, search_space=SEARCH_SPACE)
def run_finetune(ctx: MethodContext) -> MethodResult:
    """Fine-tune the original model on D_r with cross-entropy (Adam, ``ft_lr``,
    ``ft_epochs``). Label-agnostic: the labels are the original model's predictions."""
    start = time.perf_counter()
    model = copy.deepcopy(ctx.original).train().requires_grad_(True)
    labels = ctx.y_retain
    if ctx.labels == "agnostic":
        with torch.no_grad():
            ctx.original.eval()
            labels = torch.cat([ctx.original(ctx.x_retain[i : i + 1024]).argmax(1)
                                for i in range(0, ctx.x_retain.shape[0], 1024)])
    recipe = Recipe(epochs=ctx.options["ft_epochs"], batch_size=ctx.options["batch_size"],
                    lr=ctx.options["ft_lr"], weight_decay=0.0)
    train_classifier(model, ctx.x_retain, labels, recipe, seed=ctx.seed, desc="finetune", quiet=ctx.quiet)
    if ctx.x_retain.device.type == "cuda":
        torch.cuda.synchronize(ctx.x_retain.device)
    return MethodResult(model.requires_grad_(False), time.perf_counter() - start)
