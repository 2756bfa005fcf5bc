"""SalUn: random labelling restricted to the salient weights.

Paper: Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight
Saliency" (ICLR 2024). Reference code: OPTML-Group/Unlearn-Saliency
``generate_mask.py`` (the mask) and ``unlearn/RL.py`` (the training, see :mod:`.rl`).

The saliency of a weight is ``|sum over D_f's batches of grad CE|`` at the original
model (in eval mode, as there); the mask keeps the top ``salun_ratio`` of all weights
(one threshold over the whole model). The reference multiplies the gradients by the
mask, but momentum and weight decay still move the masked weights (Unlearn-Saliency
issue 32 / PR 33); here the mask is a hard constraint: after every step the weights
outside it are restored and their momentum cleared.

Choices: batch 64 for the mask and the training. Needs the labels of D_f (saliency)
and D_r.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fastmix.settings import COUNT, POSITIVE, Grid, LogRange, setting

from . import MethodContext, MethodResult, register
from .common import done, needs_labels, read_settings, sgd, student
from .rl import random_label_loop


@dataclass
class SalUnSettings:
    salun_lr: float = setting(0.013, "SalUn: SGD learning rate", POSITIVE, flag="--salun-lr")
    salun_epochs: int = setting(10, "SalUn: epochs (a pass over D_f, then one over D_r)", COUNT,
                                flag="--salun-epochs")
    salun_batch_size: int = setting(64, "SalUn: batch size", COUNT, flag="--salun-batch-size")
    salun_ratio: float = setting(0.5, "SalUn: share of the weights updated (the most salient), in (0, 1]", POSITIVE,
                                 flag="--salun-ratio")


SETTINGS = SalUnSettings
# lr around the reference's 0.013; the SalUn paper's sparsity ratios.
SEARCH_SPACE = {"salun_lr": LogRange(1e-3, 0.1), "salun_epochs": Grid((2, 5, 10)),
                "salun_ratio": Grid((0.1, 0.3, 0.5, 0.7, 0.9))}


def saliency_mask(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ratio: float, batch_size: int) -> list:
    """Per parameter, a bool mask of the weights whose |grad CE(D_f)| is in the top ``ratio``."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    model.eval()
    for i in range(0, x.shape[0], batch_size):
        grads = torch.autograd.grad(F.cross_entropy(model(x[i : i + batch_size]), y[i : i + batch_size]), params)
        for t, g in zip(total, grads):
            t.add_(g)
    model.train()
    flat = torch.cat([t.abs().flatten() for t in total])
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.topk(int(ratio * flat.numel())).indices] = True  # the reference's count: floor
    return list(keep.split([p.numel() for p in params]))


@register("salun", settings=SalUnSettings, search_space=SEARCH_SPACE,
          needs_labels="the true labels of D_f (saliency) and D_r")
def run_salun(ctx: MethodContext) -> MethodResult:
    """SalUn (Fan et al. 2024): random labelling on the salient weights only."""
    s = read_settings(SalUnSettings, ctx.options)
    if not s.salun_ratio <= 1.0:
        raise ValueError(f"salun_ratio must be in (0, 1], got {s.salun_ratio}")
    needs_labels("salun", ctx)
    start = time.perf_counter()
    model = student(ctx)
    params = [p for p in model.parameters() if p.requires_grad]
    masks = [m.view_as(p) for m, p in
             zip(saliency_mask(model, ctx.x_forget, ctx.y_forget, s.salun_ratio, s.salun_batch_size), params)]
    before = [p.detach().clone() for p in params]
    opt = sgd(model, s.salun_lr)

    @torch.no_grad()
    def hold_the_rest():
        for p, m, p0 in zip(params, masks, before):
            p.copy_(torch.where(m, p, p0))
            buf = opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                buf.mul_(m)

    random_label_loop(ctx, model, opt, epochs=s.salun_epochs, batch_size=s.salun_batch_size, desc="salun",
                      after_step=hold_the_rest)
    kept = sum(int(m.sum()) for m in masks)
    return done(ctx, model, start, {"updated_weights": kept, "weights": sum(m.numel() for m in masks)})
