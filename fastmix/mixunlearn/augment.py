"""On-device data augmentation for the unlearning loop: torch ops only, drawn from the
loop's device generator, so a step still reads nothing back to the host."""
from __future__ import annotations

import torch
from torch.nn import functional as F

AUGMENTATIONS = ("crop-flip",)


def crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random ``pad``-pixel shifts (zero padding, as torchvision's RandomCrop(padding=pad))
    and horizontal flips with probability 1/2, one draw per sample of ``(B, C, H, W)`` images."""
    B, C, H, W = x.shape
    dev = x.device
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (B, 1), generator=generator, device=dev)
    dx = torch.randint(0, 2 * pad + 1, (B, 1), generator=generator, device=dev)
    flip = torch.rand(B, 1, generator=generator, device=dev) < 0.5
    rows = dy + torch.arange(H, device=dev)
    cols = dx + torch.arange(W, device=dev)
    cols = torch.where(flip, cols.flip(1), cols)
    b = torch.arange(B, device=dev).view(B, 1, 1, 1)
    c = torch.arange(C, device=dev).view(1, C, 1, 1)
    out = padded[b, c, rows.view(B, 1, H, 1), cols.view(B, 1, 1, W)]
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def get_augmentation(name: str | None):
    if name is None or name == "none":
        return None
    if name == "crop-flip":
        return crop_flip
    raise ValueError(f"augment must be None, 'none' or one of {AUGMENTATIONS}, got {name!r}")
