"""What one unlearning run's steps share, built once by :meth:`MixUnlearn.unlearn`.

Names follow SPEC: f_D is the frozen original model (``original``), f_U the model
being unlearned (``unlearner``), G the MixBlock (``mixblock``). ``rng`` is the run's
device generator; every draw of a step comes from it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastmix.ops.loss import MixUnlearnLoss

from .batchnorm import RowGroups
from .config import LAGGED_MOMENTUM, MixUnlearnConfig
from .distributed import RowShard
from .engine import Amp
from .mixblock import MixBlock


@dataclass
class Batch:
    """One iteration's data: forget and retain images ``x_f``, ``x_r``; their targets
    ``q_f``, ``q_r`` (int64 labels, or f_D's sharpened outputs in the label-agnostic
    setting); their f_D features ``h_f``, ``h_r`` for the MixBlock (None for the Beta
    ablation). The retain batch may hold more rows than the forget batch."""

    x_f: torch.Tensor
    x_r: torch.Tensor
    q_f: torch.Tensor
    q_r: torch.Tensor
    h_f: torch.Tensor | None
    h_r: torch.Tensor | None

    def forget_sized(self) -> "Batch":
        """The retain side cut to the forget batch's rows (the generator step pairs row i with row i)."""
        b = self.x_f.shape[0]
        return Batch(self.x_f, self.x_r[:b], self.q_f, self.q_r[:b], self.h_f,
                     self.h_r[:b] if self.h_r is not None else None)


@dataclass
class StepState:
    """The models, optimisers and switches the two steps of SPEC 6 read.

    ``unlearner_forward`` is f_U as the unlearner step calls it (wrapped in DDP under
    torchrun) and ``mixblock_forward`` likewise for G; ``shard`` is this rank's rows of
    each global batch (None in one process). ``pairing`` is how the unlearner step
    draws its random pairing: ``"randperm"``, or ``"argsort"`` of uniform draws, which
    a CUDA graph can capture.

    ``groups`` is set when f_U has batch norm (fast step): the unlearner step names the
    parts of its one forward with it, so that each is normalised on its own
    (:mod:`fastmix.mixunlearn.batchnorm`). ``opponent`` is the lagged copy of f_U that
    scores the generator's mixes (``generator_opponent="lagged"``), its parameters an EMA
    of f_U's. ``mask_stats`` gathers the unlearner step's masks against lambda.
    """

    config: MixUnlearnConfig
    unlearner: nn.Module
    unlearner_forward: nn.Module
    mixblock: MixBlock | None
    mixblock_forward: nn.Module | None
    loss_fn: MixUnlearnLoss
    unlearner_opt: torch.optim.Optimizer
    mixblock_opt: torch.optim.Optimizer | None
    amp: Amp
    rng: torch.Generator
    image_size: tuple[int, int] | None
    backend: str | None = None
    shard: RowShard | None = None
    pairing: str = "randperm"
    groups: RowGroups | None = None
    opponent: nn.Module | None = None
    mask_stats: "MaskStats | None" = None

    def update_opponent(self) -> None:
        """The lagged opponent's EMA step after an unlearner step, on the device."""
        if self.opponent is None:
            return
        pairs = [(o, u.detach()) for o, u in zip(self.opponent.parameters(), self.unlearner.parameters())
                 if u.is_floating_point()]
        with torch.no_grad():
            torch._foreach_lerp_([o for o, _ in pairs], [u for _, u in pairs], 1.0 - LAGGED_MOMENTUM)


class MaskStats:
    """The mean mask against lambda, over every mix of the unlearner step, in ``bins``
    equal bins of lambda over [0, 1]: per bin the number of mixes, their mean lambda and
    their mean mask (the forget image's mean weight). Accumulated on the device;
    :meth:`read` reads it once (summed over the ranks under torchrun)."""

    def __init__(self, device: torch.device, bins: int = 10):
        self.bins = bins
        self.acc = torch.zeros(bins, 3, device=device)

    def add(self, lam: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        m = mask.float().flatten(1).mean(1) if mask.dim() > 1 else mask.float()
        w = torch.ones_like(m) if valid is None else valid
        idx = (lam * self.bins).long().clamp_(0, self.bins - 1)
        self.acc.index_add_(0, idx, torch.stack([w, lam * w, m * w], 1))

    def read(self, distributed: bool = False) -> dict:
        """``{"bins": [[lo, hi], ...], "count": [...], "mean_lambda": [...], "mean_mask": [...]}``
        (lists of ``bins`` numbers; the means of an empty bin are None)."""
        acc = self.acc.clone()
        if distributed:
            import torch.distributed as dist

            dist.all_reduce(acc)
        rows = acc.double().cpu().tolist()
        return {
            "bins": [[i / self.bins, (i + 1) / self.bins] for i in range(self.bins)],
            "count": [int(round(c)) for c, _, _ in rows],
            "mean_lambda": [s / c if c > 0 else None for c, s, _ in rows],
            "mean_mask": [m / c if c > 0 else None for c, _, m in rows],
        }
