"""The in-memory image dataset every loader returns."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch


class DataError(ValueError):
    """A missing or malformed dataset file; the message names the file and what was expected."""


@dataclass(frozen=True)
class ImageDataset:
    """Train and evaluation images as float32 ``(N, C, H, W)`` tensors, standardised
    with the training set's per-channel mean and std, and int64 labels.

    ``x_test``/``y_test`` is the set the metrics use: the official test set, or a
    validation split carved from the training data by :meth:`carve_validation`
    (then ``eval_split == "val"`` and the test set is never touched).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    eval_split: str = "test"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    def carve_validation(self, size: int, seed: int, *,
                         in_place: bool = False) -> tuple["ImageDataset", "ImageDataset"]:
        """Move a seeded random ``size`` training samples out of the training set.

        Returns ``(train_minus_val_with_test, train_minus_val_with_val)``: the same
        training data, evaluated on the test set or on the carved validation set.
        ``in_place=True`` reuses this data set's training tensor instead of copying it:
        the kept rows move to its front and the validation rows behind them, each in their
        order, so the images are never held twice (only the validation rows, while they
        move); this data set's ``x_train`` is then no longer valid (a run carves once,
        right after loading). Both forms give the same tensors.
        """
        n = self.x_train.shape[0]
        if not 0 < size < n:
            raise ValueError(f"val_size (--val-size) must be in 1..{n - 1} for {self.name}, got {size}")
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=g)
        val, keep = order[:size].sort().values, order[size:].sort().values
        x_val = self.x_train[val]
        if in_place:  # kept rows to the front, the validation rows behind them: one tensor's memory in the end
            x = self.x_train
            x_keep = _compact_rows(x, keep)
            x[keep.numel():] = x_val
            x_val = x[keep.numel():]
        else:
            x_keep = self.x_train[keep]
        base = replace(self, x_train=x_keep, y_train=self.y_train[keep])
        with_val = replace(base, x_test=x_val, y_test=self.y_train[val], eval_split="val")
        return base, with_val


def _compact_rows(x: torch.Tensor, keep: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """``x[keep]`` for ascending ``keep``, written over ``x``'s own first rows (a view of them).
    Row j comes from row keep[j] >= j, and the rows a chunk overwrites lie below every row a
    later chunk reads, so no row is overwritten before it is read."""
    for start in range(0, keep.numel(), chunk):
        idx = keep[start:start + chunk]
        x[start:start + idx.numel()] = x.index_select(0, idx)
    return x[:keep.numel()]


def from_uint8(
    name: str,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int,
    scale: float = 255.0,
) -> ImageDataset:
    """Build an :class:`ImageDataset` from ``(N, C, H, W)`` pixel arrays in ``[0, scale]``.

    Refuses test images of another shape than the training images (the model would
    meet them only at evaluation, after training)."""
    if tuple(np.shape(test_images)[1:]) != tuple(np.shape(train_images)[1:]):
        raise DataError(f"{name}: the test images are {'x'.join(map(str, np.shape(test_images)[1:]))} (C x H x W) "
                        f"but the training images are {'x'.join(map(str, np.shape(train_images)[1:]))}; "
                        "both sets must hold images of one size")
    # one float32 tensor per set, scaled and standardised in place (no second copy while loading)
    x_train = torch.from_numpy(np.array(train_images, dtype=np.float32)).div_(scale)
    x_test = torch.from_numpy(np.array(test_images, dtype=np.float32)).div_(scale)
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return ImageDataset(
        name=name,
        x_train=x_train.sub_(mean).div_(std),
        y_train=torch.from_numpy(np.asarray(train_labels, dtype=np.int64)),
        x_test=x_test.sub_(mean).div_(std),
        y_test=torch.from_numpy(np.asarray(test_labels, dtype=np.int64)),
        num_classes=num_classes,
    )


def check_labels(path, labels: np.ndarray, num_classes: int, count: int | None = None) -> np.ndarray:
    """Labels must be integers in ``[0, num_classes)``, ``count`` of them when given.

    Numbers of a float type are accepted when whole (MATLAB stores labels as doubles);
    fractional labels, strings and other objects are refused, never truncated."""
    try:
        labels = np.asarray(labels).reshape(-1)
    except (ValueError, TypeError) as e:
        raise DataError(f"{path}: expected a flat list of integer labels ({e})") from None
    if count is not None and labels.shape[0] != count:
        raise DataError(f"{path}: expected {count} labels (one per image), found {labels.shape[0]}")
    numeric = np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)
    if labels.dtype == bool or not numeric:
        raise DataError(f"{path}: expected integer labels, found {labels.dtype} values such as "
                        f"{_first_non_integer(labels.tolist())!r}")
    if np.issubdtype(labels.dtype, np.floating) and labels.size:
        bad = ~np.isfinite(labels) | (labels != np.round(labels))
        if bad.any():
            raise DataError(f"{path}: expected integer labels, found {float(labels[bad][0])!r} "
                            f"(label {int(np.argmax(bad))}); fractional labels are not truncated")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{path}: labels must be in 0..{num_classes - 1}, found values from {labels.min()} to {labels.max()}"
        )
    return labels.astype(np.int64)


def _first_non_integer(values: list):
    for v in values:
        try:
            int(v)
        except (TypeError, ValueError):
            return v
    return values[0] if values else None
