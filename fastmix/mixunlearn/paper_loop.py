"""The eager, paper-style MixUnlearn loop (``MixUnlearn(step="reference")``,
``--reference-step``): what the benchmarks compare the fast step against.

As the public code does it: f_D's logits and features recomputed on every batch,
batches, lambdas and pairings drawn on the host (a numpy Generator seeded from the
seed), separate forward passes of the unlearner over the mixes, the retain and the
forget batch, the losses in plain torch ops (fastmix.ops.eager) with autograd, and each
step's loss read back with ``.item()`` for logging.
"""
from __future__ import annotations

import numpy as np
import torch

from fastmix.ops import eager
from fastmix.progress import progress_bar


def reference_loop(mu, x_f, y_f, x_r, y_r, frozen, teacher, student, opt_u, opt_g, size, steps):
    """Returns the unlearner's and the generator's losses (0-d tensors, as the fast loop)."""
    cfg, dev = mu.config, mu.device
    aware = cfg.labels == "aware"
    n_f, n_r, B = x_f.shape[0], x_r.shape[0], cfg.batch_size
    rng = np.random.default_rng(mu.seed)
    gen_params = list(mu.mixblock.parameters()) if mu.mixblock is not None else None
    omega = cfg.omega

    def f_D(x, y):
        """f_D's targets and features for a batch, recomputed every time."""
        with torch.no_grad():
            if teacher is not None:
                logits, h = teacher(x)
            else:
                logits, h = (None if aware else frozen(x)), None
        return (y if aware else eager.sharpen(logits, cfg.sharpen_T)), h

    reps = (steps * B + n_r - 1) // n_r
    losses_u, losses_g = [], []
    t = 0
    mu._mark_loop_start()
    with progress_bar(cfg.epochs * steps, "mixunlearn (reference step)", mu.quiet) as bar:
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
                if mu.mixblock is not None and t % cfg.gen_interval == 0:
                    lam = eager.sample_beta_host(rng, b, cfg.alpha, dev)
                    mask = mu.mixblock.mask(hf, hr[:b], lam, size)
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
                    lam = eager.sample_beta_host(rng, b, cfg.alpha, dev)
                    with torch.no_grad():
                        weight = lam if mu.mixblock is None else mu.mixblock.mask(hf, hr[perm], lam, size)
                    loss = eager.contrastive_loss(student(eager.mixup(xf, xr, weight, perm)), qf, qr, lam, cfg.tau_mix, perm)
                if omega > 0:
                    loss = loss + omega * eager.real_loss(student(xr), student(xf), qr, qf, cfg.tau_real)
                opt_u.zero_grad(set_to_none=True)
                loss.backward()
                opt_u.step()
                losses_u.append(torch.tensor(loss.item()))
                t += 1
                bar.update(1)
    return losses_u, losses_g
