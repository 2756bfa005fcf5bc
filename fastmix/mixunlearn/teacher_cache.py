"""The teacher cache: the frozen original model's outputs per sample (its feature maps
for the MixBlock; its sharpened logits as label-agnostic targets), on the device, read
by index. f_D is frozen and, without augmentation, its inputs never change, so each
sample's outputs are computed once, in large batches.

The forget side is filled up front (every epoch visits all of D_f). With labels, the
retain side's features are filled per epoch: the samples the epoch's batches will draw
that were never computed, so a short run over a large D_r does not pay for samples it
never sees; finding them reads one count back to the host, once per epoch, outside
the steps. (Convolutional features come out the same whatever batch computes them;
logits need not: a small batch's matrix product may round differently, so
label-agnostic targets are all computed up front, in the same batches as always.)
"""
from __future__ import annotations

import math

import torch

from .features import FrozenOriginal
from .rows import Rows

CHUNK = 1024  # samples per f_D pass


class TeacherCache:
    def __init__(self, original: FrozenOriginal, loss_fn, x_f, x_r, aware: bool, feat_shape, num_classes: int):
        self.original, self.loss_fn, self.aware = original, loss_fn, aware
        with_features = original.has_features
        self.x_f, self.x_r = x_f, x_r = Rows.of(x_f), Rows.of(x_r)
        dev = x_f.device
        n_f, n_r = x_f.shape[0], x_r.shape[0]
        fmt = dict(memory_format=torch.channels_last) if x_f.channels_last else {}  # the run's layout

        def empty(n, *shape):
            t = torch.empty(n, *shape, device=dev)
            return t.contiguous(**fmt) if t.dim() == 4 else t

        self.feats = [empty(n_f, *feat_shape), empty(n_r, *feat_shape)] if with_features else None
        self.targets = None if aware else [torch.empty(n, num_classes, device=dev) for n in (n_f, n_r)]
        self.done_r = torch.zeros(n_r, dtype=torch.bool, device=dev)
        per_sample = (math.prod(feat_shape) if with_features else 0) + (0 if aware else num_classes)
        self.nbytes = (n_f + n_r) * per_sample * 4
        self._fill(0, torch.arange(n_f, device=dev))
        if not aware:
            self.prepare(torch.arange(n_r, device=dev))

    @torch.no_grad()
    def _fill(self, side: int, idx: torch.Tensor) -> None:
        x = (self.x_f, self.x_r)[side]
        for i in range(0, idx.shape[0], CHUNK):
            rows = idx[i : i + CHUNK]
            xb = x.index_select(0, rows)
            if self.aware:  # only the features are needed: skip f_D's layers after them
                self.feats[side][rows] = self.original.features(xb)
                continue
            logits, h = self.original(xb)
            if h is not None:
                self.feats[side][rows] = h
            self.targets[side][rows] = self.loss_fn.targets(logits)

    def prepare(self, retain_idx: torch.Tensor) -> int:
        """Compute the retain samples among ``retain_idx`` not computed yet; returns how many."""
        missing = torch.unique(retain_idx[~self.done_r[retain_idx]])
        count = int(missing.shape[0])  # the epoch's one host read
        if count:
            self._fill(1, missing)
            self.done_r[missing] = True
        return count

    def read(self, side: int, idx: torch.Tensor):
        """``(targets or None, features or None)`` of rows ``idx`` of D_f (side 0) or D_r (1)."""
        q = self.targets[side].index_select(0, idx) if self.targets is not None else None
        h = self.feats[side].index_select(0, idx) if self.feats is not None else None
        return q, h
