"""The MixBlock: an adaptive mixup-mask generator after AdAutoMix (SPEC section 5)."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class MixBlock(nn.Module):
    """Cross attention between the features of a forget and a retain sample gives a
    pixel mask ``M`` for the forget sample and ``1 - M`` for the retain sample.

    ``forward(h_f, h_r, lam, size)`` takes two ``(B, C, h, w)`` feature maps of the
    frozen original model, the ``(B,)`` mixing ratios and the image size ``(H, W)``
    and returns ``(B, 2, H, W)`` masks that sum to 1 over dim 1: channel 0 weighs
    ``x_f``, channel 1 weighs ``x_r[perm]``. :meth:`mask` returns channel 0, the
    weight :func:`fastmix.mixup` takes.

    The 1x1 projections ``q, k: C+1 -> C/r`` and ``v: C+1 -> 1`` are shared between
    both inputs (about 66K parameters for C = 256, r = 2); they are ``nn.Conv2d``
    modules for their parameters and initialisation, applied all at once (the same
    math as SPEC 5, in fewer and larger operations):

    * both inputs and all three projections in one matrix product; the appended ratio
      channel is constant over positions, so its share of each projection is a
      per-sample bias rather than a concatenated channel;
    * both attentions in one batched product and softmax (written out: at h*w = 49
      positions, ``scaled_dot_product_attention``'s checks for fully masked rows cost
      more than the attention itself on a CPU);
    * the two-channel softmax of step 5 as ``sigmoid(upsample(m_f - m_r))``: bilinear
      upsampling is linear, so one channel is upsampled instead of two.

    ``v``'s bias adds the same constant to ``m_f`` and ``m_r``, which the two-channel
    softmax cancels: its gradient is zero but for rounding. It is kept so that the
    parameters are SPEC 5's 1x1 convolutions.

    ``init="torch"`` keeps torch's default initialisation of the convolutions;
    ``"paper"`` draws the weights from normal(0, 0.01) and zeroes the biases, as the
    authors' code does. ``upsample`` is ``"bilinear"`` (SPEC 5, this module's default) or
    ``"nearest"`` (AdAutoMix's code: each feature position's mask value covers its block of
    pixels; MixUnlearn's default, ``MixUnlearnConfig.mask_upsample``).
    """

    def __init__(self, in_channels: int, reduction: int = 2, init: str = "torch", upsample: str = "bilinear"):
        super().__init__()
        if in_channels < 1 or reduction < 1:
            raise ValueError(f"in_channels and reduction must be >= 1, got {in_channels} and {reduction}")
        if init not in ("torch", "paper") or upsample not in ("bilinear", "nearest"):
            raise ValueError(f"init must be 'torch' or 'paper' and upsample 'bilinear' or 'nearest', got {init!r} "
                             f"and {upsample!r}")
        self.in_channels = in_channels
        self.dim = max(1, in_channels // reduction)
        self.upsample = upsample
        self.q = nn.Conv2d(in_channels + 1, self.dim, 1)
        self.k = nn.Conv2d(in_channels + 1, self.dim, 1)
        self.v = nn.Conv2d(in_channels + 1, 1, 1)
        if init == "paper":
            for conv in (self.q, self.k, self.v):
                nn.init.normal_(conv.weight, 0.0, 0.01)
                nn.init.zeros_(conv.bias)

    def _check(self, h_f: torch.Tensor, h_r: torch.Tensor) -> None:
        if h_f.dim() != 4 or h_f.shape != h_r.shape or h_f.shape[1] != self.in_channels:
            raise ValueError(
                f"h_f and h_r must both be (B, {self.in_channels}, h, w), got {tuple(h_f.shape)} and {tuple(h_r.shape)}"
            )

    def _logit_difference(self, h_f: torch.Tensor, h_r: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """``m_f - m_r`` of SPEC 5 step 4, ``(B, 1, h, w)``."""
        B, C, h, w = h_f.shape
        d = self.dim
        lam = lam.expand(B) if lam.dim() == 0 else lam
        ratio = torch.cat([lam, 1 - lam]).to(h_f.dtype)  # the appended channel: lam for h_f, 1 - lam for h_r
        weight = torch.cat([self.q.weight, self.k.weight, self.v.weight]).flatten(1)  # (2d + 1, C + 1)
        bias = torch.cat([self.q.bias, self.k.bias, self.v.bias])
        feats = torch.cat([h_f, h_r]).flatten(2).transpose(1, 2)  # (2B, hw, C); contiguous if channels_last
        proj = feats @ weight[:, :C].t() + (torch.outer(ratio, weight[:, C]) + bias).unsqueeze(1)
        q, k, v = proj.split([d, d, 1], dim=2)
        k = k.roll(B, 0)  # h_f's queries meet h_r's keys, and h_r's meet h_f's
        attn = torch.softmax(q @ k.transpose(1, 2) * (1.0 / math.sqrt(d)), dim=2)  # (2B, hw, hw)
        m = attn @ v  # (2B, hw, 1): m_f, then m_r
        return (m[:B] - m[B:]).view(B, 1, h, w)

    def mask(self, h_f, h_r, lam, size) -> torch.Tensor:
        """``(B, 1, H, W)``: the weight of the forget sample in each mix."""
        self._check(h_f, h_r)
        diff = self._logit_difference(h_f, h_r, lam)
        if self.upsample == "nearest":
            diff = F.interpolate(diff, size=tuple(size), mode="nearest")
        else:
            diff = F.interpolate(diff, size=tuple(size), mode="bilinear", align_corners=False)
        return torch.sigmoid(diff)

    def forward(self, h_f: torch.Tensor, h_r: torch.Tensor, lam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        m = self.mask(h_f, h_r, lam, size)
        return torch.cat([m, 1 - m], dim=1)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, dim={self.dim}, upsample={self.upsample}"
