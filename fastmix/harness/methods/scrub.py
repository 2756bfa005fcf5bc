"""SCRUB: a student that moves away from the original on D_f and stays with it on D_r.

Paper: Kurmanji et al., "Towards Unbounded Machine Unlearning" (NeurIPS 2023).
Reference code: meghdadk/SCRUB ``train_distill`` and its epoch loop: the teacher is the
original model, the student a copy of it. Each epoch ``1..epochs``: while
``epoch <= msteps``, one "max" pass over D_f on ``-KL(teacher || student)``; then one
"min" pass over D_r on ``gamma * CE + alpha * KL(teacher || student)``, one optimiser
for both. The KL is the reference's ``DistillKL``:
``KL(softmax(t / T) || softmax(s / T)) * T^2``, summed over classes, averaged over the batch.

Choices: alpha 0.5, gamma 1, msteps 3 (both of the reference's small-model notebooks);
SGD lr 5e-4 with momentum 0.9 and weight decay 5e-4 and kd_T 4 as in
``MIA_experiments.ipynb``'s ``scrub()``; 10 epochs as in ``small_scale_unlearning.ipynb``,
which instead takes Adam (lr 5e-4, weight decay 0.1) and kd_T 2. The lr stays constant (the reference's step decay
at late epochs is left out); batch 64 for both sets by default, D_f's its own setting
(``scrub_forget_batch_size``: the notebooks' ``forget_bs``, ``del_batch_size`` in the
large-scale one). The search tries larger D_f batches, so fewer ascent steps a max pass:
each climbs from the minimum KL = 0, growing any deviation (RESULTS.md, "SCRUB's max
passes"). The CE term needs D_r's labels: with ``scrub_gamma=0`` there is
none and SCRUB runs label-agnostic; otherwise that setting is refused.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from fastmix.settings import COUNT, NONNEG, POSITIVE, Grid, LogRange, setting

from . import MethodContext, MethodResult, register
from .common import (
    done,
    fit,
    generator,
    needs_labels,
    original_logits,
    read_settings,
    sgd,
    shuffled,
    steps_per_epoch,
    student,
)


@dataclass
class ScrubSettings:
    scrub_lr: float = setting(5e-4, "SCRUB: SGD learning rate", POSITIVE, flag="--scrub-lr")
    scrub_epochs: int = setting(10, "SCRUB: epochs (each a min pass over D_r)", COUNT, flag="--scrub-epochs")
    scrub_msteps: int = setting(3, "SCRUB: the first epochs that also make a max pass over D_f", NONNEG,
                                flag="--scrub-msteps")
    scrub_alpha: float = setting(0.5, "SCRUB: weight of the KL on D_r", NONNEG, flag="--scrub-alpha")
    scrub_gamma: float = setting(1.0, "SCRUB: weight of the CE on D_r (0: label-agnostic)", NONNEG,
                                 flag="--scrub-gamma")
    scrub_kd_T: float = setting(4.0, "SCRUB: distillation temperature", POSITIVE, flag="--scrub-kd-T")
    scrub_batch_size: int = setting(64, "SCRUB: batch size of the min passes over D_r", COUNT,
                                    flag="--scrub-batch-size")
    scrub_forget_batch_size: int = setting(64, "SCRUB: batch size of the max passes over D_f (the reference's "
                                           "del_batch_size)", COUNT, flag="--scrub-forget-batch-size")


SETTINGS = ScrubSettings
# Around the reference's small-scale settings (alpha 0.5 among its sweeps, lr 5e-4, kd_T 4).
# The D_f batch from the reference's 64 up: fewer ascent steps a max pass (the docstring says why).
SEARCH_SPACE = {"scrub_lr": LogRange(1e-4, 1e-2), "scrub_epochs": Grid((3, 5, 10)), "scrub_msteps": Grid((1, 2, 3, 5)),
                "scrub_alpha": Grid((0.001, 0.1, 0.5, 1.0)), "scrub_kd_T": Grid((2.0, 4.0)),
                "scrub_forget_batch_size": Grid((64, 256, 1024, 4096))}


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """SCRUB's DistillKL: KL(softmax(t/T) || softmax(s/T)) * T^2, batch mean."""
    return F.kl_div(F.log_softmax(student_logits / T, 1), F.softmax(teacher_logits / T, 1),
                    reduction="batchmean") * T * T


def labels_for_ce(options: dict) -> str | None:
    gamma = options.get("scrub_gamma")
    gamma = ScrubSettings.scrub_gamma if gamma is None else gamma
    return "the true labels of D_r for its CE term (scrub_gamma > 0; 0 drops it)" if gamma > 0 else None


@register("scrub", settings=ScrubSettings, search_space=SEARCH_SPACE, needs_labels=labels_for_ce)
def run_scrub(ctx: MethodContext) -> MethodResult:
    """SCRUB (Kurmanji et al. 2023)."""
    s = read_settings(ScrubSettings, ctx.options)
    if not isinstance(s.scrub_msteps, int) or isinstance(s.scrub_msteps, bool):
        raise ValueError(f"scrub_msteps must be an int >= 0, got {s.scrub_msteps!r}")
    needs_labels("scrub", ctx)
    start = time.perf_counter()
    model, gen = student(ctx), generator(ctx)
    # The teacher (the original, frozen) sees the same unaugmented samples every epoch: its logits once.
    teacher = {True: original_logits(ctx, "forget"), False: original_logits(ctx, "retain")}
    n_f, n_r, bs, T = ctx.x_forget.shape[0], ctx.x_retain.shape[0], s.scrub_batch_size, s.scrub_kd_T
    bs_f = s.scrub_forget_batch_size

    def batches(epoch):
        maximise = [(True, i) for i in shuffled(gen, n_f, bs_f)] if epoch < s.scrub_msteps else []
        return maximise + [(False, i) for i in shuffled(gen, n_r, bs)]

    def loss(_, batch):
        forget, idx = batch
        x = (ctx.x_forget if forget else ctx.x_retain)[idx]
        out = model(x)
        kl = distill_kl(out, teacher[forget][idx], T)
        if forget:
            return -kl
        if s.scrub_gamma == 0:
            return s.scrub_alpha * kl
        return s.scrub_gamma * F.cross_entropy(out, ctx.y_retain[idx]) + s.scrub_alpha * kl

    total = s.scrub_epochs * steps_per_epoch(n_r, bs) + min(s.scrub_msteps, s.scrub_epochs) * steps_per_epoch(n_f, bs_f)
    fit(sgd(model, s.scrub_lr), loss, batches, epochs=s.scrub_epochs, total=total, desc="scrub", quiet=ctx.quiet)
    return done(ctx, model, start)
