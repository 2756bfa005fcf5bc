"""Issue 13: `--protocol laf`, LAF's set-up for CIFAR-10 and SVHN (the paper's), at tiny
scale: a few generated CIFAR-10 images, batches resized to 40 instead of 224."""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from fastmix.cli import main
from fastmix.harness import experiment
from fastmix.harness.experiment import Experiment, check_protocol, model_meta, validate_experiment
from fastmix.harness.models import LafResNet18, build_model
from fastmix.harness.training import Recipe, cache_key, train_classifier
from fastmix.mixunlearn.augment import random_resized_crop_flip

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PER_BATCH = 20  # images per CIFAR batch file: 100 training images, 20 test images
SIZE = "40"


def write_cifar(root: Path) -> Path:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [i % 10 for i in range(PER_BATCH)]
        batch = {b"data": rng.integers(0, 256, (PER_BATCH, 3072)).astype(np.uint8), b"labels": labels}
        with open(d / name, "wb") as f:
            pickle.dump(batch, f)
    return root


@pytest.fixture(scope="module")
def laf_run(tmp_path_factory, one_torch_thread):
    """One `fastmix unlearn --protocol laf` run; every augmented batch recorded."""
    tmp = tmp_path_factory.mktemp("laf")
    root, out = write_cifar(tmp / "data"), tmp / "out"
    augmented = []

    def recording(x, generator, size):
        augmented.append(tuple(x.shape))
        return random_resized_crop_flip(x, generator, size)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(experiment, "random_resized_crop_flip", recording)
        assert main(["unlearn", "--dataset", "cifar10", "--data-root", str(root), "--protocol", "laf",
                     "--image-size", SIZE, "--train-epochs", "1", "--unlearn-epochs", "1", "--ft-epochs", "1",
                     "--out", str(out), "--quiet", "--no-png", "--threads", "1"]) == 0
    return out, augmented


def test_laf_run_trains_lafs_resnet_with_its_augmentation(laf_run):
    out, augmented = laf_run
    res = json.loads((out / "results.json").read_text())
    settings = res["settings"]
    assert settings["protocol"] == "laf" and settings["image_size"] == int(SIZE)
    assert settings["options"]["lr"] == 1e-5 and settings["options"]["epochs"] == 1  # --unlearn-epochs
    assert {"original", "retrain", "mixunlearn", "finetune"} <= set(res)
    # the original (100 images) and the retrained model (D_r: the 90 not of class 0), batches of 32:
    # augmented; fine-tuning, MixUnlearn and the evaluation are not
    n_r = settings["n_retain"]
    assert n_r == 90 and len(augmented) == 4 + 3
    assert all(shape[1:] == (3, 32, 32) for shape in augmented)
    models = sorted((out / "models").glob("*.pt"))
    assert len(models) == 2
    for path in models:
        blob = torch.load(path, weights_only=True)
        meta, state = blob["meta"], blob["state_dict"]
        assert meta["protocol"] == "laf" and meta["image_size"] == int(SIZE) and meta["model"] == "resnet18-laf"
        assert "random-resized-crop" in meta["augment"]
        assert state["conv1.weight"].shape == (64, 3, 7, 7)  # the ImageNet stem
        assert state["fc.0.weight"].shape == (256, 512) and state["fc.2.weight"].shape == (10, 256)
        assert "layer1.0.conv1.weight" in state and "layer2.0.downsample.0.weight" in state  # torchvision's names


def test_laf_defaults_are_spec_7s():
    exp = Experiment(dataset="svhn", protocol="laf", methods=("mixunlearn",))
    check_protocol(exp)  # SVHN is LAF's too
    options = validate_experiment(exp)
    assert options["lr"] == 1e-5 and options["epochs"] == 40


def test_the_protocol_is_part_of_the_cached_models_key():
    """Models of the LAF protocol and of the fast default (or another input size) never share a file."""
    from fastmix.harness.data import ImageDataset, make_split

    x, y = torch.zeros(20, 3, 32, 32), torch.arange(20) % 10
    ds = ImageDataset("cifar10", x, y, x, y, 10)
    split = make_split(y, 10, "class", forget_class="0")
    recipe = Recipe()
    keys = set()
    for exp, model in ((Experiment(dataset="cifar10"), "resnet18"),
                       (Experiment(dataset="cifar10", protocol="laf"), "resnet18-laf"),
                       (Experiment(dataset="cifar10", protocol="laf", image_size=64), "resnet18-laf")):
        original, retrain = model_meta(exp, ds, split, model, recipe)
        keys |= {cache_key(**original), cache_key(**retrain)}
        assert original.get("protocol") == exp.protocol
    assert len(keys) == 6


