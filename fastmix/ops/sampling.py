"""Sampling of mixing ratios, kept apart from applying them (as timm's Mixup does)."""
from __future__ import annotations

import torch

from . import _checks


def sample_lambda(
    n: int,
    alpha: float,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(n,)`` independent draws from Beta(alpha, alpha), made on ``device``.

    Drawn as ``X / (X + Y)`` with ``X, Y ~ Gamma(alpha)`` from torch's gamma
    sampler on the device, so there is no host synchronisation and the call can
    run inside CUDA-graph capture. ``generator`` (on ``device``) makes it
    reproducible; without it torch's default generator for the device is used.
    In the rare case that both gamma draws underflow to 0 (tiny ``alpha``), the
    draw is 0.5, the distribution's mean. ``alpha`` is at most a quarter of the
    dtype's largest value (8.5e37 for float32), so that ``X + Y`` cannot overflow
    (each draw is about ``alpha``); Beta(alpha, alpha) is 0.5 to float32 precision
    long before that.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    alpha = _checks.positive_finite("alpha", alpha)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    largest = torch.finfo(dtype).max / 4
    if alpha > largest:
        raise ValueError(f"alpha must be at most {largest:.3g} for {dtype} draws (X + Y would overflow), got {alpha!r}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator must be on {device} like the samples, got a generator on {generator.device}")
    concentration = torch.full((2, n), alpha, dtype=dtype, device=device)
    gammas = torch._standard_gamma(concentration, generator=generator)
    total = gammas[0] + gammas[1]
    tiny = torch.finfo(dtype).tiny
    lam = gammas[0] / total.clamp_min(tiny)
    return torch.where(total > 0, lam, torch.full_like(lam, 0.5)).clamp_(0.0, 1.0)


def beta_variance(alpha: float) -> float:
    """Variance of Beta(alpha, alpha): 1 / (4 (2 alpha + 1))."""
    return 1.0 / (4.0 * (2.0 * alpha + 1.0))


__all__ = ["beta_variance", "sample_lambda"]
