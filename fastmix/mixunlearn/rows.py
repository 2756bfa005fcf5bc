"""Rows of an image tensor, picked by index, without copying them.

A run holds its decoded images once: the forget and retain sets, the retained model's
training data and the evaluation's subsets are :class:`Rows` of the one training tensor
(its storage and an index tensor), and each batch is gathered from it when it is used.
"""
from __future__ import annotations

import torch

CHUNK = 1024  # rows per pass where a whole set is read (finiteness, value ranges)


class Rows:
    """Rows ``index`` of ``base`` (all its rows when ``index`` is None), read batch by batch.

    What the code that reads images uses of a tensor works alike here: ``shape``,
    ``dtype``, ``device``, ``dim()``, ``len()``, ``index_select(0, idx)`` (a contiguous
    batch, like a tensor's) and ``rows[key]`` with a slice, an int, or a long or bool
    tensor (a new tensor in ``memory_format``, the layout the model wants; an advanced
    index of a tensor in that layout gives the same). Nothing is copied but the rows a
    call asks for.
    """

    def __init__(self, base: torch.Tensor, index: torch.Tensor | None = None,
                 memory_format: torch.memory_format = torch.contiguous_format):
        if not isinstance(base, torch.Tensor) or base.dim() < 1:
            raise TypeError(f"Rows needs a tensor of samples (N, ...), got {type(base).__name__}")
        if index is not None:
            index = torch.as_tensor(index, device=base.device)
            if index.dtype != torch.long or index.dim() != 1:
                raise TypeError(f"Rows' index must be a 1-d long tensor, got {index.dtype} of shape "
                                f"{tuple(index.shape)}")
        self.base, self.index, self.memory_format = base, index, memory_format

    @classmethod
    def of(cls, x) -> "Rows":
        """``x`` itself if it is :class:`Rows`; a tensor as all its rows, in its own layout."""
        if isinstance(x, Rows):
            return x
        cl = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        return cls(x, None, torch.channels_last if cl else torch.contiguous_format)

    def __len__(self) -> int:
        return self.base.shape[0] if self.index is None else self.index.shape[0]

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.base.shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    @property
    def device(self) -> torch.device:
        return self.base.device

    def dim(self) -> int:
        return self.base.dim()

    def is_floating_point(self) -> bool:
        return self.base.is_floating_point()

    @property
    def channels_last(self) -> bool:
        """Whether batches come in channels_last, and that layout differs from the default
        one (it does not for one channel, or 1x1 images)."""
        if self.memory_format != torch.channels_last or self.dim() != 4:
            return False
        probe = torch.empty((2, *self.base.shape[1:]), device="meta")
        return not probe.contiguous(memory_format=torch.channels_last).is_contiguous()

    def to(self, device) -> "Rows":
        """On ``device``; copies the base (all of it) only if it is elsewhere."""
        index = None if self.index is None else self.index.to(device)
        return Rows(self.base.to(device), index, self.memory_format)

    def with_format(self, memory_format: torch.memory_format) -> "Rows":
        """The same rows, given out in ``memory_format`` (nothing is copied now)."""
        return Rows(self.base, self.index, memory_format)

    def positions(self, idx: torch.Tensor) -> torch.Tensor:
        """The rows of ``base`` that rows ``idx`` of this view are."""
        return idx if self.index is None else self.index.index_select(0, idx)

    def index_select(self, dim: int, idx: torch.Tensor) -> torch.Tensor:
        if dim != 0:
            raise ValueError(f"Rows selects along dim 0, got dim {dim}")
        return self.base.index_select(0, self.positions(idx))

    def _long_index(self, key) -> torch.Tensor:
        if isinstance(key, slice):
            return torch.arange(len(self), device=self.device)[key]
        key = torch.as_tensor(key, device=self.device)
        if key.dtype == torch.bool:
            if key.shape != (len(self),):
                raise IndexError(f"a bool index of Rows needs shape ({len(self)},), got {tuple(key.shape)}")
            return key.nonzero().squeeze(1)
        return key.long()

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, int):
            return self.base[key if self.index is None else int(self.index[key])]
        if isinstance(key, slice):
            out = self.base[key] if self.index is None else self.base.index_select(0, self.index[key])
        else:
            out = self.base.index_select(0, self.positions(self._long_index(key)))
        return out.contiguous(memory_format=self.memory_format)

    def subset(self, idx) -> "Rows":
        """Rows ``idx`` of this view, as a view of the same base."""
        rows = self._long_index(idx)
        return Rows(self.base, rows if self.index is None else self.index.index_select(0, rows), self.memory_format)

    def chunks(self, size: int = CHUNK):
        """The rows in order, ``size`` at a time."""
        for i in range(0, len(self), size):
            yield self[i : i + size]


def cat_rows(parts) -> "Rows | torch.Tensor":
    """``parts`` one after another. Rows of one base stay a view (their indices are
    concatenated); anything else is concatenated into a new tensor (a copy)."""
    parts = list(parts)
    if parts and all(isinstance(p, Rows) for p in parts) and all(
            p.base is parts[0].base and p.memory_format == parts[0].memory_format for p in parts):
        n = parts[0].base.shape[0]
        whole = [p.index if p.index is not None else torch.arange(n, device=p.device) for p in parts]
        return Rows(parts[0].base, torch.cat(whole), parts[0].memory_format)
    return torch.cat([p[:] if isinstance(p, Rows) else p for p in parts])


def take_rows(x, idx) -> "Rows | torch.Tensor":
    """Rows ``idx`` of ``x``: a view of :class:`Rows`, a new tensor of a tensor."""
    return x.subset(idx) if isinstance(x, Rows) else x[idx]


def all_finite(x) -> bool:
    """Whether every value of ``x`` (a tensor or :class:`Rows`) is finite, read a chunk
    of rows at a time (no whole-size temporary) and back to the host once."""
    ok = torch.ones((), dtype=torch.bool, device=x.device)
    for i in range(0, len(x), CHUNK):
        ok &= torch.isfinite(x[i : i + CHUNK]).all()
    return bool(ok)
