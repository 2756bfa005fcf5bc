"""Batch norm over row groups: one forward that computes what separate forwards compute.

The fast unlearner step runs f_U once over ``[mixes; x_r; x_f]``; the paper step runs it
three times, once per part. With batch norm in f_U the two differ: one forward
normalises every row with statistics of the union and moves the running statistics
once. :func:`group_batchnorm` swaps f_U's batch-norm modules for :class:`GroupBatchNorm`,
which, while a :class:`RowGroups` context names the parts, normalises each part with
its own batch statistics and moves the running statistics as the separate forwards
would, part by part in order (``num_batches_tracked`` counts one batch per part).

Under torchrun each rank holds some rows of every part (and the last rank repeats a row
as padding, :class:`~fastmix.mixunlearn.distributed.RowShard`): the statistics are then
the whole part's, summed over the ranks with an autograd-aware ``all_reduce``, with the
padding rows weighted zero; the same code serves gloo on the CPU and NCCL on CUDA, and
gives what ``SyncBatchNorm`` gives over the unpadded rows.

Outside such a context, and in eval mode, the module is the plain batch norm it replaced.
:func:`plain_batchnorm` puts the original modules back (the same parameter and buffer
tensors, so everything the run learnt is kept).
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm


class RowGroups:
    """The parts of the next forward's batch, shared by every :class:`GroupBatchNorm` of a
    model. ``sizes``: this process's rows of each part, in order; ``valid``: under
    torchrun, one ``(rows,)`` 0/1 weight per part (0 for a padding row), else None."""

    def __init__(self):
        self.sizes: list[int] | None = None
        self.ids: torch.Tensor | None = None
        self.weight: torch.Tensor | None = None
        self.distributed = False

    @contextlib.contextmanager
    def __call__(self, sizes: list[int], valid: list[torch.Tensor] | None = None):
        self.sizes, self.distributed = list(sizes), valid is not None
        if valid is not None:
            dev = valid[0].device
            self.weight = torch.cat(valid).float()
            self.ids = torch.cat([torch.full((n,), g, dtype=torch.long, device=dev) for g, n in enumerate(sizes)])
        try:
            yield
        finally:
            self.sizes = self.ids = self.weight = None
            self.distributed = False


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, _BatchNorm) for m in model.modules())


class GroupBatchNorm(nn.Module):
    """A batch-norm module (1-, 2- or 3-d) that normalises each part of its batch named by
    ``groups`` on its own; the parameters and buffers are the replaced module's tensors,
    under the same names (a state dict reads the same)."""

    def __init__(self, bn: _BatchNorm, groups: RowGroups):
        super().__init__()
        self.eps, self.momentum, self.track_running_stats = bn.eps, bn.momentum, bn.track_running_stats
        self.num_features = bn.num_features
        self.weight, self.bias = bn.weight, bn.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(name, getattr(bn, name))
        self._plain = [bn]  # in a list: not a submodule, kept for plain_batchnorm
        self._groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self._groups
        batch_stats = self.training or self.running_mean is None
        if g.sizes is None or not batch_stats:
            plain = self._plain[0]
            plain.training = self.training
            return plain(x)
        if g.distributed or self.momentum is None:
            return self._pooled(x, g)
        # one process: each part through torch's own batch norm, which moves the running
        # statistics in place, part after part, exactly as separate forwards do
        out = []
        for part in x.split(g.sizes):
            if self.track_running_stats:
                self.num_batches_tracked.add_(1)
            out.append(F.batch_norm(part, self.running_mean, self.running_var, self.weight, self.bias, True,
                                    self.momentum, self.eps))
        return torch.cat(out)

    def _pooled(self, x: torch.Tensor, g: RowGroups) -> torch.Tensor:
        """Per-part statistics from weighted sums (count, sum, sum of squares), all-reduced
        over the ranks in one call; shifted by the running mean (the same on every rank)
        so that the sum of squares does not cancel."""
        n_rows, C = x.shape[0], x.shape[1]
        G = len(g.sizes)
        if g.ids is None:
            ids = torch.cat([torch.full((n,), i, dtype=torch.long, device=x.device) for i, n in enumerate(g.sizes)])
            weight = torch.ones(n_rows, device=x.device)
        else:
            ids, weight = g.ids, g.weight
        xf = x.float()
        spatial = tuple(range(2, x.dim()))
        view = (n_rows, C) + (1,) * len(spatial)
        shift = (self.running_mean.detach().float() if self.running_mean is not None
                 else torch.zeros(C, device=x.device))
        d = xf - shift.view((1, C) + (1,) * len(spatial))
        s1 = d.sum(spatial) if spatial else d  # (rows, C)
        s2 = (d * d).sum(spatial) if spatial else d * d
        per_row = math.prod(x.shape[2:])
        member = F.one_hot(ids, G).t().float() * weight  # (G, rows)
        stats = torch.cat([member @ s1, member @ s2, member.sum(1, keepdim=True) * per_row], 1)  # (G, 2C + 1)
        if g.distributed and dist.is_available() and dist.is_initialized():
            from torch.distributed.nn.functional import all_reduce

            stats = all_reduce(stats)  # its backward sums the ranks' gradients, as the logits' gather does
        s1g, s2g, count = stats.split([C, C, 1], 1)
        mean_d = s1g / count
        var = (s2g / count - mean_d * mean_d).clamp_min(0)
        mean = mean_d + shift
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        offset = -mean * scale
        if self.bias is not None:
            offset = offset + self.bias
        y = xf * scale.index_select(0, ids).view(view) + offset.index_select(0, ids).view(view)
        if self.training and self.track_running_stats:
            with torch.no_grad():
                unbiased = var * (count / (count - 1).clamp_min(1))
                for i in range(G):  # part after part, as separate forwards move them
                    self.num_batches_tracked.add_(1)
                    factor = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked
                    self.running_mean.lerp_(mean[i].to(self.running_mean.dtype), factor)
                    self.running_var.lerp_(unbiased[i].to(self.running_var.dtype), factor)
        return y.to(x.dtype).contiguous(memory_format=_format(x))


def _format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def group_batchnorm(model: nn.Module, groups: RowGroups) -> int:
    """Swap ``model``'s batch-norm modules for :class:`GroupBatchNorm` on ``groups``, in
    place; returns how many."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _BatchNorm):
                setattr(parent, name, GroupBatchNorm(child, groups))
                swapped += 1
    return swapped


def plain_batchnorm(model: nn.Module) -> None:
    """Undo :func:`group_batchnorm`: the original modules, holding what the run learnt."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, GroupBatchNorm):
                plain = child._plain[0]
                plain.train(child.training)
                setattr(parent, name, plain)
