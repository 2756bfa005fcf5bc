"""SVHN: the cropped-digit MATLAB files ``train_32x32.mat`` and ``test_32x32.mat``."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import DataError, ImageDataset, check_labels, from_uint8


def read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 3, 32, 32)`` uint8 images and labels 0..9 (the file stores digit 0 as 10)."""
    from scipy.io import loadmat

    if not path.is_file():
        raise DataError(f"{path}: expected an SVHN .mat file (X: 32x32x3xN uint8, y: Nx1), not found")
    try:
        mat = loadmat(path)
    except Exception as e:  # scipy raises several types for truncated or non-MAT files
        raise DataError(f"{path}: not a readable MATLAB file (truncated or corrupt: {e})") from None
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path}: expected the variables X and y, found "
                        f"{sorted(k for k in mat if not k.startswith('__'))}")
    x, y = mat["X"], np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: expected X of shape (32, 32, 3, N), found {x.shape}")
    y = np.where(y == 10, 0, y)
    y = check_labels(path, y, 10, x.shape[3])
    return np.transpose(x, (3, 2, 0, 1)).astype(np.uint8), y


def load_svhn(data_root: str | None) -> ImageDataset:
    if not data_root:
        raise DataError("svhn: pass --data-root DIR holding train_32x32.mat and test_32x32.mat")
    root = Path(data_root)
    if (root / "svhn").is_dir() and not (root / "train_32x32.mat").exists():
        root = root / "svhn"
    train_x, train_y = read_mat(root / "train_32x32.mat")
    test_x, test_y = read_mat(root / "test_32x32.mat")
    return from_uint8("svhn", train_x, train_y, test_x, test_y, num_classes=10)
