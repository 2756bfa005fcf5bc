"""MNIST and Fashion-MNIST: IDX files, gzipped or plain (http://yann.lecun.com/exdb/mnist/)."""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from .base import DataError, ImageDataset, check_labels, from_uint8

# Debian's `dataset-fashion-mnist` package installs the IDX files here.
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

FILES = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array of ``ndim`` dimensions, gzipped (by magic bytes) or not."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read the IDX file ({e.strerror})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            raise DataError(f"{path}: a truncated or corrupt gzip file ({e})") from None
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: too short for an IDX header of {ndim} dimensions ({len(raw)} bytes)")
    if raw[0:2] != b"\x00\x00" or raw[2] != 0x08 or raw[3] != ndim:
        raise DataError(
            f"{path}: expected the IDX magic 00 00 08 {ndim:02x} (unsigned bytes, {ndim} dimensions), "
            f"found {raw[:4].hex(' ')}"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    start = 4 + 4 * ndim
    want = int(np.prod(dims))
    have = len(raw) - start
    if have != want:
        shape = "x".join(map(str, dims))
        kind = "truncated" if have < want else "longer than its header says"
        raise DataError(f"{path}: {kind}: the header says {shape} = {want} bytes of data, found {have}")
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(dims)


def find_file(root: Path, stems: tuple[str, ...]) -> Path:
    for stem in stems:
        for name in (stem, stem + ".gz"):
            if (root / name).is_file():
                return root / name
    raise DataError(f"{root}: expected the IDX file {stems[0]} (or {stems[0]}.gz), not found")


def search_roots(name: str, data_root: str | None) -> list[Path]:
    """``data_root`` and ``data_root/<name>``; for fashion-mnist without a ``data_root``,
    Debian's location. A folder the user names is used or refused, never swapped for
    another copy."""
    if data_root:
        return [Path(data_root), Path(data_root) / name]
    return [Path(DEBIAN_FASHION_MNIST)] if name == "fashion-mnist" else []


def load_idx_dataset(name: str, data_root: str | None) -> ImageDataset:
    roots = search_roots(name, data_root)
    root = next((r for r in roots if r.is_dir() and any((r / s).exists() or (r / (s + ".gz")).exists()
                                                          for s in FILES["train_images"])), None)
    if root is None:
        tried = ", ".join(str(r) for r in roots) or "nowhere (no --data-root given)"
        hint = " (or install Debian's dataset-fashion-mnist)" if name == "fashion-mnist" and not data_root else ""
        raise DataError(
            f"{name}: no IDX files (train-images-idx3-ubyte[.gz] ...) found; looked in {tried}. "
            f"Pass --data-root DIR{hint}"
        )
    arrays, paths = {}, {}
    for key, stems in FILES.items():
        paths[key] = find_file(root, stems)
        arrays[key] = read_idx(paths[key], 3 if key.endswith("images") else 1)
    train_hw, test_hw = arrays["train_images"].shape[1:], arrays["test_images"].shape[1:]
    if train_hw != test_hw:
        raise DataError(f"{paths['test_images']}: test images of {test_hw[0]}x{test_hw[1]} pixels, but the training "
                        f"images ({paths['train_images'].name}) are {train_hw[0]}x{train_hw[1]}")
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        arrays[f"{split}_labels"] = check_labels(paths[f"{split}_labels"], labels, 10, images.shape[0])
    return from_uint8(
        name,
        arrays["train_images"][:, None],
        arrays["train_labels"],
        arrays["test_images"][:, None],
        arrays["test_labels"],
        num_classes=10,
    )
