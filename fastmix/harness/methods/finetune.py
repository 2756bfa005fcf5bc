"""Fine-tuning on the retain set: the simplest baseline."""
from __future__ import annotations

import copy
import time

import torch

from fastmix.harness.training import Recipe, train_classifier

from . import MethodContext, MethodResult, register


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
            labels = torch.cat([ctx.original(ctx.x_retain[i : i + 1024]).argmax(1)
                                for i in range(0, ctx.x_retain.shape[0], 1024)])
    recipe = Recipe(epochs=ctx.options["ft_epochs"], batch_size=ctx.options["batch_size"],
                    lr=ctx.options["ft_lr"], weight_decay=0.0)
    train_classifier(model, ctx.x_retain, labels, recipe, seed=ctx.seed, desc="finetune", quiet=ctx.quiet)
    if ctx.x_retain.device.type == "cuda":
        torch.cuda.synchronize(ctx.x_retain.device)
    return MethodResult(model.requires_grad_(False), time.perf_counter() - start)
