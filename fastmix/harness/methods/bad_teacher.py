"""Bad teaching: distil from the original on D_r and from a random teacher on D_f.

Paper: Chundawat et al., "Can Bad Teaching Induce Forgetting? Unlearning in Deep
Networks using an Incompetent Teacher" (AAAI 2023). Reference code:
vikram2000b/bad-teaching-unlearning (``blindspot_unlearner``, ``UnlearnerLoss``): the
student (a copy of the original) matches ``softmax(t / T)`` of the competent teacher
(the original) on retain samples and of an incompetent teacher (the same architecture,
randomly initialised) on forget samples, by ``KL(teacher || student)`` averaged over
every element (torch's ``reduction="mean"``, as there); the data are D_f and a random
30% of D_r, shuffled together; Adam lr 1e-4, T 1, 1 epoch, batch 256.

Label-agnostic by design: it uses only the two teachers' outputs and which set a sample
comes from. Choices: the random teacher's initial weights come from the seed.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fastmix.mixunlearn.rows import cat_rows, take_rows
from fastmix.settings import COUNT, POSITIVE, Grid, LogRange, setting

from . import MethodContext, MethodResult, register
from .common import (
    done,
    fit,
    generator,
    logits_of,
    original_logits,
    read_settings,
    shuffled,
    steps_per_epoch,
    student,
)


@dataclass
class BadTeacherSettings:
    bad_teacher_lr: float = setting(1e-4, "bad teaching: Adam learning rate", POSITIVE, flag="--bad-teacher-lr")
    bad_teacher_epochs: int = setting(1, "bad teaching: epochs", COUNT, flag="--bad-teacher-epochs")
    bad_teacher_T: float = setting(1.0, "bad teaching: KL temperature", POSITIVE, flag="--bad-teacher-T")
    bad_teacher_retain_share: float = setting(0.3, "bad teaching: share of D_r drawn to train on, in (0, 1]",
                                              POSITIVE, flag="--bad-teacher-retain-share")
    bad_teacher_batch_size: int = setting(256, "bad teaching: batch size", COUNT, flag="--bad-teacher-batch-size")


SETTINGS = BadTeacherSettings
# Around the reference's Adam lr 1e-4, 1 epoch, T 1.
SEARCH_SPACE = {"bad_teacher_lr": LogRange(1e-5, 1e-3), "bad_teacher_epochs": Grid((1, 2, 5)),
                "bad_teacher_T": Grid((1.0, 2.0, 4.0))}


def randomly_initialised(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with every module's parameters (and BatchNorm statistics) reset."""
    fresh = copy.deepcopy(model)
    device = next(fresh.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for m in fresh.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return fresh.eval().requires_grad_(False)


@register("bad_teacher", settings=BadTeacherSettings, search_space=SEARCH_SPACE)
def run_bad_teacher(ctx: MethodContext) -> MethodResult:
    """Bad teaching (Chundawat et al. 2023)."""
    s = read_settings(BadTeacherSettings, ctx.options)
    if not s.bad_teacher_retain_share <= 1.0:
        raise ValueError(f"bad_teacher_retain_share must be in (0, 1], got {s.bad_teacher_retain_share}")
    start = time.perf_counter()
    model, gen = student(ctx), generator(ctx)
    bad = randomly_initialised(ctx.original, ctx.seed + 1)
    n_r = ctx.x_retain.shape[0]
    keep = torch.randperm(n_r, generator=gen, device=gen.device)[: max(1, int(s.bad_teacher_retain_share * n_r))]
    x = cat_rows([ctx.x_forget, take_rows(ctx.x_retain, keep)])
    is_forget = torch.zeros(x.shape[0], 1, device=x.device)
    is_forget[: ctx.x_forget.shape[0]] = 1.0
    T = s.bad_teacher_T
    # Both teachers are frozen and the data unaugmented: their targets once, not every epoch.
    good_logits = torch.cat([original_logits(ctx, "forget"), original_logits(ctx, "retain")[keep]])
    with torch.no_grad():
        targets = is_forget * F.softmax(logits_of(bad, x) / T, 1) + (1 - is_forget) * F.softmax(good_logits / T, 1)

    def loss(_, idx):
        out = F.log_softmax(model(x[idx]) / T, 1)
        return F.kl_div(out, targets[idx], reduction="sum") / out.numel()

    n = x.shape[0]
    fit(torch.optim.Adam(model.parameters(), lr=s.bad_teacher_lr), loss,
        lambda _: shuffled(gen, n, s.bad_teacher_batch_size), epochs=s.bad_teacher_epochs,
        total=s.bad_teacher_epochs * steps_per_epoch(n, s.bad_teacher_batch_size), desc="bad_teacher", quiet=ctx.quiet)
    return done(ctx, model, start)
