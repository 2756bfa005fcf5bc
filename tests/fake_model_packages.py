"""Tiny stand-ins for timm and torchvision (neither is installed for the tests): a
ViT with a class and a register token, and a torchvision-style ResNet, made through
fake modules that expose the calls fastmix makes (``timm.create_model``,
``torchvision.models.get_model``) and record how they were called."""
from __future__ import annotations

import sys
import types

import torch
from torch import nn
from torch.nn import functional as F


class PatchEmbed(nn.Module):
    def __init__(self, img_size=(16, 16), patch=4, in_chans=3, dim=32):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, stride=patch)
        self.grid_size = (img_size[0] // patch, img_size[1] // patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TinyViT(nn.Module):
    """timm's VisionTransformer in miniature: patch embedding, class + register tokens
    (``num_prefix_tokens = 2``), position embeddings, ``blocks``, a norm and a head."""

    def __init__(self, num_classes=10, depth=4, dim=32, img_size=(16, 16), patch=4, in_chans=3):
        super().__init__()
        self.num_prefix_tokens = 2
        self.patch_embed = PatchEmbed(img_size, patch, in_chans, dim)
        n = self.patch_embed.grid_size[0] * self.patch_embed.grid_size[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.reg_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n, dim) * 0.02)
        self.blocks = nn.Sequential(*[
            nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
            for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.pretrained_cfg = {"input_size": (3, *img_size), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}

    def forward(self, x):
        t = self.patch_embed(x) + self.pos_embed
        b = t.shape[0]
        t = torch.cat([self.cls_token.expand(b, -1, -1), self.reg_token.expand(b, -1, -1), t], dim=1)
        return self.head(self.norm(self.blocks(t))[:, 0])


class Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class TinyResNet(nn.Module):
    """torchvision's ResNet layout (conv1, bn1, layer1..layer4, fc) at width 8."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(Basic(8, 8, 1))
        self.layer2 = nn.Sequential(Basic(8, 16, 2))
        self.layer3 = nn.Sequential(Basic(16, 16, 2))
        self.layer4 = nn.Sequential(Basic(16, 32, 1))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def install_fake_timm(monkeypatch, **vit_options) -> list:
    """Put a fake ``timm`` in ``sys.modules``; returns the list of its calls' keyword arguments."""
    calls = []

    def create_model(name, pretrained=False, num_classes=1000, **kwargs):
        calls.append(dict(name=name, pretrained=pretrained, num_classes=num_classes, **kwargs))
        if pretrained:
            raise AssertionError("fastmix must never ask timm for pretrained weights")
        if name != "tiny_vit":
            raise RuntimeError(f"Unknown model ({name})")
        return TinyViT(num_classes=num_classes, **vit_options)

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model, __name__="timm"))
    return calls


def install_fake_torchvision(monkeypatch) -> list:
    calls = []

    def get_model(name, weights=None, num_classes=1000, **kwargs):
        calls.append(dict(name=name, weights=weights, num_classes=num_classes, **kwargs))
        if weights is not None:
            raise AssertionError("fastmix must never ask torchvision for weights")
        if name != "resnet18":
            raise ValueError(f"Unknown model {name}")
        return TinyResNet(num_classes=num_classes)

    models = types.SimpleNamespace(get_model=get_model)
    monkeypatch.setitem(sys.modules, "torchvision", types.SimpleNamespace(models=models, __name__="torchvision"))
    return calls
