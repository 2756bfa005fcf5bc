"""The PyTorch reference: the math of SPEC sections 2 to 4 in plain torch ops.

These functions are the CPU kernels of fastmix's ops (and the ``torch``
backend on any device). They compute in float32, or in float64 for float64
inputs, and return results in the input's dtype. The losses return the value
and the gradient of the value with respect to the logits, computed from the
closed form of SPEC section 4, exactly what the Triton and CUDA kernels compute.
"""
from __future__ import annotations

import math

import torch

from . import Kernels, compose_loss_forward, register

EPS = 1e-8  # the clamp of d(p, q) = 1 - <p, q> / max(|p| |q|, EPS)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --- sharpen -----------------------------------------------------------------------------


# Below this temperature z / T can overflow for ordinary logits (e.g. T = 1e-40), so the
# logits are shifted by their row maximum first: softmax((z - max z) / T) is the same
# function and never overflows. Above it the plain form is kept: it rounds as the
# trainer's pinned results expect, and overflows only for logits beyond 3e35 * T / 1e-3.
SHIFT_BELOW_T = 1e-3


def sharpen_forward(logits: torch.Tensor, T: float) -> torch.Tensor:
    if T < SHIFT_BELOW_T and logits.numel() > 0:
        # in float64: a tiny T is not even a float32 (1e-300 would round to 0)
        z = logits.to(torch.float64)
        return torch.softmax((z - z.amax(dim=-1, keepdim=True)) / T, dim=-1).to(logits.dtype)
    acc = compute_dtype(logits.dtype)
    if logits.dtype == acc:  # float32, float64: the casts would return their input, at a dispatch each
        return torch.softmax(logits / T, dim=-1)
    return torch.softmax(logits.to(acc) / T, dim=-1).to(logits.dtype)


def sharpen_backward(grad: torch.Tensor, out: torch.Tensor, T: float) -> torch.Tensor:
    acc = compute_dtype(out.dtype)
    y, g = out.to(acc), grad.to(acc)
    dot = (g * y).sum(dim=-1, keepdim=True)
    return (y * (g - dot) / T).to(out.dtype)


# --- mixup -------------------------------------------------------------------------------


