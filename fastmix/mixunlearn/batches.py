"""Reading the fast loop's batches: images by index from the device-resident data, and
their targets and f_D features from the teacher cache or from f_D itself."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fastmix.ops.loss import MixUnlearnLoss

from .features import FrozenOriginal
from .rows import Rows
from .state import Batch
from .teacher_cache import TeacherCache


@dataclass
class RunData:
    """A run's forget and retain samples on the device (labels None when label-agnostic):
    :class:`Rows` of the images given, never copies, which give batches in the run's
    ``memory_format`` (the models' copies take it too)."""

    x_f: Rows
    y_f: torch.Tensor | None
    x_r: Rows
    y_r: torch.Tensor | None
    memory_format: torch.memory_format = torch.contiguous_format

    @property
    def aware(self) -> bool:
        return self.y_f is not None


class BatchReader:
    """Builds a :class:`Batch` from forget and retain indices.

    With a ``cache`` the targets and features are read by index; without one, f_D
    (``original``) runs on the (``augment``-ed) batch. Augmentation draws from ``rng``,
    the run's device generator.
    """

    def __init__(self, data: RunData, original: FrozenOriginal, cache: TeacherCache | None,
                 loss_fn: MixUnlearnLoss, augment, rng: torch.Generator):
        self.data, self.original, self.cache = data, original, cache
        self.loss_fn, self.augment, self.rng = loss_fn, augment, rng
        x = data.x_f
        # index_select gives a contiguous batch; a channels_last run keeps its batches so
        # (one channel is laid out alike either way)
        self.channels_last = data.memory_format == torch.channels_last and x.shape[1] > 1

    def side(self, side: int, idx: torch.Tensor):
        """``(images, targets, features)`` of rows ``idx`` of D_f (side 0) or D_r (side 1)."""
        d = self.data
        x, y = (d.x_f, d.y_f) if side == 0 else (d.x_r, d.y_r)
        xb = x.index_select(0, idx)
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        if self.cache is not None:
            qb, hb = self.cache.read(side, idx)
            return xb, (y.index_select(0, idx) if d.aware else qb), hb
        if self.augment is not None:
            xb = self.augment(xb, self.rng)
        with torch.no_grad():
            if d.aware:
                logits, hb = None, (self.original.features(xb) if self.original.has_features else None)
            else:
                logits, hb = self.original(xb)
        return xb, (y.index_select(0, idx) if d.aware else self.loss_fn.targets(logits)), hb

    def batch(self, forget_idx: torch.Tensor, retain_idx: torch.Tensor) -> Batch:
        x_f, q_f, h_f = self.side(0, forget_idx)
        x_r, q_r, h_r = self.side(1, retain_idx)
        return Batch(x_f=x_f, x_r=x_r, q_f=q_f, q_r=q_r, h_f=h_f, h_r=h_r)
