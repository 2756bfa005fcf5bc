"""Models by name (timm:NAME, torchvision:NAME) through fake packages, checkpoints, and
a transformer's patch tokens as the MixBlock's feature map."""
from __future__ import annotations

import pickle
import sys

import pytest
import torch
from fake_model_packages import TinyResNet, TinyViT, install_fake_timm, install_fake_torchvision
from torch import nn

from fastmix.harness.models import (
    build_model,
    check_model_name,
    default_feature_layer,
    input_config,
    load_weights,
    read_checkpoint,
)
from fastmix.mixunlearn.features import FrozenOriginal, as_feature_map, token_layout


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_timm_model_is_made_without_pretrained_weights_and_seeded(monkeypatch):
    calls = install_fake_timm(monkeypatch)
    model = build_model("timm:tiny_vit", num_classes=7, in_channels=3, seed=3)
    assert isinstance(model, TinyViT) and model.head.out_features == 7
    assert calls == [dict(name="tiny_vit", pretrained=False, num_classes=7)]
    assert model.feature_layer == "blocks.1"  # the block ending the first half of 4
    assert same_weights(model, build_model("timm:tiny_vit", 7, 3, seed=3))
    assert not same_weights(model, build_model("timm:tiny_vit", 7, 3, seed=4))
    assert input_config(model) == {"size": (16, 16), "mean": (0.5,) * 3, "std": (0.25,) * 3}


def test_torchvision_model_defaults_to_layer3(monkeypatch):
    calls = install_fake_torchvision(monkeypatch)
    model = build_model("torchvision:resnet18", num_classes=10, in_channels=3, seed=0)
    assert isinstance(model, TinyResNet) and model.fc.out_features == 10
    assert calls == [dict(name="resnet18", weights=None, num_classes=10)]
    assert model.feature_layer == "layer3"
    assert input_config(model) == {}


def test_torchvision_vit_defaults_to_a_middle_encoder_layer():
    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(*[nn.Identity() for _ in range(12)])

    model = nn.Module()
    model.encoder = Encoder()
    assert default_feature_layer(model) == "encoder.layers.5"
    assert default_feature_layer(nn.Sequential(nn.Linear(2, 2))) is None


def test_unknown_names_and_missing_packages_say_what_to_do(monkeypatch):
    with pytest.raises(ValueError, match="timm:NAME or torchvision:NAME"):
        check_model_name("vit_base")
    with pytest.raises(ValueError, match="timm:NAME"):
        check_model_name("timm:")
    monkeypatch.setitem(sys.modules, "timm", None)  # what an absent package looks like to import
    with pytest.raises(ValueError, match=r'needs the timm package.*pip install "fastmix\[models\]"'):
        build_model("timm:vit_base_patch16_224", 10, 3, 0)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(ValueError, match="needs the torchvision package"):
        build_model("torchvision:resnet50", 10, 3, 0)
    install_fake_timm(monkeypatch)
    with pytest.raises(ValueError, match="timm cannot make 'nope'"):
        build_model("timm:nope", 10, 3, 0)
    with pytest.raises(ValueError, match="3 channels"):
        build_model("timm:tiny_vit", 10, 1, 0)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "ddp"])
def test_torch_checkpoints_load(tmp_path, monkeypatch, wrap):
    install_fake_timm(monkeypatch)
    trained = build_model("timm:tiny_vit", 10, 3, seed=1)
    state = trained.state_dict()
    blob = {"plain": state, "state_dict": {"state_dict": state, "meta": {"epochs": 3}}, "model": {"model": state},
            "ddp": {f"module.{k}": v for k, v in state.items()}}[wrap]
    torch.save(blob, tmp_path / "w.pt")
    fresh = build_model("timm:tiny_vit", 10, 3, seed=2)
    assert not same_weights(fresh, trained)
    assert same_weights(load_weights(fresh, tmp_path / "w.pt"), trained)


def test_safetensors_checkpoint_or_what_to_install(tmp_path, monkeypatch):
    model = TinyResNet(10)
    path = tmp_path / "w.safetensors"
    try:
        from safetensors.torch import save_file
    except ImportError:
        path.write_bytes(b"\0" * 16)
    else:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        assert same_weights(load_weights(TinyResNet(10), path), model)
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ValueError, match="needs the safetensors package.*pip install"):
        read_checkpoint(path)


def test_mismatched_checkpoint_names_what_differs(tmp_path):
    state = TinyResNet(10).state_dict()
    state["fc.weight"] = torch.zeros(1000, 32)  # an ImageNet head
    del state["layer4.0.bn2.running_var"]
    state["extra.bias"] = torch.zeros(3)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(ValueError) as err:
        load_weights(TinyResNet(10), tmp_path / "w.pt")
    msg = str(err.value)
    assert "w.pt" in msg and "missing from it: layer4.0.bn2.running_var" in msg
    assert "not in the model: extra.bias" in msg
    assert "fc.weight: checkpoint (1000, 32), model (10, 32)" in msg