def broadcast_weight(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A 0-d, (B,) or (B, 1, H, W) weight shaped to broadcast against ``x``."""
    if weight.dim() == 1:
        return weight.view(-1, *([1] * (x.dim() - 1)))
    return weight


def _gather_rows(x: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    return x if perm is None else x.index_select(0, perm)


def mixup_forward(x_forget, x_retain, weight, perm):
    acc = compute_dtype(x_forget.dtype)
    m = broadcast_weight(weight.to(acc), x_forget)
    mixed = m * x_forget.to(acc) + (1 - m) * _gather_rows(x_retain, perm).to(acc)
    if mixed.dtype == x_forget.dtype and mixed.stride() == x_forget.stride():
        return mixed  # already x_forget's dtype and layout: the copy below would change nothing
    out = torch.empty_like(x_forget)  # keeps x_forget's memory format
    out.copy_(mixed)
    return out


def mixup_backward(grad, x_forget, x_retain, weight, perm, needs):
    """Gradients to (x_forget, x_retain, weight); an empty tensor where ``needs`` is False."""
    acc = compute_dtype(x_forget.dtype)
    g = grad.to(acc)
    m = broadcast_weight(weight.to(acc), x_forget)
    grad_f = (m * g).to(x_forget.dtype) if needs[0] else x_forget.new_empty(0)
    grad_r = x_retain.new_empty(0)
    if needs[1]:
        rows = ((1 - m) * g).to(x_retain.dtype)
        if perm is None:
            grad_r = rows
        else:
            grad_r = torch.zeros_like(x_retain).index_add_(0, perm, rows)
    grad_w = weight.new_empty(0)
    if needs[2]:
        prod = g * (x_forget.to(acc) - _gather_rows(x_retain, perm).to(acc))
        if weight.dim() == 0:
            grad_w = prod.sum()
        elif weight.dim() == 1:
            grad_w = prod.reshape(prod.shape[0], math.prod(prod.shape[1:])).sum(dim=1)  # not -1: ambiguous at B = 0
        else:
            grad_w = prod.sum(dim=1, keepdim=True)
        grad_w = grad_w.to(weight.dtype)
    return grad_f, grad_r, grad_w


# --- the contrastive family ----------------------------------------------------------------


def cosine_parts(p: torch.Tensor, target: torch.Tensor):
    """Cosine similarity c(p, q) and the pieces of its gradient, per row.

    ``target`` is (B, C) probabilities or (B,) int64 labels (one-hot, never built).
    Returns ``c`` and coefficients ``A, Bp, Dp`` with
    ``dc/dp = A * q - Bp * p`` and ``<dc/dp, p> = Dp`` (nonzero only under the EPS clamp).
    """
    pp = (p * p).sum(dim=-1)
    if target.dtype == torch.int64:
        dot = p.gather(1, target[:, None]).squeeze(1)
        qn = torch.ones_like(pp)
    else:
        q = target.to(p.dtype)
        dot = (p * q).sum(dim=-1)
        qn = q.norm(dim=-1)
    den = pp.sqrt() * qn
    clamped = den <= EPS
    A = 1.0 / den.clamp_min(EPS)
    c = dot * A
    Bp = torch.where(clamped, torch.zeros_like(c), c / pp)
    Dp = torch.where(clamped, c, torch.zeros_like(c))
    return c, A, Bp, Dp


def _add_target_term(g, coef, target, A, Bp, p):
    """g += coef * dc/dp, without building a one-hot for label targets."""
    g -= (coef * Bp)[:, None] * p
    if target.dtype == torch.int64:
        g.scatter_add_(1, target[:, None], (coef * A)[:, None])
    else:
        g += (coef * A)[:, None] * target.to(p.dtype)
    return g


def _softmax_grad(p, g, gp):
    """d/dz of a function of p = softmax(z), given g = d/dp and <g, p> = gp."""
    return p * (g - gp[:, None])


def _gather_target(target: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    return target if perm is None else target.index_select(0, perm)


def contrastive_forward(logits, forget_target, retain_target, lam, perm, tau, reduction, with_grad):
    """C_tau on mixed predictions (SPEC 4, L_gen and L_mix) and d C / d logits.

    ``lam`` is 0-d or (B,). Returns ``(loss, grad)``; ``grad`` is empty when
    ``with_grad`` is False.
    """
    acc = compute_dtype(logits.dtype)
    p = torch.softmax(logits.to(acc), dim=-1)
    lam = lam.to(acc).expand(p.shape[0])
    q_r = _gather_target(retain_target, perm)
    c_r, A_r, Bp_r, Dp_r = cosine_parts(p, q_r)
    c_f, A_f, Bp_f, Dp_f = cosine_parts(p, forget_target)
    keep = (1 - lam) * (1 - c_r)
    forget = lam * (1 - c_f)
    n_keep = p.shape[0]
    scale = 1.0 / n_keep if reduction == "mean" else 1.0
    loss = (keep.sum() - n_keep * torch.logsumexp(forget / tau, dim=0)) * scale
    if not with_grad:
        return loss, logits.new_empty(0)
    w = torch.softmax(forget / tau, dim=0)
    alpha = -(1 - lam) * scale  # d C / d c_r
    beta = (n_keep / tau) * w * lam * scale  # d C / d c_f
    g = torch.zeros_like(p)
    _add_target_term(g, alpha, q_r, A_r, Bp_r, p)
    _add_target_term(g, beta, forget_target, A_f, Bp_f, p)
    grad = _softmax_grad(p, g, alpha * Dp_r + beta * Dp_f)
    return loss, grad.to(logits.dtype)


def real_forward(retain_logits, forget_logits, retain_target, forget_target, tau, reduction, with_grad):
    """C_tau on real data (SPEC 4, L_real) and its gradients to both logits."""
    acc = compute_dtype(retain_logits.dtype)
    p_r = torch.softmax(retain_logits.to(acc), dim=-1)
    p_f = torch.softmax(forget_logits.to(acc), dim=-1)
    c_r, A_r, Bp_r, Dp_r = cosine_parts(p_r, retain_target)
    c_f, A_f, Bp_f, Dp_f = cosine_parts(p_f, forget_target)
    n_keep = p_r.shape[0]
    scale = 1.0 / n_keep if reduction == "mean" else 1.0
    forget = 1 - c_f
    loss = ((1 - c_r).sum() - n_keep * torch.logsumexp(forget / tau, dim=0)) * scale
    if not with_grad:
        return loss, retain_logits.new_empty(0), forget_logits.new_empty(0)
    alpha = torch.full_like(c_r, -scale)
    beta = (n_keep / tau) * torch.softmax(forget / tau, dim=0) * scale
    g_r = _add_target_term(torch.zeros_like(p_r), alpha, retain_target, A_r, Bp_r, p_r)
    g_f = _add_target_term(torch.zeros_like(p_f), beta, forget_target, A_f, Bp_f, p_f)
    grad_r = _softmax_grad(p_r, g_r, alpha * Dp_r)
    grad_f = _softmax_grad(p_f, g_f, beta * Dp_f)
    return loss, grad_r.to(retain_logits.dtype), grad_f.to(forget_logits.dtype)


# L_mix + omega * L_real: the reference of the fused loss kernels of the other backends
loss_forward = compose_loss_forward(contrastive_forward, real_forward)


register("torch", Kernels(
    sharpen_forward=sharpen_forward, sharpen_backward=sharpen_backward,
    mixup_forward=mixup_forward, mixup_backward=mixup_backward,
    contrastive_forward=contrastive_forward, real_forward=real_forward,
    loss_forward=loss_forward,
))
