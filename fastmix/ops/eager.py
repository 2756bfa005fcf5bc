"""The eager baseline: MixUnlearn's per-step math written the straightforward way.

Used by ``MixUnlearn(step="reference")`` (the paper-style step) and by bench/ as the
"eager" implementation every benchmark compares against.

This is what a user of the paper writes in plain PyTorch from SPEC sections 2 to 4:
ordinary tensor ops, gradients by autograd through them (not fastmix's closed-form
backward). ``torch.compile`` of these same functions is the second baseline. The
one deliberate kindness: sharpening is ``softmax(z / T)`` (SPEC 3's identity), not the
power form ``p**(1/T) / sum`` of the public code, which is slower and underflows.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from fastmix.backends.torch_backend import EPS


def sharpen(logits: torch.Tensor, T: float) -> torch.Tensor:
    return torch.softmax(logits / T, dim=-1)


def mixup(x_forget, x_retain, mask, perm=None):
    """``M * x_f + (1 - M) * x_r[perm]`` with a ``(B, 1, H, W)`` mask broadcast over channels
    (or a ``(B,)`` lambda per sample)."""
    if mask.dim() == 1:
        mask = mask.view(-1, *([1] * (x_forget.dim() - 1)))
    return mask * x_forget + (1 - mask) * (x_retain if perm is None else x_retain[perm])


def cosine_distance(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``1 - <p, q> / max(|p| |q|, eps)`` row by row."""
    return 1 - (p * q).sum(1) / (p.norm(dim=1) * q.norm(dim=1)).clamp_min(EPS)


def as_probabilities(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    if target.dtype == torch.int64:
        return F.one_hot(target, num_classes).float()
    return target.float()


def contrast(keep: torch.Tensor, forget: torch.Tensor, tau: float) -> torch.Tensor:
    """``C_tau = sum(keep) - |R| log sum exp(forget / tau)`` (reduction ``sum``)."""
    return keep.sum() - keep.numel() * torch.logsumexp(forget / tau, dim=0)


def contrastive_loss(logits, forget_target, retain_target, lam, tau, perm=None):
    """``L_mix`` / ``-L_gen``: keep terms ``(1 - lam) d(p, q_r[perm])``, forget terms ``lam d(p, q_f)``."""
    C = logits.shape[1]
    p = torch.softmax(logits.float(), dim=1)
    q_f = as_probabilities(forget_target, C)
    q_r = as_probabilities(retain_target, C)
    q_r = q_r if perm is None else q_r[perm]
    keep = (1 - lam) * cosine_distance(p, q_r)
    forget = lam * cosine_distance(p, q_f)
    return contrast(keep, forget, tau)


def real_loss(retain_logits, forget_logits, retain_target, forget_target, tau):
    C = retain_logits.shape[1]
    p_r = torch.softmax(retain_logits.float(), dim=1)
    p_f = torch.softmax(forget_logits.float(), dim=1)
    keep = cosine_distance(p_r, as_probabilities(retain_target, C))
    forget = cosine_distance(p_f, as_probabilities(forget_target, C))
    return contrast(keep, forget, tau)


def mixunlearn_loss(mix_logits, forget_logits, retain_logits, forget_target, retain_target, lam, perm,
                    tau_mix, tau_real, omega):
    """The unlearner's objective ``L_mix + omega * L_real`` (SPEC 6)."""
    loss = contrastive_loss(mix_logits, forget_target, retain_target, lam, tau_mix, perm)
    return loss + omega * real_loss(retain_logits, forget_logits, retain_target, forget_target, tau_real)


def sample_beta_host(rng, n: int, alpha: float, device) -> torch.Tensor:
    """``(n,)`` draws of Beta(alpha, alpha) from a numpy Generator, copied to ``device``
    (the paper's code samples lambda on the host)."""
    return torch.from_numpy(rng.beta(alpha, alpha, size=n)).float().to(device)


def sample_beta(n: int, alpha: float, device) -> torch.Tensor:
    """``(n,)`` draws of Beta(alpha, alpha) the usual way."""
    a = torch.full((n,), float(alpha), device=device)
    return torch.distributions.Beta(a, a, validate_args=False).sample()
