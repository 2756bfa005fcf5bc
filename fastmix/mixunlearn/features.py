"""Reading an intermediate layer's output as a feature map for the MixBlock."""
from __future__ import annotations

import math

import torch
from torch import nn


def find_module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        some = [n for n in modules if n][:12]
        raise ValueError(f"feature_layer {name!r} is not a module of {type(model).__name__}; some names: {some}")
    return modules[name]


def token_layout(model: nn.Module) -> tuple[int | None, tuple[int, int] | None]:
    """``(prefix_tokens, grid)`` a transformer declares, each None where it does not.

    ``prefix_tokens``: the class and register tokens ahead of the patch tokens, from the
    model's ``num_prefix_tokens`` (timm's name; fastmix reads the same attribute on any
    model), or 1 for torchvision's ViT (a ``class_token`` and no register tokens).
    ``grid``: the patch grid ``(h, w)``, from timm's ``patch_embed.grid_size`` or
    torchvision's ``image_size // patch_size``; needed when the grid is not square.
    """
    prefix = getattr(model, "num_prefix_tokens", None)
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if prefix is None and isinstance(getattr(model, "class_token", None), torch.Tensor):
        prefix = 1
        size, patch = getattr(model, "image_size", None), getattr(model, "patch_size", None)
        if isinstance(size, int) and isinstance(patch, int) and patch > 0:
            grid = (size // patch, size // patch)
    prefix = int(prefix) if prefix is not None else None
    grid = (int(grid[0]), int(grid[1])) if grid is not None else None
    return prefix, grid


def as_feature_map(out, prefix_tokens: int | None = None, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """A layer's output as ``(B, C, h, w)``.

    4-d outputs are used as they are; ``(B, D)`` becomes ``(B, D, 1, 1)``. Token
    sequences ``(B, N, D)`` (a transformer's tokens) become their patch grid
    ``(B, D, h, w)`` once the ``prefix_tokens`` ahead of the patches (class and register
    tokens) are dropped; ``grid`` is ``(h, w)`` where the model declares it, else the
    patches must fill a square. Without a declared ``prefix_tokens`` the tokens must fill
    a square with none or one (a class token) dropped; see :func:`token_layout`.
    """
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the feature layer must output a tensor, got {type(out).__name__}")
    if out.dim() == 4:
        return out
    if out.dim() == 2:
        return out[:, :, None, None]
    if out.dim() == 3:
        b, n, d = out.shape
        for drop in (0, 1) if prefix_tokens is None else (prefix_tokens,):
            if grid is not None:
                h, w = grid
            else:
                h = w = math.isqrt(max(n - drop, 0))
            if h * w == n - drop and h > 0:
                return out[:, drop:].transpose(1, 2).reshape(b, d, h, w)
        if grid is not None or prefix_tokens is not None:
            prefix = "class or register" if prefix_tokens is None else str(prefix_tokens)
            shape = f"a {grid[0]}x{grid[1]} grid" if grid is not None else "a square grid"
            raise ValueError(f"the feature layer outputs {n} tokens: {prefix} prefix token(s) and {shape} of patches "
                             f"do not add up to that")
        raise ValueError(f"cannot arrange {n} tokens of the feature layer on a square grid (with or without a "
                         "class token); declare the model's num_prefix_tokens (and patch_embed.grid_size)")
    raise ValueError(f"the feature layer's output must be 2-, 3- or 4-d, got shape {tuple(out.shape)}")


class _StopForward(Exception):
    """Raised by the hook to end a forward pass at the feature layer."""


class FrozenOriginal(nn.Module):
    """f_D, the original model, frozen (eval mode, no gradients). ``forward`` returns
    its logits and, when a ``feature_layer`` is named, its feature map ``h_D`` (else
    None); :meth:`features` gives the feature map alone, skipping the layers after it;
    :meth:`logits` the logits alone."""

    def __init__(self, model: nn.Module, feature_layer: str | None):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.feature_layer = feature_layer
        self._captured: torch.Tensor | None = None
        self._stop = False
        self._layout = token_layout(model)
        if feature_layer is not None:
            find_module(model, feature_layer).register_forward_hook(self._capture)

    @property
    def has_features(self) -> bool:
        return self.feature_layer is not None

    def _capture(self, module, inputs, output):
        self._captured = output
        if self._stop:
            raise _StopForward

    def _take_features(self) -> torch.Tensor:
        if self._captured is None:
            raise RuntimeError(f"feature layer {self.feature_layer!r} did not run in the model's forward")
        feats = as_feature_map(self._captured, *self._layout)
        self._captured = None
        return feats

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``h_D(x)`` only: the forward pass stops at the feature layer."""
        self._captured, self._stop = None, True
        try:
            self.model(x)
        except _StopForward:
            pass
        finally:
            self._stop = False
        return self._take_features()

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def train(self, mode: bool = True):  # f_D stays in eval mode
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        self._captured = None
        logits = self.model(x)
        return logits, (self._take_features() if self.has_features else None)
