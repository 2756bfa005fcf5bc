"""On-device data augmentation for the unlearning loop: torch ops only, drawn from the
loop's device generator, so a step still reads nothing back to the host."""
from __future__ import annotations

import math

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


def random_resized_crop_flip(x: torch.Tensor, generator: torch.Generator, size: int,
                             scale: tuple[float, float] = (0.08, 1.0),
                             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """torchvision's ``RandomResizedCrop(size, scale, ratio)`` then ``RandomHorizontalFlip()``
    on a batch ``(B, C, H, W)``, one draw per sample, in torch ops: ``(B, C, size, size)``.

    As torchvision: up to 10 tries of an area share in ``scale`` (torchvision's default
    (0.08, 1.0), LAF's) and a log-uniform aspect ``ratio``, the side lengths rounded, the
    first box that fits the image taken at a random integer position; none fitting, the
    whole image (torchvision's fallback for a square image; for others it keeps the
    largest box of an aspect in ``ratio``, centred). The box is resampled bilinearly
    (edges clamped), flipped with probability 1/2."""
    B, C, H, W = x.shape
    dev = x.device
    tries = 10
    area = H * W * torch.empty(B, tries, device=dev).uniform_(scale[0], scale[1], generator=generator)
    log_r = torch.empty(B, tries, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).round()
    h = torch.sqrt(area / aspect).round()
    fits = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = fits.float().argmax(1, keepdim=True)  # the first try that fits (0 when none does)
    any_fits = fits.any(1)
    fw, fh = _fallback(H, W, ratio)
    w = torch.where(any_fits, w.gather(1, first).squeeze(1), torch.tensor(float(fw), device=dev))
    h = torch.where(any_fits, h.gather(1, first).squeeze(1), torch.tensor(float(fh), device=dev))
    u = torch.rand(B, 2, generator=generator, device=dev)
    top = torch.where(any_fits, torch.floor(u[:, 0] * (H - h + 1)), torch.tensor(float((H - fh) // 2), device=dev))
    left = torch.where(any_fits, torch.floor(u[:, 1] * (W - w + 1)), torch.tensor(float((W - fw) // 2), device=dev))
    flip = torch.rand(B, generator=generator, device=dev) < 0.5
    # output pixel centres onto the box (align_corners=False): x_in = (2 left + w) / W - 1 + (w / W) x_out
    theta = torch.zeros(B, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0] = torch.where(flip, -w / W, w / W)
    theta[:, 0, 2] = (2 * left + w) / W - 1
    theta[:, 1, 1] = h / H
    theta[:, 1, 2] = (2 * top + h) / H - 1
    grid = F.affine_grid(theta, [B, C, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _fallback(H: int, W: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """torchvision's box when no try fits: the whole image, clipped to the aspect range."""
    in_ratio = W / H
    if in_ratio < min(ratio):
        return W, int(round(W / min(ratio)))
    if in_ratio > max(ratio):
        return int(round(H * max(ratio))), H
    return W, H


def get_augmentation(name: str | None):
    if name is None or name == "none":
        return None
    if name == "crop-flip":
        return crop_flip
    raise ValueError(f"augment must be None, 'none' or one of {AUGMENTATIONS}, got {name!r}")
