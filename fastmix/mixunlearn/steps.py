"""The two steps of SPEC 6, each one body for one process and for torchrun.

Under torchrun (``state.shard`` set) each rank runs its own rows of the global batch
through the models and the gather hands every rank the whole batch's logits for the
batch-coupled loss (:mod:`fastmix.mixunlearn.distributed`); in one process every row is
this process's and the gather only splits the logits.

With batch norm in f_U (``state.groups`` set) the unlearner step's one forward names its
parts, so that each is normalised with its own statistics as the paper step's separate
forwards are (:mod:`fastmix.mixunlearn.batchnorm`); without batch norm the forward is
the same single pass either way.
"""
from __future__ import annotations

import contextlib

import torch

from fastmix.ops.contrastive import real_loss
from fastmix.ops.mixup import mixup
from fastmix.ops.sampling import sample_lambda

from .distributed import RowShard
from .state import Batch, StepState


def _local(shard: RowShard | None, t: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """This rank's rows of ``t``, whose first ``n`` rows form a global batch (all of them in one process)."""
    if shard is None or t is None:
        return t
    return t.index_select(0, shard.rows(n, t.device))


def _whole(shard: RowShard | None, local: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """The whole batch's fp32 logits of each row group, from this rank's ``local`` rows."""
    if shard is None:
        return list(local.float().split(sizes))
    return shard.gather(local.float(), sizes)


def _lambda(state: StepState, b: int, device) -> torch.Tensor:
    """``(b,)`` mixing ratios: one per sample, or one for the batch (``lambda_per="batch"``)."""
    cfg = state.config
    if cfg.lambda_per == "batch":
        return sample_lambda(1, cfg.alpha, device=device, generator=state.rng).expand(b).contiguous()
    return sample_lambda(b, cfg.alpha, device=device, generator=state.rng)


def _parts(state: StepState, sizes: list[int], device):
    """The next forward of f_U runs these parts (global sizes), each a batch of its own for
    batch norm; this rank's rows of each under torchrun, the padding weighted zero."""
    shard = state.shard
    if state.groups is None:
        return contextlib.nullcontext()
    if shard is None:
        return state.groups(sizes)
    return state.groups([shard.per(n) for n in sizes], [shard.valid(n, device) for n in sizes])


class _Frozen:
    """Within the block, no gradient reaches ``module``'s parameters (G's step must not move f_U)."""

    def __init__(self, module: torch.nn.Module):
        self.params = [p for p in module.parameters() if p.requires_grad]

    def __enter__(self):
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc):
        for p in self.params:
            p.requires_grad_(True)


def generator_step(state: StepState, batch: Batch) -> torch.Tensor:
    """Update the MixBlock only, towards mixes that reveal D_f and lose D_r; the forget
    row i mixes with retain row i. Returns the loss ``-C_tau_gen`` (0-d, on the device).

    The mixes are scored by the live f_U in eval mode (its running statistics; as the
    paper step does), or by the lagged opponent in train mode (``generator_opponent``)."""
    shard, amp = state.shard, state.amp
    x_f = batch.x_f
    b = x_f.shape[0]
    lam = _lambda(state, b, x_f.device)
    if shard is None:
        mask = state.mixblock.mask(batch.h_f, batch.h_r, lam, state.image_size)
    else:  # through DDP's forward, so that DDP averages G's gradients
        mask = state.mixblock_forward(_local(shard, batch.h_f, b), _local(shard, batch.h_r, b),
                                      _local(shard, lam, b), state.image_size)[:, 0:1]
    opt = state.mixblock_opt
    # backward(), so that DDP averages G's gradients, with f_U frozen so that none reach it
    lagged = state.opponent is not None
    scorer = state.opponent if lagged else state.unlearner
    with _Frozen(scorer):
        if not lagged:
            scorer.eval()  # f_U's batch-norm statistics must not move in G's step
        with amp.autocast(), _parts(state, [b], x_f.device):
            local = scorer(mixup(_local(shard, x_f, b), _local(shard, batch.x_r, b), mask, backend=state.backend))
        scorer.train()
        (logits,) = _whole(shard, local, [b])
        loss = state.loss_fn.generator_loss(logits, batch.q_f, batch.q_r, lam)
        opt.zero_grad(set_to_none=True)
        amp.scale(loss, opt).backward()
    amp.step(opt)
    return loss.detach()


def unlearner_step(state: StepState, batch: Batch) -> torch.Tensor:
    """Update f_U only: ``L_mix + omega * L_real`` on mixes with a random pairing of
    forget rows with retain rows, and on the real batches. Returns the loss (0-d)."""
    cfg, shard, amp = state.config, state.shard, state.amp
    x_f, x_r = batch.x_f, batch.x_r
    b, n_r = x_f.shape[0], x_r.shape[0]
    if state.pairing == "argsort":
        perm = torch.rand(n_r, generator=state.rng, device=x_f.device).argsort()[:b]
    else:
        perm = torch.randperm(n_r, generator=state.rng, device=x_f.device)[:b]
    lam = _lambda(state, b, x_f.device) if cfg.use_mix else None
    parts, sizes = [], []
    if cfg.use_mix:
        lam_l, perm_l = _local(shard, lam, b), _local(shard, perm, b)
        with torch.no_grad():
            weight = lam_l if state.mixblock is None else state.mixblock.mask(
                _local(shard, batch.h_f, b), batch.h_r.index_select(0, perm_l), lam_l, state.image_size)
        if state.mask_stats is not None:
            state.mask_stats.add(lam_l, weight, None if shard is None else shard.valid(b, x_f.device))
        parts.append(mixup(_local(shard, x_f, b), x_r, weight, perm_l, backend=state.backend))
        sizes.append(b)
    if cfg.omega > 0:
        parts += [_local(shard, x_r, n_r), _local(shard, x_f, b)]
        sizes += [n_r, b]
    with amp.autocast(), _parts(state, sizes, x_f.device):
        local = state.unlearner_forward(torch.cat(parts) if len(parts) > 1 else parts[0])
    # split, not slices: its backward is one cat, theirs three zero-filled copies summed
    pieces = _whole(shard, local, sizes)
    mix_logits = pieces.pop(0) if cfg.use_mix else None
    real_r, real_f = (pieces[0], pieces[1]) if cfg.omega > 0 else (None, None)
    if cfg.use_mix:
        loss = state.loss_fn(mix_logits, real_f, real_r, batch.q_f, batch.q_r, lam, perm)
    else:
        loss = cfg.omega * real_loss(real_r, real_f, batch.q_r, batch.q_f, cfg.tau_real,
                                     reduction=cfg.reduction, backend=state.backend)
    state.unlearner_opt.zero_grad(set_to_none=True)
    amp.scale(loss, state.unlearner_opt).backward()
    amp.step(state.unlearner_opt)
    state.update_opponent()
    return loss.detach()
