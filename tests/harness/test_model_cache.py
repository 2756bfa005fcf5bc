"""The cache of original and retrained models: its key covers what determines a model
(data content, split, seed, recipe, model, fastmix version), and a cached file whose
stored metadata differ from the run's is refused, naming the field."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from harness.test_data_loaders import idx_bytes, write_idx_set

from fastmix.harness.data import load_dataset
from fastmix.harness.experiment import Experiment, model_meta, prepare_data, train_original_and_retrained
from fastmix.harness.models import build_model
from fastmix.harness.training import Recipe, cache_key, check_cached, fingerprint, train_or_load

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_mnist(root, pixel_offset=0):
    write_idx_set(root, gz=False)
    if pixel_offset:  # other images, same names, shapes and labels
        p = root / "train-images-idx3-ubyte"
        raw = np.frombuffer(p.read_bytes()[16:], np.uint8).reshape(12, 28, 28)
        p.write_bytes(idx_bytes((raw.astype(int) + pixel_offset) % 256))


def run(exp: Experiment, log):
    ds, split = prepare_data(exp)
    return train_original_and_retrained(exp, ds, split, log=log)


def test_other_data_of_the_same_name_and_size_is_never_reused(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    tiny_mnist(tmp_path / "a")
    tiny_mnist(tmp_path / "b", pixel_offset=7)
    models = tmp_path / "models"
    lines = []
    first = Experiment(dataset="mnist", data_root=str(tmp_path / "a"), train_epochs=1, models_dir=str(models),
                       quiet=True)
    run(first, lines.append)
    made = sorted(models.glob("*.pt"))
    assert len(made) == 2
    lines.clear()
    run(Experiment(**{**first.__dict__, "data_root": str(tmp_path / "b")}), lines.append)
    assert not any("reusing" in line for line in lines)  # trained anew, under other names
    assert len(sorted(models.glob("*.pt"))) == 4
    # The first data's original copied under the name the second run wants: refused, naming the field.
    ds_b, split_b = prepare_data(Experiment(**{**first.__dict__, "data_root": str(tmp_path / "b")}))
    meta_b, _ = model_meta(first, ds_b, split_b, "mnist-cnn", Recipe(1, 32, 1e-4, 1e-4))
    wanted = models / f"mnist-original-{cache_key(**meta_b)}.pt"
    assert wanted.exists()
    shutil.copy(made[0] if "original" in made[0].name else made[1], wanted)
    with pytest.raises(ValueError, match=r"data="):
        run(Experiment(**{**first.__dict__, "data_root": str(tmp_path / "b")}), lines.append)


def test_a_checkpoint_copied_under_another_seeds_name_is_refused(tmp_path):
    x, y = torch.randn(16, 1, 8, 8), torch.arange(16) % 10
    make = lambda: build_model("digits-cnn", 10, 1, seed=0)  # noqa: E731
    recipe = Recipe(1, 8, 1e-3, 0.0)
    meta = dict(dataset="digits", seed=0, data=fingerprint(x, y))
    path = tmp_path / "m.pt"
    train_or_load(path, make, x, y, recipe, seed=0, meta=meta, desc="t", quiet=True, log=lambda *a: None)
    _, _, reused = train_or_load(path, make, x, y, recipe, seed=0, meta=meta, desc="t", quiet=True,
                                 log=lambda *a: None)
    assert reused
    for field, value in (("seed", 1), ("data", fingerprint(x + 1, y)), ("dataset", "mnist")):
        with pytest.raises(ValueError, match=rf"m\.pt.*{field}="):
            check_cached(path, {**meta, field: value, "recipe": recipe.__dict__})
        with pytest.raises(ValueError, match=rf"m\.pt.*{field}="):
            train_or_load(path, make, x, y, recipe, seed=0, meta={**meta, field: value}, desc="t", quiet=True)
    with pytest.raises(ValueError, match=r"recipe="):
        train_or_load(path, make, x, y, Recipe(2, 8, 1e-3, 0.0), seed=0, meta=meta, desc="t", quiet=True)


def test_a_half_written_checkpoint_is_refused(tmp_path):
    path = tmp_path / "m.pt"
    make = lambda: build_model("digits-cnn", 10, 1, seed=0)  # noqa: E731
    x, y = torch.randn(8, 1, 8, 8), torch.arange(8)
    train_or_load(path, make, x, y, Recipe(1, 8), seed=0, meta={}, desc="t", quiet=True, log=lambda *a: None)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ValueError, match=r"m\.pt: not a fastmix checkpoint"):
        check_cached(path, {})


def test_cache_key_covers_what_determines_the_model(monkeypatch):
    ds = load_dataset("digits")
    exp = Experiment()
    _, split = prepare_data(exp)
    recipe = Recipe(20, 32, 1e-3, 1e-4)

    def keys(exp=exp, ds=ds, split=split, model="digits-cnn", recipe=recipe):
        return tuple(cache_key(**m) for m in model_meta(exp, ds, split, model, recipe))

    base = keys()
    changed = {
        "seed": keys(exp=Experiment(seed=1)),
        "model": keys(model="mnist-cnn"),
        "recipe": keys(recipe=Recipe(21, 32, 1e-3, 1e-4)),
        "data": keys(ds=ds.__class__(**{**ds.__dict__, "x_train": ds.x_train.flip(0)})),
    }
    for name, k in changed.items():
        assert k[0] != base[0] and k[1] != base[1], name
    other_split = prepare_data(Experiment(forget_class="1"))[1]
    k = keys(split=other_split)
    assert k[0] == base[0] and k[1] != base[1]  # the split determines the retrained model only
    monkeypatch.setattr("fastmix.__version__", "9.9.9")
    assert keys()[0] != base[0]
