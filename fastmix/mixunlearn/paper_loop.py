"""The eager, paper-style MixUnlearn loop (``MixUnlearn(step="paper")``,
``--paper-step``): what the benchmarks compare the fast step against.

As the public code does it: f_D's logits and features recomputed on every batch,
batches, lambdas and pairings drawn on the host (a numpy Generator seeded from the
seed), separate forward passes of the unlearner over the mixes, the retain and the
forget batch, the losses in plain torch ops (fastmix.ops.eager) with autograd, and each
step's loss read back with ``.item()`` for logging.

The options that follow the authors' code (``lambda_per``, ``generator_opponent``, the
MixBlock's) compute here what they compute in the fast step.
"""
from __future__ import annotations

import numpy as np
import torch

from fastmix.ops import eager
from fastmix.progress import progress_bar

from .batches import RunData
from .features import FrozenOriginal
from .loop import LoopPlan, Losses, mark_start
from .state import StepState


def paper_loop(state: StepState, data: RunData, original: FrozenOriginal, plan: LoopPlan, seed: int) -> Losses:
    """The paper-style loop over the same models and optimisers as the fast loop
    (``state``); its host generator is numpy's, seeded from ``seed``."""
    cfg, mixblock = state.config, state.mixblock
    x_f, y_f, x_r, y_r = data.x_f, data.y_f, data.x_r, data.y_r
    dev = x_f.device
    student, opt_u, opt_g = state.unlearner, state.unlearner_opt, state.mixblock_opt
    size, steps = state.image_size, plan.steps
    aware = data.aware
    n_f, n_r, B = x_f.shape[0], x_r.shape[0], cfg.batch_size
    rng = np.random.default_rng(seed)
    gen_params = list(mixblock.parameters()) if mixblock is not None else None
    omega = cfg.omega
    opponent = state.opponent

    def draw_lambda(b):
        if cfg.lambda_per == "batch":
            return eager.sample_beta_host(rng, 1, cfg.alpha, dev).expand(b).contiguous()
        return eager.sample_beta_host(rng, b, cfg.alpha, dev)

    def f_D(x, y):
        """f_D's targets and features for a batch, recomputed every time."""
        with torch.no_grad():
            if original.has_features:
                logits, h = original(x)
            else:
                logits, h = (None if aware else original.logits(x)), None
        return (y if aware else eager.sharpen(logits, cfg.sharpen_T)), h

    reps = (steps * B + n_r - 1) // n_r
    losses = Losses()
    losses_u, losses_g = losses.unlearner, losses.generator
    t = 0
    losses.start = mark_start(dev)
    with progress_bar(cfg.epochs * steps, "mixunlearn (paper step)", plan.quiet) as bar:
        for _ in range(cfg.epochs):
            order_f = rng.permutation(n_f)
            order_r = np.concatenate([rng.permutation(n_r) for _ in range(reps)])
            for s in range(steps):
                fidx = torch.from_numpy(order_f[s * B : (s + 1) * B]).to(dev)
                ridx = torch.from_numpy(order_r[s * B : (s + 1) * B]).to(dev)
                b = fidx.shape[0]
                xf, xr = x_f[fidx], x_r[ridx]
                qf, hf = f_D(xf, y_f[fidx] if aware else None)
                qr, hr = f_D(xr, y_r[ridx] if aware else None)
                if mixblock is not None and t % cfg.gen_interval == 0:
                    lam = draw_lambda(b)
                    mask = mixblock.mask(hf, hr[:b], lam, size)
                    if opponent is not None:  # the lagged copy, in train mode
                        logits = opponent(eager.mixup(xf, xr[:b], mask))
                    else:
                        student.eval()
                        logits = student(eager.mixup(xf, xr[:b], mask))
                        student.train()
                    loss = -eager.contrastive_loss(logits, qf, qr[:b], lam, cfg.tau_gen)
                    grads = torch.autograd.grad(loss, gen_params)
                    for p, g in zip(gen_params, grads):
                        p.grad = g
                    opt_g.step()
                    losses_g.append(torch.tensor(loss.item()))
                perm = torch.from_numpy(rng.permutation(B)[:b]).to(dev)
                loss = 0.0
                if cfg.use_mix:
                    lam = draw_lambda(b)
                    with torch.no_grad():
                        weight = lam if mixblock is None else mixblock.mask(hf, hr[perm], lam, size)
                    if state.mask_stats is not None:
                        state.mask_stats.add(lam, weight)
                    mix_logits = student(eager.mixup(xf, xr, weight, perm))
                    loss = eager.contrastive_loss(mix_logits, qf, qr, lam, cfg.tau_mix, perm)
                if omega > 0:
                    loss = loss + omega * eager.real_loss(student(xr), student(xf), qr, qf, cfg.tau_real)
                opt_u.zero_grad(set_to_none=True)
                loss.backward()
                opt_u.step()
                state.update_opponent()
                losses_u.append(torch.tensor(loss.item()))
                t += 1
                bar.update(1)
    return losses
