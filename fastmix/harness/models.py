"""The classifiers of SPEC section 8, and which layer feeds the MixBlock in each; models
by name from timm or torchvision (optional packages), and their checkpoints."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F


class MnistCNN(nn.Module):
    """SPEC 8's CNN for 28x28 grey images: conv 5x5 1->16, pool, conv 5x5 16->32, pool,
    fc 1568->256->128->classes. ``block2`` (32x7x7) feeds the MixBlock."""

    feature_layer = "block2"

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(in_channels, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 7 * 7, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.head(self.block2(self.block1(x)))


class DigitsCNN(nn.Module):
    """A CNN in the same style for scikit-learn's 8x8 digits: conv 3x3 1->16, conv 3x3
    16->32, pool, fc 512->128->classes. ``block2`` (32x4x4) feeds the MixBlock."""

    feature_layer = "block2"

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x):
        return self.head(self.block2(self.block1(x)))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 colour images (CIFAR stem: 3x3 conv, no max-pool).

    At 32x32 input ``layer3`` is 256x8x8 and ``layer2`` 128x16x16; SPEC 5 names
    ``layer2`` for 32x32, but ``layer3`` keeps the MixBlock's attention over 64
    positions instead of 256 and matches the paper's ~66K-parameter MixBlock
    (256 channels), so ``layer3`` is the default here; pass another name to change it.
    """

    feature_layer = "layer3"

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, in_planes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class TorchvisionBlock(nn.Module):
    """torchvision's ResNet BasicBlock, with its module names (``downsample``)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class LafResNet18(nn.Module):
    """LAF's classifier for CIFAR-10 and SVHN (``--protocol laf``, the protocol the paper
    followed): a torchvision-style ResNet-18 (ImageNet stem: 7x7 conv stride 2, 3x3
    max-pool stride 2; torchvision's module names and initialisation) whose ``fc`` is a
    head 512 -> 256 -> ReLU -> classes.

    The images stay as decoded (32x32); the first thing :meth:`forward` does is resize
    each batch to ``input_size`` x ``input_size`` (224 as LAF, bilinear, as
    torchvision's ``Resize``), so a run never holds the data set at 224x224.
    ``layer3`` (256x14x14 at 224) feeds the MixBlock, as in fastmix's own ResNet-18.
    """

    feature_layer = "layer3"

    def __init__(self, num_classes: int = 10, in_channels: int = 3, input_size: int = 224):
        super().__init__()
        self.input_size = input_size
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, in_planes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(TorchvisionBlock(in_planes, planes, stride), TorchvisionBlock(planes, planes)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, num_classes))
        for m in self.modules():  # torchvision's
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        size = (self.input_size, self.input_size)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        out = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


MODELS = {"digits-cnn": DigitsCNN, "mnist-cnn": MnistCNN, "resnet18": ResNet18, "resnet18-laf": LafResNet18}

# Models from other packages, ``--model FAMILY:NAME``: the package each family needs.
FAMILIES = {"timm": "timm", "torchvision": "torchvision"}
INSTALL_HINT = 'pip install "fastmix[models]"'


def check_model_name(name: str) -> str:
    """``name`` if it names a model :func:`build_model` can make, else a ValueError saying what can."""
    family, sep, rest = name.partition(":")
    if name in MODELS or (sep and family in FAMILIES and rest):
        return name
    raise ValueError(f"model must be one of {sorted(MODELS)}, or timm:NAME or torchvision:NAME (e.g. "
                     f"timm:vit_base_patch16_224, torchvision:resnet50), got {name!r}")


def default_model_name(image_shape: tuple[int, int, int]) -> str:
    """The model SPEC 8 pairs with an image shape ``(C, H, W)``."""
    c, h, w = image_shape
    if (h, w) == (8, 8):
        return "digits-cnn"
    if (h, w) == (28, 28):
        return "mnist-cnn"
    if (h, w) == (32, 32):
        return "resnet18"
    raise ValueError(f"no default model for images of shape {image_shape}; pass --model with a name from "
                     f"{sorted(MODELS)}, or timm:NAME or torchvision:NAME")


def import_family(family: str):
    """The package behind ``--model FAMILY:NAME``, or a ValueError saying what to install."""
    import importlib

    try:
        return importlib.import_module(FAMILIES[family])
    except ImportError as e:
        raise ValueError(f"--model {family}:... needs the {FAMILIES[family]} package, which does not import here "
                         f"({e}); install it with {INSTALL_HINT}") from None


def default_feature_layer(model: nn.Module) -> str | None:
    """The module that feeds the MixBlock when ``--feature-layer`` is not given.

    * a timm ViT (``blocks``) or torchvision ViT (``encoder.layers``): the block ending
      the first half, e.g. ``blocks.5`` of ViT-B/16's 12: its patch tokens still keep
      their places (the deeper, the more each token mixes in the whole image), and the
      MixBlock reads them as a 14x14 grid at 224x224;
    * a ResNet (``layer3``, in timm and torchvision alike): ``layer3``, as for
      fastmix's own ResNet-18 (SPEC 5);
    * else the model's own ``feature_layer`` attribute, or None (then name one).
    """
    modules = dict(model.named_modules())
    for blocks in ("blocks", "encoder.layers"):
        seq = modules.get(blocks)
        if isinstance(seq, (nn.Sequential, nn.ModuleList)) and len(seq) > 0:
            names = [n for n, _ in seq.named_children()]
            return f"{blocks}.{names[max(len(names) // 2 - 1, 0)]}"
    if "layer3" in modules:
        return "layer3"
    return getattr(model, "feature_layer", None)


def build_model(name: str, num_classes: int, in_channels: int, seed: int) -> nn.Module:
    """A freshly initialised model; the initial weights depend only on ``seed``.

    ``timm:NAME`` and ``torchvision:NAME`` are made by their packages with
    ``num_classes`` outputs and random weights (never downloaded: pretrained weights come
    from a checkpoint, :func:`load_weights`); they take 3-channel images. The result
    carries a ``feature_layer`` attribute (:func:`default_feature_layer`) when one is known.
    """
    check_model_name(name)
    family, _, arch = name.partition(":")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name in MODELS:
            return MODELS[name](num_classes=num_classes, in_channels=in_channels)
        if in_channels != 3:
            raise ValueError(f"--model {name} takes colour images (3 channels), the data have {in_channels}")
        package = import_family(family)
        try:
            if family == "timm":
                model = package.create_model(arch, pretrained=False, num_classes=num_classes)
            else:
                model = package.models.get_model(arch, weights=None, num_classes=num_classes)
        except (RuntimeError, ValueError, KeyError) as e:  # both packages raise these for an unknown name
            raise ValueError(f"--model {name}: {family} cannot make {arch!r} ({e})") from None
    model.feature_layer = default_feature_layer(model)
    return model


def input_config(model: nn.Module) -> dict:
    """What the model says about its inputs: ``{"size": (H, W), "mean": (...), "std": (...)}``,
    each present where a timm model's ``pretrained_cfg`` gives it (``input_size``,
    ``mean``, ``std``); empty for other models."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    out = {}
    if cfg.get("input_size"):
        out["size"] = tuple(int(v) for v in cfg["input_size"][-2:])
    if cfg.get("mean") and cfg.get("std"):
        out["mean"], out["std"] = tuple(map(float, cfg["mean"])), tuple(map(float, cfg["std"]))
    return out


def read_checkpoint(path: str | Path) -> dict:
    """A state dict from ``path``: safetensors (``.safetensors``), else a torch file read
    with ``weights_only=True``, holding the state dict itself or under ``"state_dict"``
    or ``"model"`` (fastmix's own cache files, and the usual training checkpoints). A
    ``module.`` prefix on every key (a DistributedDataParallel model's) is dropped."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--checkpoint {path}: no such file")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ValueError(f"--checkpoint {path}: reading safetensors needs the safetensors package; install it "
                             f"with {INSTALL_HINT} (or pip install safetensors)") from None
        try:
            state = load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types for a bad header
            raise ValueError(f"--checkpoint {path}: not a readable safetensors file ({e})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for a truncated file or a refused object
            raise ValueError(f"--checkpoint {path}: not a torch checkpoint readable with weights_only=True "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"--checkpoint {path}: expected a state dict (parameter names to tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load the checkpoint at ``path`` into ``model`` (in place), or a ValueError that
    names the keys missing from it, those it has that the model lacks, and the shapes
    that differ."""
    state = read_checkpoint(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or extra or shapes:
        def some(items):
            return ", ".join(items[:6]) + (f" and {len(items) - 6} more" if len(items) > 6 else "")

        parts = [f"missing from it: {some(missing)}" if missing else "",
                 f"not in the model: {some(extra)}" if extra else "",
                 f"shapes differ: {some(shapes)}" if shapes else ""]
        raise ValueError(f"--checkpoint {path} does not fit {type(model).__name__} "
                         f"({'; '.join(p for p in parts if p)})")
    model.load_state_dict(state)
    return model


def file_digest(path: str | Path) -> str:
    """A short sha256 of a file's bytes (for the model cache's key)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]
