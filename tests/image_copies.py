"""Finding copies of a data set's images: every new tensor an op makes that holds more
than ``rows`` images of one shape (a copy of a set, not a batch)."""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def _storage(t: torch.Tensor):
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None


class ImageCopies(TorchDispatchMode):
    """Within ``with ImageCopies(image_shape, rows) as found:``, ``found.copies`` lists
    ``(op, shape)`` of each op output of shape ``(n, *image_shape)`` with ``n > rows``
    in a storage none of the op's inputs has (views and in-place results are not copies)."""

    def __init__(self, image_shape, rows: int):
        super().__init__()
        self.image_shape, self.rows = tuple(image_shape), rows
        self.copies: list[tuple[str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {_storage(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if (isinstance(t, torch.Tensor) and t.dim() == len(self.image_shape) + 1
                    and tuple(t.shape[1:]) == self.image_shape and t.shape[0] > self.rows
                    and _storage(t) not in inputs):
                self.copies.append((str(func), tuple(t.shape)))
        return out
