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
    both inputs (about 66K parameters for C = 256, r = 2). The attention uses
    ``torch.nn.functional.scaled_dot_product_attention`` (flash/efficient kernels on GPU).
    """

    def __init__(self, in_channels: int, reduction: int = 2):
        super().__init__()
        if in_channels < 1 or reduction < 1:
            raise ValueError(f"in_channels and reduction must be >= 1, got {in_channels} and {reduction}")
        self.in_channels = in_channels
        self.dim = max(1, in_channels // reduction)
        self.q = nn.Conv2d(in_channels + 1, self.dim, 1)
        self.k = nn.Conv2d(in_channels + 1, self.dim, 1)
        self.v = nn.Conv2d(in_channels + 1, 1, 1)

    @staticmethod
    def _with_ratio(h: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        const = ratio.to(h.dtype).view(-1, 1, 1, 1).expand(h.shape[0], 1, h.shape[2], h.shape[3])
        return torch.cat([h, const], dim=1)

    def forward(self, h_f: torch.Tensor, h_r: torch.Tensor, lam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if h_f.dim() != 4 or h_f.shape != h_r.shape or h_f.shape[1] != self.in_channels:
            raise ValueError(
                f"h_f and h_r must both be (B, {self.in_channels}, h, w), got {tuple(h_f.shape)} and {tuple(h_r.shape)}"
            )
        B, _, h, w = h_f.shape
        lam = lam.expand(B) if lam.dim() == 0 else lam
        a_f = self._with_ratio(h_f, lam)
        a_r = self._with_ratio(h_r, 1 - lam)
        # (B, 1, hw, d) queries/keys, (B, 1, hw, 1) values: one attention head.
        q_f, q_r = (self.q(a).flatten(2).transpose(1, 2).unsqueeze(1) for a in (a_f, a_r))
        k_f, k_r = (self.k(a).flatten(2).transpose(1, 2).unsqueeze(1) for a in (a_f, a_r))
        v_f, v_r = (self.v(a).flatten(2).transpose(1, 2).unsqueeze(1) for a in (a_f, a_r))
        scale = 1.0 / math.sqrt(self.dim)
        m_f = F.scaled_dot_product_attention(q_f, k_r, v_f, scale=scale)  # A  v(h_f)
        m_r = F.scaled_dot_product_attention(q_r, k_f, v_r, scale=scale)  # A' v(h_r)
        logits = torch.cat([m_f, m_r], dim=1).view(B, 2, h, w)
        logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
        return torch.softmax(logits, dim=1)

    def mask(self, h_f, h_r, lam, size) -> torch.Tensor:
        """``(B, 1, H, W)``: the weight of the forget sample in each mix."""
        return self(h_f, h_r, lam, size)[:, 0:1]

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, dim={self.dim}"
