"""The eager fast path of the ops: ``torch.autograd.Function`` s that call a backend's
kernels directly, beside the ops registered with ``torch.library`` (which
``torch.compile`` traces and ``opcheck`` checks). A call through a registered custom
op pays its dispatch on every call, forward and backward; these pay one
``Function.apply``. :func:`eager` says which path a call takes.
"""
from __future__ import annotations

import torch

from . import _scale


def eager() -> bool:
    """True outside torch.compile's tracing: the call may take the fast path."""
    return not torch.compiler.is_compiling()


def wants_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class ClosedFormLoss(torch.autograd.Function):
    """A loss whose kernel writes the value and d loss / d inputs in one forward pass.

    ``kernel(*tensors, with_grad)`` returns ``(loss, *grads)`` with ``grads[i]`` the
    unscaled gradient with respect to ``tensors[i]`` (``i < n_grads``; the other
    tensors are constants: targets, ``lam``, ``perm``).

    The backward must return ``grads * grad_output``. A separate multiply would read
    and write every gradient once more, so the backward scales the saved buffers in
    place, skipping the pass when ``grad_output == 1`` (``loss.backward()``), and hands
    the buffers themselves to autograd: no copy, no extra pass in the common case.
    On CPU tensors the test reads the 0-d ``grad_output`` (no synchronisation); on a GPU
    one kernel for all the buffers reads it and exits at once when it is 1
    (``_scale.scale_``), so nothing waits for the device. Once handed out a buffer belongs to the caller (it may be
    what ``torch.autograd.grad`` returns), so it is never written again: a second
    backward through a retained graph (``retain_graph=True``) recomputes the gradients
    from the saved inputs instead (the version counter catches inputs modified in
    place meanwhile). Gradients of unused outputs are never materialised.
    """

    @staticmethod
    def forward(ctx, kernel, n_grads, *tensors):
        loss, *grads = kernel(*tensors, True)
        ctx.kernel, ctx.n_grads, ctx.grads = kernel, n_grads, grads
        ctx.save_for_backward(*tensors)
        ctx.set_materialize_grads(False)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        n = ctx.n_grads
        rest = (None,) * (len(ctx.needs_input_grad) - 2 - n)
        if grad_loss is None:
            return (None, None) + (None,) * n + rest
        grads = ctx.grads
        if grads is None:  # a later backward through a retained graph: the buffers were handed out
            _, *grads = ctx.kernel(*ctx.saved_tensors, True)
        ctx.grads = None
        needs = ctx.needs_input_grad[2:2 + n]
        _scale.scale_([g for g, need in zip(grads, needs) if need], grad_loss)
        out = tuple(g if need else None for g, need in zip(grads, needs))
        return (None, None) + out + rest


def closed_form_loss(kernel, n_grads: int, *tensors) -> torch.Tensor:
    """The loss of ``kernel`` (see :class:`ClosedFormLoss`), differentiable where needed."""
    if wants_grad(*tensors[:n_grads]):
        return ClosedFormLoss.apply(kernel, n_grads, *tensors)
    return kernel(*tensors, False)[0]
