"""Datasets for the trainer, read from local files only (never downloaded).

``load_dataset(name, data_root)`` returns an :class:`ImageDataset`; the splits of
SPEC section 8 live in :mod:`fastmix.harness.data.splits`.
"""
from .base import DataError, ImageDataset
from .registry import DATASETS, load_dataset
from .splits import ForgetSplit, class_split, data_split, make_split, parse_classes

__all__ = [
    "DATASETS",
    "DataError",
    "ForgetSplit",
    "ImageDataset",
    "class_split",
    "data_split",
    "load_dataset",
    "make_split",
    "parse_classes",
]