class Payload:
    """An arbitrary object: a weights_only load must refuse to build it."""


def test_checkpoints_are_read_with_weights_only(tmp_path):
    torch.save({"state_dict": Payload()}, tmp_path / "pickled.pt")
    with pytest.raises(ValueError, match="pickled.pt: not a torch checkpoint readable with weights_only=True"):
        read_checkpoint(tmp_path / "pickled.pt")
    (tmp_path / "junk.pt").write_bytes(pickle.dumps([1, 2], protocol=2) + b"junk")
    with pytest.raises(ValueError, match="junk.pt"):
        read_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="no such file"):
        read_checkpoint(tmp_path / "absent.pt")
    torch.save({"epoch": 3}, tmp_path / "no_weights.pt")
    with pytest.raises(ValueError, match="expected a state dict"):
        read_checkpoint(tmp_path / "no_weights.pt")


def test_prefix_tokens_and_a_grid_that_is_not_square():
    b, d = 2, 5
    patches = torch.randn(b, 2 * 4, d)  # a 2x4 grid
    tokens = torch.cat([torch.full((b, 3, d), 99.0), patches], dim=1)  # a class and two register tokens
    grid = as_feature_map(tokens, prefix_tokens=3, grid=(2, 4))
    assert grid.shape == (b, d, 2, 4)
    assert torch.equal(grid[1, :, 1, 2], patches[1, 1 * 4 + 2])
    assert 99.0 not in grid
    square = as_feature_map(tokens[:, :7], prefix_tokens=3)  # 4 patches: 2x2
    assert square.shape == (b, d, 2, 2)
    with pytest.raises(ValueError, match="3 prefix token.*2x4 grid"):
        as_feature_map(tokens[:, :9], prefix_tokens=3, grid=(2, 4))
    with pytest.raises(ValueError, match="square grid"):
        as_feature_map(tokens, prefix_tokens=3)  # 8 patches are no square


def test_vit_features_drop_class_and_register_tokens():
    vit = TinyViT(num_classes=3, img_size=(8, 16)).eval()
    assert token_layout(vit) == (2, (2, 4))
    teacher = FrozenOriginal(vit, "blocks.1")
    x = torch.randn(3, 3, 8, 16)
    feats = teacher.features(x)
    assert feats.shape == (3, 32, 2, 4)
    captured = {}
    vit.blocks[1].register_forward_hook(lambda m, i, o: captured.setdefault("tokens", o))
    vit(x)
    assert torch.allclose(feats[:, :, 1, 3], captured["tokens"][:, 2 + 7])  # the last patch, after 2 prefix tokens


def test_torchvision_vit_layout():
    model = nn.Module()
    model.class_token = nn.Parameter(torch.zeros(1, 1, 4))
    model.image_size, model.patch_size = 224, 16
    assert token_layout(model) == (1, (14, 14))
    assert token_layout(TinyResNet(3)) == (None, None)


def test_teacher_cache_over_its_limit_names_the_flags_for_a_vit():
    from fastmix import MixUnlearn

    vit = TinyViT(num_classes=3)
    x, y = torch.randn(40, 3, 16, 16), torch.randint(0, 3, (40,))
    mu = MixUnlearn(vit, "blocks.1", cache_limit_mb=0.01, batch_size=8, epochs=1)
    with pytest.raises(ValueError, match=r"teacher cache needs .* MiB .*--cache-limit-mb MB.*--no-cache"):
        mu.prepare((x[:8], y[:8]), (x[8:], y[8:]))


def test_the_mixblock_reads_the_patch_grid_and_masks_the_whole_image():
    from fastmix import MixUnlearn

    torch.manual_seed(0)
    vit = TinyViT(num_classes=3)
    x, y = torch.randn(24, 3, 16, 16), torch.randint(0, 3, (24,))
    mu = MixUnlearn(vit, "blocks.1", batch_size=8, epochs=1, lr=1e-3)
    run = mu.prepare((x[:8], y[:8]), (x[8:], y[8:]))
    assert mu.mixblock.in_channels == 32 and run.cache.feats[0].shape == (8, 32, 4, 4)  # the 4x4 patch grid
    mu.run(run)
    x_f, x_r, mask, mixed, lam = mu.preview()
    assert mask.shape == (8, 1, 16, 16)  # upsampled from the grid to the image
    assert torch.allclose(mixed, mask * x_f + (1 - mask) * x_r, atol=1e-6)
