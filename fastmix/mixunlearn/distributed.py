"""Data parallelism for the unlearning loop (torchrun + torch.distributed).

Every rank draws the same global batch, lambdas and pairings from identically seeded
device generators (data and the teacher cache are replicated), computes the logits of
its own rows of the global batch, and ``all_gather``s them (autograd-aware) so that
each rank evaluates the whole, batch-coupled loss: the log-sum-exp of SPEC 4 spans the
global batch, so per-rank losses would not add up to it. The gather's backward sums the
N identical losses' gradients (N x the true one) and DDP's averaging divides by N, so
the parameters get the single-process gradient.

This shards each global batch by rows rather than the forget set through
``torch.utils.data.DistributedSampler``: that sampler shuffles on the host, and
per-rank batches drawn from it would not add up to the single process's batches.
"""
from __future__ import annotations

import os
import warnings

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str) -> torch.device:
    """Join the process group torchrun describes (nccl on CUDA, gloo on the CPU) and
    return this rank's device."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dev


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class RowShard:
    """This rank's rows of a global batch: ``per = ceil(n / world)`` rows each, the last
    ranks' shortfall padded by repeating the last row (dropped again after the gather),
    so every rank runs the same shapes and no rank runs an empty batch."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world = rank, world_size

    def per(self, n: int) -> int:
        """Each rank's rows of a global batch of ``n``."""
        return -(-n // self.world)

    def rows(self, n: int, device) -> torch.Tensor:
        per = self.per(n)
        return (torch.arange(per, device=device) + self.rank * per).clamp_(max=n - 1)

    def valid(self, n: int, device) -> torch.Tensor:
        """``(per,)``: 1 for this rank's rows of the batch, 0 for its padding rows."""
        per = self.per(n)
        return (torch.arange(per, device=device) + self.rank * per < n).float()

    def gather(self, local: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
        """``local`` is this rank's logits of several row groups stacked (``ceil(n/world)``
        rows of each group of ``n`` in ``sizes``); returns each group's full ``(n, ...)``."""
        from torch.distributed.nn.functional import all_gather

        per = [self.per(n) for n in sizes]
        with warnings.catch_warnings():  # deprecated for a private successor; still the public autograd gather
            warnings.simplefilter("ignore", FutureWarning)
            parts = all_gather(local.contiguous())  # one tensor per rank, autograd-aware
        out = []
        start = 0
        for n, p in zip(sizes, per):
            out.append(torch.cat([t[start : start + p] for t in parts])[:n])
            start += p
        return out
