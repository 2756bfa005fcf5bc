"""Data sets by name."""
from __future__ import annotations

from .base import ImageDataset
from .cifar import load_cifar10
from .digits import load_digits_dataset
from .idx import load_idx_dataset
from .imagefolder import load_image_folder
from .svhn import load_svhn

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "svhn", "imagefolder")


def load_dataset(name: str, data_root: str | None = None, **options) -> ImageDataset:
    """Load ``name`` (one of :data:`DATASETS`) from local files under ``data_root``;
    ``options`` go to the image folder's loader (:func:`load_image_folder`), the only one that takes any."""
    if name == "imagefolder":
        return load_image_folder(data_root, **options)
    if options:
        raise ValueError(f"{', '.join(sorted(options))}: only for the dataset imagefolder, not {name}")
    if name == "digits":
        return load_digits_dataset()
    if name in ("mnist", "fashion-mnist"):
        return load_idx_dataset(name, data_root)
    if name == "cifar10":
        return load_cifar10(data_root)
    if name == "svhn":
        return load_svhn(data_root)
    raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {name!r}")
