"""CIFAR-10: the python pickle batches (``cifar-10-batches-py``)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from .base import DataError, ImageDataset, check_labels, from_uint8

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The CIFAR batches hold only dicts, lists, bytes and numpy arrays: refuse anything else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 3, 32, 32)`` uint8 images and ``(N,)`` labels from one pickle batch."""
    try:
        with open(path, "rb") as f:
            batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path}: expected a CIFAR-10 python batch, not found") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise DataError(f"{path}: not a readable CIFAR-10 python batch (truncated or corrupt: {e})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a dict with b'data' and b'labels', found {type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise DataError(f"{path}: expected the keys b'data' and b'labels', found {sorted(map(str, batch))}")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: expected b'data' as uint8 of shape (N, 3072), found {data.dtype} {data.shape}")
    labels = check_labels(path, labels, 10, data.shape[0])
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(data_root: str | None) -> ImageDataset:
    if not data_root:
        raise DataError("cifar10: pass --data-root DIR holding cifar-10-batches-py (data_batch_1..5, test_batch)")
    root = Path(data_root)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    train = [read_batch(root / name) for name in TRAIN_BATCHES]
    test_x, test_y = read_batch(root / TEST_BATCH)
    return from_uint8(
        "cifar10",
        np.concatenate([x for x, _ in train]),
        np.concatenate([y for _, y in train]),
        test_x,
        test_y,
        num_classes=10,
    )
