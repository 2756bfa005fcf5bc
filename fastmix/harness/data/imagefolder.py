"""A folder of images, one sub-folder per class (the layout of torchvision's ImageFolder).

Two layouts: ``DIR/train/<class>/*`` with ``DIR/val/<class>/*`` (or ``DIR/test/``),
the evaluation set; or ``DIR/<class>/*`` alone, split into training and evaluation
images by a seeded, stratified ``test_fraction`` (default :data:`DEFAULT_TEST_FRACTION`).
Classes are the sub-folders' names in sorted order; files ending in one of
:data:`IMAGE_SUFFIXES` (any case, in nested folders too) are images.

Every image is decoded with Pillow as RGB, scaled (shorter side) and centre-cropped to
``image_size`` (the usual evaluation transform, without timm's crop margin), in worker
processes, straight into the one float32 tensor the data set keeps: decoded images are
never held twice. They must fit in :data:`MEMORY_SHARE` of the available memory; the
loader refuses larger folders before decoding anything. Normalisation: ``imagenet``
(ImageNet's mean and std), ``dataset`` (the training images' per-channel mean and std,
as the built-in loaders do), ``none`` (pixels in [0, 1]), or a model's own mean and std.

The protocol ``paper-imagenet`` (the paper's ViT experiment on ImageNet-1K's validation
set) takes a single class folder and splits it 40,000 / 10,000 with the seed; a folder
of fewer than 50,000 images is split in the same 4:1 proportion, a larger one gives a
seeded stratified 40,000 / 10,000 of its images.
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np
import torch

from .base import DataError, ImageDataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DEFAULT_TEST_FRACTION = 0.2
NORMALIZATIONS = ("imagenet", "dataset", "none")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FOLDER_PROTOCOLS = ("paper-imagenet",)  # the protocols of an image folder (experiment.PROTOCOLS has all)
PAPER_IMAGENET_SPLIT = (40_000, 10_000)  # training and evaluation images of the paper's ImageNet split
# Decoded images may take this share of the available memory: the harness hands the methods
# D_f and D_r as one more copy (fastmix.harness.experiment.method_context).
MEMORY_SHARE = 0.5
CHUNK = 64  # images per task of a decoding worker
MAX_WORKERS = 8


def class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def images_of(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{folder}: an empty class folder (expected images ending in {', '.join(IMAGE_SUFFIXES)})")
    return files


def scan(root: Path) -> tuple[list[str], list[Path], list[int]]:
    """``(classes, files, labels)`` of a folder of class folders."""
    folders = class_folders(root)
    if not folders:
        raise DataError(f"{root}: expected one sub-folder of images per class, found none")
    files, labels = [], []
    for label, folder in enumerate(folders):
        found = images_of(folder)
        files += found
        labels += [label] * len(found)
    return [f.name for f in folders], files, labels


def find_layout(root: Path) -> tuple[Path, Path | None]:
    """``(train_folder, eval_folder)``; ``eval_folder`` is None for a single class folder."""
    if not root.is_dir():
        raise DataError(f"{root}: expected a folder of images (train/<class>/... and val/<class>/..., or <class>/...)")
    if (root / "train").is_dir():
        evaluation = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
        if evaluation is None:
            raise DataError(f"{root}: has train/ but neither val/ nor test/ (the evaluation images, one folder per "
                            "class); or pass a single folder of class folders to split with --test-fraction")
        return root / "train", evaluation
    return root, None


def split_indices(labels: np.ndarray, test_size: int, train_size: int | None, seed: int):
    """A seeded stratified split of ``range(len(labels))``: sorted ``(train, test)`` indices."""
    from sklearn.model_selection import train_test_split

    try:
        train, test = train_test_split(np.arange(labels.shape[0]), test_size=test_size, train_size=train_size,
                                       random_state=seed, stratify=labels)
    except ValueError as e:  # too few images of a class, or fewer test images than classes
        raise DataError(f"cannot split {labels.shape[0]} images of {int(labels.max()) + 1} classes stratified into "
                        f"{test_size} evaluation images: {e}") from None
    return np.sort(train), np.sort(test)


def resolve_input(image_size: int | None, normalize: str | None, model_input: dict):
    """``((H, W), (mean, std) or None or "dataset")``: flags first, then the model's config."""
    if image_size is not None:
        size = (image_size, image_size)
    elif "size" in model_input:
        size = tuple(model_input["size"])
    else:
        raise DataError("imagefolder: pass --image-size N (the side, in pixels, the images are scaled and cropped "
                        "to); only a timm model says its own")
    if normalize is None:
        if "mean" in model_input:
            return size, (tuple(model_input["mean"]), tuple(model_input["std"]))
        normalize = "dataset"
    if normalize not in NORMALIZATIONS:
        raise DataError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    stats = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "none": None, "dataset": "dataset"}[normalize]
    return size, stats


