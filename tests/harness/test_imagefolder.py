"""The image folder loader, on folders of PNG files the tests write."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastmix.harness.data import DataError, load_dataset
from fastmix.harness.data import imagefolder as folder_mod

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


def write_class(folder: Path, colour, count: int, size=(12, 10), offset: int = 0) -> None:
    """``count`` images of one solid colour, each a little darker (by 5 per image, after ``offset``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixel = tuple(max(0, c - offset - 5 * i) if c else 0 for c in colour)
        suffix = (".png", ".PNG", ".bmp")[i % 3]
        Image.new("RGB", size, pixel).save(folder / f"img{i:03d}{suffix}")


def write_folder(root: Path, classes: int, per_class: int, layout: str = "single") -> Path:
    for c in range(classes):
        if layout == "single":
            write_class(root / f"class_{c}", COLOURS[c % len(COLOURS)], per_class)
        else:
            write_class(root / "train" / f"class_{c}", COLOURS[c % len(COLOURS)], per_class)
            write_class(root / "val" / f"class_{c}", COLOURS[c % len(COLOURS)], 2, offset=50)
    return root


def test_train_val_layout_decodes_colours_and_labels(tmp_path):
    root = write_folder(tmp_path / "d", classes=3, per_class=4, layout="train-val")
    ds = load_dataset("imagefolder", str(root), image_size=6, normalize="none")
    assert ds.x_train.shape == (12, 3, 6, 6) and ds.x_test.shape == (6, 3, 6, 6)
    assert ds.num_classes == 3 and ds.y_train.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert ds.y_test.tolist() == [0, 0, 1, 1, 2, 2]
    # class 1 is green: the red and blue channels are zero, green is (255 - 5 i) / 255
    assert torch.all(ds.x_train[4:8, [0, 2]] == 0)
    assert torch.allclose(ds.x_train[4, 1], torch.ones(6, 6))
    assert torch.allclose(ds.x_train[5, 1], torch.full((6, 6), 250 / 255))
    assert torch.allclose(ds.x_test[1, 0], torch.full((6, 6), 200 / 255))  # red, val offset 50, second image


def test_normalisations(tmp_path):
    root = write_folder(tmp_path / "d", classes=2, per_class=3, layout="train-val")
    raw = load_dataset("imagefolder", str(root), image_size=4, normalize="none")
    imagenet = load_dataset("imagefolder", str(root), image_size=4, normalize="imagenet")
    mean = torch.tensor(folder_mod.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(folder_mod.IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(imagenet.x_train, (raw.x_train - mean) / std, atol=1e-6)
    own = load_dataset("imagefolder", str(root), image_size=4, normalize="dataset")
    assert torch.allclose(own.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    model = load_dataset("imagefolder", str(root), model_input={"size": (5, 7), "mean": (0.5,) * 3,
                                                                 "std": (0.5,) * 3})
    assert model.x_train.shape[2:] == (5, 7) and torch.allclose(model.x_train[0, 0], torch.ones(5, 7))
    flags_first = load_dataset("imagefolder", str(root), image_size=3, normalize="none",
                               model_input={"size": (5, 7), "mean": (0.5,) * 3, "std": (0.5,) * 3})
    assert flags_first.x_train.shape[2:] == (3, 3) and flags_first.x_train.min() >= 0


def test_single_folder_split_is_seeded_and_stratified(tmp_path):
    root = write_folder(tmp_path / "d", classes=3, per_class=10)
    a = load_dataset("imagefolder", str(root), image_size=4, normalize="none", test_fraction=0.3, seed=1)
    assert a.x_train.shape[0] == 21 and a.x_test.shape[0] == 9
    assert torch.bincount(a.y_test).tolist() == [3, 3, 3]
    b = load_dataset("imagefolder", str(root), image_size=4, normalize="none", test_fraction=0.3, seed=1)
    c = load_dataset("imagefolder", str(root), image_size=4, normalize="none", test_fraction=0.3, seed=2)
    assert torch.equal(a.x_test, b.x_test)
    assert not torch.equal(a.x_test, c.x_test)
    default = load_dataset("imagefolder", str(root), image_size=4, normalize="none")
    assert default.x_test.shape[0] == round(30 * folder_mod.DEFAULT_TEST_FRACTION)


def test_paper_protocol_scales_its_split_and_says_so(tmp_path):
    root = write_folder(tmp_path / "d", classes=5, per_class=10)
    said = []
    ds = load_dataset("imagefolder", str(root), image_size=4, normalize="none", protocol="paper-imagenet",
                      log=said.append)
    assert (ds.x_train.shape[0], ds.x_test.shape[0]) == (40, 10)
    assert torch.bincount(ds.y_test).tolist() == [2] * 5
    assert any("fewer than the paper's 50,000: split 40 / 10" in s for s in said)
    with pytest.raises(DataError, match="splits a single folder"):
        load_dataset("imagefolder", str(write_folder(tmp_path / "tv", 2, 3, "train-val")), image_size=4,
                     protocol="paper-imagenet")


def test_paper_protocol_draws_its_split_from_a_larger_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(folder_mod, "PAPER_IMAGENET_SPLIT", (6, 3))  # stands for 40,000 / 10,000
    root = write_folder(tmp_path / "d", classes=3, per_class=5)
    ds = load_dataset("imagefolder", str(root), image_size=4, normalize="none", protocol="paper-imagenet", seed=3)
    assert (ds.x_train.shape[0], ds.x_test.shape[0]) == (6, 3)
    assert torch.bincount(ds.y_train).tolist() == [2, 2, 2] and torch.bincount(ds.y_test).tolist() == [1, 1, 1]


def test_worker_processes_decode_the_same_pixels(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "d", classes=2, per_class=9)
    monkeypatch.setattr(folder_mod, "CHUNK", 4)  # 18 files: 5 tasks
    pooled = load_dataset("imagefolder", str(root), image_size=5, normalize="none", workers=2)
    inline = load_dataset("imagefolder", str(root), image_size=5, normalize="none", workers=1)
    assert torch.equal(pooled.x_train, inline.x_train) and torch.equal(pooled.x_test, inline.x_test)


def test_clear_errors(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "d", classes=2, per_class=3, layout="train-val")
    with pytest.raises(DataError, match="--image-size"):
        load_dataset("imagefolder", str(root))
    with pytest.raises(DataError, match="--data-root"):
        load_dataset("imagefolder", None, image_size=4)
    with pytest.raises(DataError, match="expected a folder of images"):
        load_dataset("imagefolder", str(tmp_path / "absent"), image_size=4)
    (root / "val" / "class_2").mkdir()
    write_class(root / "val" / "class_2", COLOURS[2], 1)
    with pytest.raises(DataError, match=r"classes of train/ and val/ differ: only in train/: none; only in val/: "
                                        r"\['class_2'\]"):
        load_dataset("imagefolder", str(root), image_size=4)
    (root / "train" / "class_2").mkdir()
    with pytest.raises(DataError, match=r"class_2: an empty class folder"):
        load_dataset("imagefolder", str(root), image_size=4)
    write_class(root / "train" / "class_2", COLOURS[2], 3)
    (root / "train" / "class_1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"broken\.png: cannot read the image"):
        load_dataset("imagefolder", str(root), image_size=4)
    (root / "train" / "class_1" / "broken.png").unlink()
    assert load_dataset("imagefolder", str(root), image_size=4).num_classes == 3
    monkeypatch.setattr("fastmix.mixunlearn.engine.available_bytes", lambda device: 1000)
    with pytest.raises(DataError, match=r"take .* GiB decoded \(float32\), over the limit .*half the available"):
        load_dataset("imagefolder", str(root), image_size=4)
    no_val = tmp_path / "no_val"
    write_class(no_val / "train" / "a", COLOURS[0], 2)
    with pytest.raises(DataError, match="neither val/ nor test/"):
        load_dataset("imagefolder", str(no_val), image_size=4)
    with pytest.raises(DataError, match="cannot split 9 images"):
        load_dataset("imagefolder", str(root / "train"), image_size=4, test_fraction=0.1)


def test_other_data_sets_take_no_folder_options():
    with pytest.raises(ValueError, match="image_size: only for the dataset imagefolder"):
        load_dataset("digits", None, image_size=8)


def test_decoded_images_are_held_once(tmp_path, monkeypatch):
    """The loader decodes into the tensors it returns: nothing else of their size is allocated."""
    root = write_folder(tmp_path / "d", classes=2, per_class=4, layout="train-val")
    made = []
    real_empty = torch.empty

    def counting_empty(*size, **kw):
        t = real_empty(*size, **kw)
        made.append(t)
        return t

    monkeypatch.setattr(folder_mod.torch, "empty", counting_empty)
    ds = load_dataset("imagefolder", str(root), image_size=4, normalize="dataset")
    image_sized = [t for t in made if t.dim() == 4]
    assert len(image_sized) == 2
    assert image_sized[0].data_ptr() == ds.x_train.data_ptr() and image_sized[1].data_ptr() == ds.x_test.data_ptr()
    assert np.isfinite(ds.x_train.numpy()).all()
