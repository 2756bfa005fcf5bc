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


def as_feature_map(out) -> torch.Tensor:
    """A layer's output as ``(B, C, h, w)``.

    4-d outputs are used as they are. Token sequences ``(B, N, D)`` (a transformer's
    patch tokens) become a ``(B, D, s, s)`` grid when ``N = s*s``, or after dropping
    the first token (a class token) when ``N - 1 = s*s``. ``(B, D)`` becomes ``(B, D, 1, 1)``.
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
        n = out.shape[1]
        for drop in (0, 1):
            s = math.isqrt(n - drop)
            if s * s == n - drop and s > 0:
                tokens = out[:, drop:]
                return tokens.transpose(1, 2).reshape(out.shape[0], out.shape[2], s, s)
        raise ValueError(f"cannot arrange {n} tokens of the feature layer on a square grid (with or without a "
                         "class token)")
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
        feats = as_feature_map(self._captured)
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
