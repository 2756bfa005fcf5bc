"""The contrastive family C_tau (SPEC 4): on mixed predictions and on real data.

Each op's forward writes the loss and its gradient with respect to the logits
in one pass over the batch; the backward only scales that saved gradient by
``grad_output`` (in place, skipped when it is 1: see ``_autograd.ClosedFormLoss``).
Targets and ``lam`` are constants to these ops (they come from the frozen model and
from sampling): no gradient flows to them.

Eager calls go through ``_autograd``'s fast path; under torch.compile the calls go
through the ops registered here, which ``opcheck`` checks.
"""
from __future__ import annotations

import torch

from fastmix.backends import kernels_for, resolve_backend
from fastmix.backends.torch_backend import compute_dtype

from . import _checks
from ._autograd import closed_form_loss, eager, wants_grad


@torch.library.custom_op("fastmix::contrastive_loss", mutates_args=())
def _contrastive(
    logits: torch.Tensor,
    forget_target: torch.Tensor,
    retain_target: torch.Tensor,
    lam: torch.Tensor,
    perm: torch.Tensor | None,
    tau: float,
    reduction: str,
    with_grad: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    return kernels_for(backend).contrastive_forward(
        logits, forget_target, retain_target, lam, perm, tau, reduction, with_grad
    )


@_contrastive.register_fake
def _(logits, forget_target, retain_target, lam, perm, tau, reduction, with_grad, backend):
    loss = logits.new_empty((), dtype=compute_dtype(logits.dtype))
    grad = logits.new_empty(logits.shape) if with_grad else logits.new_empty(0)
    return loss, grad


def _contrastive_setup(ctx, inputs, output):
    ctx.set_materialize_grads(False)  # no zero tensor for the gradient output nobody differentiates
    ctx.save_for_backward(output[1])


def _saved_gradient(grad: torch.Tensor) -> torch.Tensor:
    if grad.numel() == 0:
        raise RuntimeError("the loss op ran with with_grad=False, so it saved no gradient to go backward through")
    return grad


def _contrastive_backward(ctx, grad_loss, _grad_of_grad):
    if grad_loss is None:
        return (None,) * 9
    (grad,) = ctx.saved_tensors
    return _saved_gradient(grad) * grad_loss, None, None, None, None, None, None, None, None


_contrastive.register_autograd(_contrastive_backward, setup_context=_contrastive_setup)


@torch.library.custom_op("fastmix::real_loss", mutates_args=())
def _real(
    retain_logits: torch.Tensor,
    forget_logits: torch.Tensor,
    retain_target: torch.Tensor,
    forget_target: torch.Tensor,
    tau: float,
    reduction: str,
    with_grad: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return kernels_for(backend).real_forward(
        retain_logits, forget_logits, retain_target, forget_target, tau, reduction, with_grad
    )


@_real.register_fake
def _(retain_logits, forget_logits, retain_target, forget_target, tau, reduction, with_grad, backend):
    loss = retain_logits.new_empty((), dtype=compute_dtype(retain_logits.dtype))
    if not with_grad:
        return loss, retain_logits.new_empty(0), retain_logits.new_empty(0)
    return loss, retain_logits.new_empty(retain_logits.shape), forget_logits.new_empty(forget_logits.shape)


def _real_setup(ctx, inputs, output):
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(output[1], output[2])


def _real_backward(ctx, grad_loss, _g1, _g2):
    if grad_loss is None:
        return (None,) * 8
    grad_r, grad_f = ctx.saved_tensors
    return _saved_gradient(grad_r) * grad_loss, _saved_gradient(grad_f) * grad_loss, None, None, None, None, None, None


_real.register_autograd(_real_backward, setup_context=_real_setup)


def check_target_kinds(**targets: torch.Tensor) -> None:
    kinds = {name: ("labels" if t.dtype == torch.int64 else "probabilities") for name, t in targets.items()}
    if len(set(kinds.values())) > 1:
        listing = ", ".join(f"{n} as {k}" for n, k in kinds.items())
        raise TypeError(f"targets must all be int64 labels or all be probabilities, got {listing}")


def contrastive_loss(
    logits: torch.Tensor,
    forget_target: torch.Tensor,
    retain_target: torch.Tensor,
    lam,
    tau: float,
    *,
    perm: torch.Tensor | None = None,
    reduction: str = "sum",
    backend: str | None = None,
) -> torch.Tensor:
    """``C_tau`` on the predictions for mixed samples (``L_gen``, ``L_mix`` of SPEC 4).

    ``C = sum_i (1 - lam_i) d(p_i, q_r[perm[i]]) - B * log sum_i exp(lam_i d(p_i, q_f[i]) / tau)``
    with ``p = softmax(logits)`` and ``d = 1 - cos``. The unlearner minimises ``C``;
    the generator minimises ``-C``. ``reduction="mean"`` divides by ``B``.

    Args:
        logits: ``(B, C)`` float16, bfloat16 or float32 (float64 with the ``torch``
            backend); any strides.
        forget_target: ``(B, C)`` probabilities (label-agnostic) or ``(B,)`` int64 labels
            (label-aware, used as one-hot without building it).
        retain_target: the same kind, ``(N, ...)``; row ``perm[i]`` (or ``i`` without
            ``perm``) is the retain target of mixed sample ``i``.
        lam: the weight of the forget sample in each mix: a float, 0-d or ``(B,)`` tensor.
        tau: the temperature of the forget terms, finite and positive.
        perm: ``(B,)`` int64 indices into ``retain_target``, repeats allowed.

    Returns the loss as a 0-d float32 tensor (float64 for float64 logits).
    Differentiable with respect to ``logits`` only. A NaN in the logits gives a NaN loss.

    Checks: shapes, dtypes, devices and scalars always; label range, ``perm`` range,
    ``lam`` in [0, 1] and finite non-negative probabilities on CPU tensors always,
    on GPU tensors only under ``fastmix.debug_checks(True)``.
    """
    _checks.logits("logits", logits)
    B, C = logits.shape
    device = _checks.same_device(
        logits=logits, forget_target=forget_target, retain_target=retain_target, perm=perm
    )
    backend = resolve_backend(backend, device, logits.dtype)
    kernels = kernels_for(backend)
    values = _checks.values_wanted(logits, backend_checks=kernels.checks_values)
    _checks.target("forget_target", forget_target, B, C, values)
    _checks.target("retain_target", retain_target, None if perm is not None else B, C, values)
    check_target_kinds(forget_target=forget_target, retain_target=retain_target)
    _checks.perm("perm", perm, B, retain_target.shape[0], values)
    lam = _checks.lam("lam", lam, B, device, values, like=logits.dtype)
    tau = _checks.positive_finite("tau", tau)
    reduction = _checks.reduction_arg(reduction)
    if eager():
        return closed_form_loss(kernels.contrastive_forward, (logits,),
                                (forget_target, retain_target, lam, perm), (tau, reduction))
    loss, _ = _contrastive(
        logits, forget_target, retain_target, lam, perm, tau, reduction, wants_grad(logits), backend
    )
    return loss


def real_loss(
    retain_logits: torch.Tensor,
    forget_logits: torch.Tensor,
    retain_target: torch.Tensor,
    forget_target: torch.Tensor,
    tau: float,
    *,
    reduction: str = "sum",
    backend: str | None = None,
) -> torch.Tensor:
    """``C_tau`` on real data (``L_real`` of SPEC 4).

    ``C = sum_j d(p_r,j, q_r,j) - |B_r| * log sum_i exp(d(p_f,i, q_f,i) / tau)``:
    retain rows give only keep terms, forget rows only forget terms. The two
    batches may have different sizes but share the class count and dtype.
    ``reduction="mean"`` divides by ``|B_r|``. Targets are probabilities or int64
    labels as in :func:`contrastive_loss`, one row per logit row.

    Returns a 0-d float32 loss (float64 for float64 logits), differentiable with
    respect to both logits. Checks as in :func:`contrastive_loss`.
    """
    _checks.logits("retain_logits", retain_logits)
    _checks.logits("forget_logits", forget_logits)
    _checks.same_dtype(retain_logits=retain_logits, forget_logits=forget_logits)
    if retain_logits.shape[1] != forget_logits.shape[1]:
        raise ValueError(
            f"retain_logits and forget_logits must have the same number of classes, got "
            f"{retain_logits.shape[1]} and {forget_logits.shape[1]}"
        )
    C = retain_logits.shape[1]
    device = _checks.same_device(
        retain_logits=retain_logits,
        forget_logits=forget_logits,
        retain_target=retain_target,
        forget_target=forget_target,
    )
    _checks.target("retain_target", retain_target, retain_logits.shape[0], C)
    _checks.target("forget_target", forget_target, forget_logits.shape[0], C)
    check_target_kinds(retain_target=retain_target, forget_target=forget_target)
    tau = _checks.positive_finite("tau", tau)
    reduction = _checks.reduction_arg(reduction)
    backend = resolve_backend(backend, device, retain_logits.dtype)
    if eager():
        return closed_form_loss(kernels_for(backend).real_forward, (retain_logits, forget_logits),
                                (retain_target, forget_target), (tau, reduction))
    loss, _, _ = _real(
        retain_logits,
        forget_logits,
        retain_target,
        forget_target,
        tau,
        reduction,
        wants_grad(retain_logits, forget_logits),
        backend,
    )
    return loss
