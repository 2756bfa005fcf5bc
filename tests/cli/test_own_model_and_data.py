"""`fastmix unlearn` with a model by name (fake timm / torchvision packages) on a folder of
PNG files the tests write: a tiny ViT forgets a digit through its patch tokens, a tiny
torchvision-style ResNet runs the paper's ImageNet protocol from a checkpoint."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_model_packages import install_fake_timm, install_fake_torchvision
from PIL import Image

from fastmix.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory) -> Path:
    """Every other image of scikit-learn's digits (899), upsampled to 16x16, as one folder of PNG files per class."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits16")
    bunch = load_digits()
    pixels = np.kron(bunch.images * (255.0 / 16.0), np.ones((2, 2))).round().astype(np.uint8)
    for i, (image, label) in list(enumerate(zip(pixels, bunch.target)))[::2]:
        folder = root / f"digit_{label}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(image, mode="L").save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory) -> Path:
    """10 classes of 10 noisy 20x24 images, each class its own colour."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for c in range(10):
        base = np.array([(c * 25) % 256, (c * 70) % 256, 255 - c * 20], dtype=np.float64)
        (root / f"c{c}").mkdir()
        for i in range(10):
            image = np.clip(base + rng.normal(0, 20, size=(20, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / f"c{c}" / f"{i}.png")
    return root


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_tiny_vit_forgets_a_digit_through_its_patch_tokens(digits_folder, tmp_path, monkeypatch):
    install_fake_timm(monkeypatch)
    rc = main(["unlearn", "--dataset", "imagefolder", "--data-root", str(digits_folder), "--model", "timm:tiny_vit",
               "--image-size", "16", "--normalize", "dataset", "--test-fraction", "0.25",
               "--train-epochs", "12", "--train-lr", "1e-3", "--method", "mixunlearn",
               "--unlearn-epochs", "8", "--lr", "3e-4", "--out", str(tmp_path), "--quiet", "--no-png"])
    assert rc == 0
    res = results(tmp_path)
    orig, ret, mix = res["original"], res["retrain"], res["mixunlearn"]
    assert orig["Train_f"] > 90 and orig["Test_f"] > 85  # there was something to forget
    assert ret["Train_f"] == 0 and ret["Test_f"] == 0
    assert mix["Train_f"] < orig["Train_f"] / 3 and mix["Test_f"] < orig["Test_f"] / 3  # forgotten
    assert mix["Test_r"] > ret["Test_r"] - 15  # the rest kept
    assert mix["avg_gap"] < orig["avg_gap"]
    settings = res["settings"]
    assert settings["model"] == "timm:tiny_vit" and settings["image_size"] == 16
    assert settings["n_eval"] == round(899 * 0.25)


def test_paper_protocol_with_a_torchvision_model_from_a_checkpoint(colour_folder, tmp_path, monkeypatch):
    from fastmix.harness.models import build_model

    calls = install_fake_torchvision(monkeypatch)
    pretrained = build_model("torchvision:resnet18", 10, 3, seed=123)
    torch.save({"state_dict": pretrained.state_dict()}, tmp_path / "pretrained.pt")
    out = tmp_path / "out"
    args = ["unlearn", "--dataset", "imagefolder", "--data-root", str(colour_folder), "--model", "torchvision:resnet18",
            "--checkpoint", str(tmp_path / "pretrained.pt"), "--image-size", "16", "--normalize", "imagenet",
            "--protocol", "paper-imagenet", "--forget-fraction", "0.4", "--train-epochs", "1", "--train-lr", "1e-12",
            "--unlearn-epochs", "1", "--ft-epochs", "1", "--out", str(out), "--quiet", "--no-png"]
    assert main(args) == 0
    res = results(out)
    settings = res["settings"]
    assert settings["protocol"] == "paper-imagenet" and settings["setting"] == "data"
    assert settings["n_eval"] == 20 and settings["n_forget"] == 16  # 4:1 of 100; 40% of classes 5-9's 40
    assert "Test" in res["mixunlearn"] and "Test_f" not in res["mixunlearn"]
    assert all(c["weights"] is None for c in calls)
    # both models start from the checkpoint: at a learning rate of 1e-12 their convolutions stay put
    models = sorted((out / "models").glob("*.pt"))
    assert len(models) == 2
    for path in models:
        state = torch.load(path, weights_only=True)["state_dict"]
        assert torch.allclose(state["conv1.weight"], pretrained.conv1.weight, atol=1e-6)
    # another checkpoint is another model: the cache key knows the file's bytes
    other = build_model("torchvision:resnet18", 10, 3, seed=7)
    torch.save(other.state_dict(), tmp_path / "pretrained.pt")
    assert main(args) == 0
    assert len(list((out / "models").glob("*.pt"))) == 4


def test_errors_come_before_any_training(colour_folder, tmp_path, monkeypatch, capsys):
    install_fake_torchvision(monkeypatch)
    wrong = {k: v for k, v in __import__("fake_model_packages").TinyResNet(1000).state_dict().items()}
    torch.save(wrong, tmp_path / "imagenet_head.pt")
    out = tmp_path / "out"
    base = ["unlearn", "--dataset", "imagefolder", "--data-root", str(colour_folder), "--image-size", "16",
            "--out", str(out), "--quiet", "--no-png"]
    assert main([*base, "--model", "torchvision:resnet18", "--checkpoint", str(tmp_path / "imagenet_head.pt")]) == 2
    msg = capsys.readouterr().out
    assert "imagenet_head.pt does not fit" in msg and "fc.weight: checkpoint (1000, 32), model (10, 32)" in msg
    assert not list(out.glob("models/*.pt"))
    assert main([*base, "--model", "torchvision:resnet18", "--feature-layer", "layer9"]) == 2
    assert "feature layer (--feature-layer) 'layer9' is not a module" in capsys.readouterr().out
    monkeypatch.setitem(sys.modules, "timm", None)
    assert main([*base, "--model", "timm:vit_base_patch16_224"]) == 2
    assert 'pip install "fastmix[models]"' in capsys.readouterr().out
    assert main([*base, "--model", "torchvision:resnet18", "--protocol", "paper-imagenet"]) == 2
    assert "pass --checkpoint PATH" in capsys.readouterr().out
    assert main([*base, "--model", "torchvision:resnet18", "--protocol", "paper-imagenet", "--checkpoint", "x.pt",
                 "--forget-fraction", "0.5"]) == 2
    assert "--forget-fraction from 0.1 to 0.4" in capsys.readouterr().out
    assert main(["unlearn", "--image-size", "16", "--out", str(out), "--quiet"]) == 2
    assert "--image-size: only for --dataset imagefolder" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*base, "--model", "vit_base"])
    assert "timm:NAME or torchvision:NAME" in capsys.readouterr().err
    assert not list(out.glob("models/*.pt"))


def test_a_timm_model_sizes_and_normalises_the_images(colour_folder, monkeypatch):
    """Without --image-size and --normalize the timm model's pretrained_cfg decides (16x16, mean 0.5, std 0.25)."""
    from fastmix.harness.experiment import Experiment, prepare_data

    install_fake_timm(monkeypatch)
    exp = Experiment(dataset="imagefolder", data_root=str(colour_folder), model="timm:tiny_vit")
    ds, split = prepare_data(exp)
    assert ds.image_shape == (3, 16, 16)
    raw, _ = prepare_data(Experiment(dataset="imagefolder", data_root=str(colour_folder), image_size=16,
                                     normalize="none"))
    assert torch.allclose(ds.x_train, (raw.x_train - 0.5) / 0.25, atol=1e-5)
    assert split.setting == "class" and ds.x_test.shape[0] == 20