def decode(paths: list[str], size: tuple[int, int]) -> np.ndarray:
    """``(n, 3, H, W)`` uint8: each image as RGB, its shorter side scaled and centre-cropped to ``size``."""
    from PIL import Image, ImageOps

    out = np.empty((len(paths), 3, *size), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as img:
                fitted = ImageOps.fit(img.convert("RGB"), (size[1], size[0]), method=Image.BICUBIC)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise DataError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from None
        out[i] = np.asarray(fitted).transpose(2, 0, 1)
    return out


def pool_context():
    """Fork where it is safe and cheap (Linux): the workers run Pillow and numpy only, and a
    forked worker skips importing torch again."""
    if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return None


def decode_into(out: torch.Tensor, paths: list[Path], workers: int) -> None:
    """Decode ``paths`` into the float32 tensor ``out`` (pixels in [0, 1]), chunk by chunk."""
    size = tuple(out.shape[2:])
    chunks = [(i, [str(p) for p in paths[i : i + CHUNK]]) for i in range(0, len(paths), CHUNK)]

    def store(start: int, pixels: np.ndarray) -> None:
        out[start : start + pixels.shape[0]].copy_(torch.from_numpy(pixels)).div_(255.0)

    if workers <= 1 or len(chunks) <= 1:
        for start, names in chunks:
            store(start, decode(names, size))
        return
    with concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(chunks)),
                                                mp_context=pool_context()) as pool:
        futures = {pool.submit(decode, names, size): start for start, names in chunks}
        try:
            for future in concurrent.futures.as_completed(futures):
                store(futures[future], future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def check_fits(n_images: int, size: tuple[int, int], root: Path) -> None:
    from fastmix.mixunlearn.engine import available_bytes

    need = n_images * 3 * size[0] * size[1] * 4
    limit = MEMORY_SHARE * available_bytes(torch.device("cpu"))
    if need > limit:
        raise DataError(f"{root}: {n_images} images of 3x{size[0]}x{size[1]} take {need / 2**30:.3g} GiB decoded "
                        f"(float32), over the limit of {limit / 2**30:.3g} GiB (half the available memory); pass a "
                        "smaller --image-size or a folder of fewer images")


def normalize_(x_train: torch.Tensor, x_test: torch.Tensor, stats) -> None:
    """Normalise both sets in place with ``(mean, std)``, the training set's own ("dataset"), or not (None)."""
    if stats is None:
        return
    if stats == "dataset":
        mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
        std = x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    else:
        mean = torch.tensor(stats[0], dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(stats[1], dtype=torch.float32).view(1, -1, 1, 1)
    for x in (x_train, x_test):
        x.sub_(mean).div_(std)


def load_image_folder(
    data_root: str | None,
    *,
    image_size: int | None = None,
    normalize: str | None = None,
    model_input: dict | None = None,
    test_fraction: float | None = None,
    protocol: str | None = None,
    seed: int = 0,
    workers: int | None = None,
    log=None,
) -> ImageDataset:
    """The :class:`ImageDataset` of an image folder (see the module's docstring).

    ``image_size`` and ``normalize`` (one of :data:`NORMALIZATIONS`) come from the
    flags; where one is None, the model's ``model_input`` (``size``, ``mean``, ``std``,
    from :func:`fastmix.harness.models.input_config`) gives it, else normalisation is
    ``dataset`` and the size must be given. ``seed`` draws the split of a single folder.
    ``workers``: decoding processes (default: the CPU count, at most :data:`MAX_WORKERS`).
    """
    log = log or (lambda *a: None)
    if not data_root:
        raise DataError("imagefolder: pass --data-root DIR (train/<class>/... and val/<class>/..., or <class>/...)")
    if protocol is not None and protocol not in FOLDER_PROTOCOLS:
        raise DataError(f"protocol must be one of {FOLDER_PROTOCOLS}, got {protocol!r}")
    if test_fraction is not None and not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    root = Path(data_root)
    size, stats = resolve_input(image_size, normalize, model_input or {})
    train_dir, eval_dir = find_layout(root)
    classes, files, labels = scan(train_dir)
    labels = np.asarray(labels, dtype=np.int64)
    if eval_dir is not None:
        if protocol is not None or test_fraction is not None:
            what = f"--protocol {protocol}" if protocol is not None else "--test-fraction"
            raise DataError(f"{root}: has train/ and {eval_dir.name}/ already; {what} splits a single folder of class "
                            f"folders (pass one of them, e.g. {eval_dir})")
        eval_classes, eval_files, eval_labels = scan(eval_dir)
        if eval_classes != classes:
            only_train = sorted(set(classes) - set(eval_classes))
            only_eval = sorted(set(eval_classes) - set(classes))
            raise DataError(f"{root}: the classes of train/ and {eval_dir.name}/ differ: only in train/: "
                            f"{only_train or 'none'}; only in {eval_dir.name}/: {only_eval or 'none'}")
        train_files, test_files = files, eval_files
        y_train, y_test = labels, np.asarray(eval_labels, dtype=np.int64)
    else:
        n = labels.shape[0]
        if protocol == "paper-imagenet":
            n_train, n_test = PAPER_IMAGENET_SPLIT
            if n < n_train + n_test:
                n_test = round(n * n_test / (n_train + n_test))
                n_train = n - n_test
                log(f"paper-imagenet: {root} holds {n} images, fewer than the paper's 50,000: split "
                    f"{n_train} / {n_test} in its 4:1 proportion")
        else:
            n_test = round(n * (test_fraction if test_fraction is not None else DEFAULT_TEST_FRACTION))
            n_train = n - n_test
        train_idx, test_idx = split_indices(labels, n_test, n_train, seed)
        train_files, test_files = [files[i] for i in train_idx], [files[i] for i in test_idx]
        y_train, y_test = labels[train_idx], labels[test_idx]
    check_fits(len(train_files) + len(test_files), size, root)
    try:
        import PIL.Image  # noqa: F401  (loaded before the workers fork, so that they import nothing)
    except ImportError:
        raise DataError("imagefolder: decoding images needs Pillow: pip install pillow") from None
    workers = workers if workers is not None else min(os.cpu_count() or 1, MAX_WORKERS)
    x_train = torch.empty(len(train_files), 3, *size)
    x_test = torch.empty(len(test_files), 3, *size)
    decode_into(x_train, train_files, workers)
    decode_into(x_test, test_files, workers)
    normalize_(x_train, x_test, stats)
    log(f"imagefolder: {len(classes)} classes, {len(train_files)} training and {len(test_files)} evaluation "
        f"images of 3x{size[0]}x{size[1]} from {root}")
    return ImageDataset(name="imagefolder", x_train=x_train, y_train=torch.from_numpy(y_train),
                        x_test=x_test, y_test=torch.from_numpy(y_test), num_classes=len(classes))
