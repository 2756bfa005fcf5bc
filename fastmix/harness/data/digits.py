"""scikit-learn's embedded 8x8 digits: the default data set, no files needed."""
from __future__ import annotations

import numpy as np

from .base import ImageDataset, from_uint8

TEST_FRACTION = 0.25
SPLIT_SEED = 0  # fixed, so every --seed sees the same train/test split


def load_digits_dataset() -> ImageDataset:
    """1797 images of 8x8 pixels in 0..16; a fixed stratified 75/25 train/test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.float32)[:, None]
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, bunch.target, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=bunch.target
    )
    return from_uint8("digits", x_tr, y_tr, x_te, y_te, num_classes=10, scale=16.0)