def test_lafs_resnet_resizes_its_input_and_feeds_the_mixblock_from_layer3():
    model = build_model("resnet18-laf", 10, 3, seed=0).eval()
    assert isinstance(model, LafResNet18) and model.feature_layer == "layer3" and model.input_size == 224
    model.input_size = 64
    x = torch.randn(2, 3, 32, 32)
    seen = []
    model.conv1.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape)))
    feats = []
    model.layer3.register_forward_hook(lambda m, inp, out: feats.append(tuple(out.shape)))
    with torch.no_grad():
        out = model(x)
        same = model(F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False))
    assert out.shape == (2, 10) and seen == [(2, 3, 64, 64)] * 2 and feats[0] == (2, 256, 4, 4)
    assert torch.equal(out, same)


def test_the_augmentation_is_torchvisions_crop_and_flip_and_seeded():
    x = torch.randn(6, 3, 32, 32)
    # the whole image (scale 1, ratio 1): a plain resize, or its mirror image
    whole = random_resized_crop_flip(x, torch.Generator().manual_seed(0), 48, scale=(1, 1), ratio=(1, 1))
    resized = F.interpolate(x, size=(48, 48), mode="bilinear", align_corners=False)
    flipped = [not torch.allclose(w, r, atol=1e-4) for w, r in zip(whole, resized)]
    for w, r, f in zip(whole, resized, flipped):
        torch.testing.assert_close(w, r.flip(-1) if f else r, atol=1e-4, rtol=0)
    assert 0 < sum(flipped) < 6
    # a quarter of the area at aspect 1: a 16x16 box at an integer position
    crop = random_resized_crop_flip(x, torch.Generator().manual_seed(1), 16, scale=(0.25, 0.25), ratio=(1, 1))
    for c, img in zip(crop, x):
        boxes = [img[:, i:i + 16, j:j + 16] for i in range(17) for j in range(17)]
        assert any(torch.allclose(c, b, atol=1e-4) or torch.allclose(c, b.flip(-1), atol=1e-4) for b in boxes)
    a = random_resized_crop_flip(x, torch.Generator().manual_seed(5), 40)
    b = random_resized_crop_flip(x, torch.Generator().manual_seed(5), 40)
    c = random_resized_crop_flip(x, torch.Generator().manual_seed(6), 40)
    assert a.shape == (6, 3, 40, 40) and torch.equal(a, b) and not torch.equal(a, c)


def test_training_with_the_augmentation_is_reproducible_and_changes_only_the_inputs():
    x, y = torch.randn(24, 3, 32, 32), torch.arange(24) % 10
    recipe = Recipe(epochs=1, batch_size=12, lr=1e-3, weight_decay=0.0)
    seen = []

    def augment(xb, gen):
        seen.append(xb.shape[0])
        return random_resized_crop_flip(xb, gen, 32)

    def trained(aug):
        model = build_model("resnet18-laf", 10, 3, seed=0)
        model.input_size = 32
        return train_classifier(model, x, y, recipe, seed=0, augment=aug).state_dict()

    one, two, plain = trained(augment), trained(augment), trained(None)
    assert seen == [12, 12, 12, 12]
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert any(not torch.equal(one[k], plain[k]) for k in one if one[k].is_floating_point())


def run(argv, capsys) -> tuple[int, str]:
    try:
        rc = main(["unlearn", *argv, "--quiet", "--no-png"])
    except SystemExit as e:
        rc = e.code
    cap = capsys.readouterr()
    return rc, cap.out + cap.err


@pytest.mark.parametrize("argv, names", [
    (["--protocol", "laf"], "--dataset cifar10 or svhn"),  # digits
    (["--dataset", "cifar10", "--protocol", "laf", "--model", "resnet18"], "--model"),
    (["--dataset", "cifar10", "--image-size", "64"], "--image-size"),
    (["--dataset", "cifar10", "--protocol", "laf", "--image-size", "0"], "--image-size"),
])
def test_bad_laf_arguments_fail_before_any_work(argv, names, tmp_path, capsys):
    root = write_cifar(tmp_path / "data")
    argv = [*argv, "--out", str(tmp_path / "out")] + (["--data-root", str(root)] if "--dataset" in argv else [])
    rc, message = run(argv, capsys)
    assert rc == 2, message
    assert names in message and "Traceback" not in message, message
    assert not list(tmp_path.rglob("*.pt"))
