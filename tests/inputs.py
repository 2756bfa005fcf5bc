"""Seeded inputs shared by the kernel tests (backends/test_kernels.py, backends/test_cuda_emulated.py,
ops/test_fused_loss.py)."""
import zlib

import torch


def seeded(*seed):
    """A generator seeded by the case's values, the same in every run (str hashes change
    between processes)."""
    return torch.Generator().manual_seed(zlib.crc32(repr(seed).encode()))


def targets(kind, n, C, gen, device="cpu"):
    """n class labels ("labels"), or n rows of soft targets over C classes."""
    if kind == "labels":
        return torch.randint(0, C, (n,), generator=gen).to(device)
    return torch.softmax(torch.randn(n, C, generator=gen) * 2, dim=1).to(device)


def noncontiguous(t):
    """The same values, every other column of a wider tensor whose other columns hold NaN
    (a kernel that reads them shows)."""
    wide = torch.full((t.shape[0], 2 * t.shape[1]), float("nan"), dtype=t.dtype, device=t.device)
    wide[:, ::2] = t
    return wide[:, ::2]
