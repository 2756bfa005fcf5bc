"""SVHN: the cropped-digit MATLAB files ``train_32x32.mat`` and ``test_32x32.mat``."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import DataError, ImageDataset, check_labels, from_uint8


def read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 3, 32, 32)`` float32 pixels in 0..255 and labels 0..9 (the file stores digit 0 as 10).

    ``X`` is uint8 in the official files. Other numeric types are read by their range:
    floats in [0, 1] are scaled by 255 (a copy saved from a normalising pipeline), values
    in [0, 255] are kept; anything else (negative, above 255, NaN) is refused."""
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
    y = check_labels(path, y, 11, x.shape[3])  # 1..10 in the file; 0 is accepted too
    y = np.where(y == 10, 0, y)
    return np.transpose(_pixels(path, x), (3, 2, 0, 1)), y


def _pixels(path: Path, x: np.ndarray) -> np.ndarray:
    """``x`` as float32 in [0, 255] (see :func:`read_mat`)."""
    if x.dtype == np.uint8:
        return x.astype(np.float32)
    if x.dtype == bool or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"{path}: expected X as uint8 pixels, found {x.dtype}")
    floating = np.issubdtype(x.dtype, np.floating)
    x = x.astype(np.float64)
    if x.size and not np.isfinite(x).all():
        raise DataError(f"{path}: X holds NaN or infinite pixels")
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if lo < 0 or hi > 255:
        raise DataError(f"{path}: expected X pixels in 0..255 (or 0..1 as floats), found values from {lo} to {hi}")
    if floating and hi <= 1.0:
        x = x * 255.0
    return x.astype(np.float32)


def load_svhn(data_root: str | None) -> ImageDataset:
    if not data_root:
        raise DataError("svhn: pass --data-root DIR holding train_32x32.mat and test_32x32.mat")
    root = Path(data_root)
    if (root / "svhn").is_dir() and not (root / "train_32x32.mat").exists():
        root = root / "svhn"
    train_x, train_y = read_mat(root / "train_32x32.mat")
    test_x, test_y = read_mat(root / "test_32x32.mat")
    return from_uint8("svhn", train_x, train_y, test_x, test_y, num_classes=10)
