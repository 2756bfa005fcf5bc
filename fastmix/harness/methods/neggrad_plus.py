"""NegGrad+: descend on D_r's cross-entropy while ascending on D_f's.

Paper: Kurmanji et al., "Towards Unbounded Machine Unlearning" (NeurIPS 2023, SCRUB),
which introduced this strengthened NegGrad. Reference code: meghdadk/SCRUB
``loops.py:train_negrad``: ``alpha * CE(D_r) - (1 - alpha) * CE(D_f)`` on paired batches,
plain SGD (no momentum, no weight decay: ``torch.optim.SGD(..., lr=lr, weight_decay=0.0)``
in every notebook that calls it, e.g. ``small_scale_unlearning.ipynb:negative_grad``).

An epoch is one pass over D_r, each retain batch paired with the next forget batch
of D_f cycled (``zip(retain_loader, cycle(forget_loader))`` there). Choices: each pass
over D_f is a fresh permutation (``cycle`` replays the first); alpha 0.999 (the
reference sweeps 0.95 to 0.9999), lr 0.01, 5 epochs, batch 64. Needs the labels of both
sets.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from torch.nn import functional as F

from fastmix.settings import COUNT, NONNEG, POSITIVE, Grid, LogRange, setting

from . import MethodContext, MethodResult, register
from .common import cycled, done, fit, generator, needs_labels, read_settings, sgd, shuffled, steps_per_epoch, student


@dataclass
class NegGradPlusSettings:
    neggrad_alpha: float = setting(0.999, "NegGrad+: weight of D_r's loss; 1 - alpha weighs D_f's ascent (in [0, 1])",
                                   NONNEG, flag="--neggrad-alpha")
    neggrad_lr: float = setting(0.01, "NegGrad+: SGD learning rate", POSITIVE, flag="--neggrad-lr")
    neggrad_epochs: int = setting(5, "NegGrad+: passes over D_r", COUNT, flag="--neggrad-epochs")
    neggrad_batch_size: int = setting(64, "NegGrad+: batch size of each set", COUNT, flag="--neggrad-batch-size")


SETTINGS = NegGradPlusSettings
# The reference's sweep of alpha (0.95 to 0.9999), lr around its 0.01.
SEARCH_SPACE = {"neggrad_alpha": Grid((0.95, 0.99, 0.999, 0.9999)), "neggrad_lr": LogRange(1e-3, 0.1),
                "neggrad_epochs": Grid((1, 3, 5))}


@register("neggrad_plus", settings=NegGradPlusSettings, search_space=SEARCH_SPACE,
          needs_labels="the true labels of D_f and D_r")
def run_neggrad_plus(ctx: MethodContext) -> MethodResult:
    """NegGrad+ (Kurmanji et al. 2023): alpha * CE(D_r) - (1 - alpha) * CE(D_f)."""
    s = read_settings(NegGradPlusSettings, ctx.options)
    if not 0.0 <= s.neggrad_alpha <= 1.0:
        raise ValueError(f"neggrad_alpha must be in [0, 1], got {s.neggrad_alpha}")
    needs_labels("neggrad_plus", ctx)
    start = time.perf_counter()
    model, gen = student(ctx), generator(ctx)
    n_r, n_f, bs, a = ctx.x_retain.shape[0], ctx.x_forget.shape[0], s.neggrad_batch_size, s.neggrad_alpha

    def batches(_):
        retain = shuffled(gen, n_r, bs)
        return zip(retain, cycled(gen, n_f, bs, len(retain)))

    def loss(_, pair):
        r, f = pair
        return (a * F.cross_entropy(model(ctx.x_retain[r]), ctx.y_retain[r])
                - (1 - a) * F.cross_entropy(model(ctx.x_forget[f]), ctx.y_forget[f]))

    fit(sgd(model, s.neggrad_lr, momentum=0.0, weight_decay=0.0), loss, batches, epochs=s.neggrad_epochs,
        total=s.neggrad_epochs * steps_per_epoch(n_r, bs), desc="neggrad_plus", quiet=ctx.quiet)
    return done(ctx, model, start)
