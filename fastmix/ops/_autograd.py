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

    ``ClosedFormLoss.apply(call, *logits)`` with ``call = (kernel, constants, scalars)``:
    ``kernel(*logits, *constants, *scalars, with_grad)`` returns ``(loss, *grads)`` with
    ``grads[i]`` the unscaled gradient with respect to ``logits[i]``; the constants
    (targets, ``lam``, ``perm``) get no gradient. One bundle instead of one argument per
    tensor: ``Function.apply`` walks every argument on every call.

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
    place meanwhile).
    """

    @staticmethod
    def forward(ctx, call, *logits):
        kernel, constants, scalars = call
        loss, *grads = kernel(*logits, *constants, *scalars, True)
        ctx.call, ctx.grads = call, grads
        ctx.save_for_backward(*logits, *constants)
        # grads stay materialised: the one output's gradient is defined whenever a backward runs
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grads = ctx.grads
        if grads is None:  # a later backward through a retained graph: the buffers were handed out
            kernel, _, scalars = ctx.call
            _, *grads = kernel(*ctx.saved_tensors, *scalars, True)
        ctx.grads = None
        needs = ctx.needs_input_grad
        if all(needs[1:]):  # the common case: every buffer, scaled (or not) in place, as it is
            _scale.scale_(grads, grad_loss)
            return (None, *grads)
        grads = [g if need else None for g, need in zip(grads, needs[1:])]
        _scale.scale_([g for g in grads if g is not None], grad_loss)
        return (None, *grads)


def c_apply(function: type[torch.autograd.Function]):
    """``function.apply`` without its Python wrapper, which only matters under functorch
    transforms (vmap, grad: it unwraps their dead wrappers) and walks every argument on
    every call to find out. Callers test :func:`functorch_active` first."""
    return super(torch.autograd.Function, function).apply


functorch_active = torch._C._are_functorch_transforms_active
_apply = c_apply(ClosedFormLoss)


def closed_form_loss(kernel, logits: tuple, constants: tuple, scalars: tuple) -> torch.Tensor:
    """The loss of ``kernel`` (see :class:`ClosedFormLoss`), differentiable where needed."""
    if torch.is_grad_enabled():
        for t in logits:  # a loop, not any(): a generator costs a microsecond per call
            if t is not None and t.requires_grad:
                if functorch_active():
                    return ClosedFormLoss.apply((kernel, constants, scalars), *logits)
                return _apply((kernel, constants, scalars), *logits)
    return kernel(*logits, *constants, *scalars, False)[0]
