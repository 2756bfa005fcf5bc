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

from .config import MixUnlearnConfig
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
