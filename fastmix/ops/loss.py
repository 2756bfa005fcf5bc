"""MixUnlearnLoss: the unlearner's and the generator's objectives as one module.

The unlearner's objective ``L_mix + omega * L_real`` is one op, ``fastmix::mixunlearn_loss``,
over the backends' ``loss_forward`` kernel: one forward writes the loss and the gradients
to all three logits (a backend without a fused kernel composes its two loss kernels).

Backward: ``d loss / d logits`` is already in the saved gradient buffers, so the backward
only has to scale them by ``grad_output``. It does not run a separate ``grad * grad_output``
pass (a full read and write of every gradient): eager calls scale the buffers in place,
and skip even that when ``grad_output == 1`` (``loss.backward()``), deciding on the device
without a host sync (a kernel that exits at once on a GPU; a free read of a 0-d tensor on
the CPU), then hand the buffers to autograd. A buffer once handed out is never written
again: a second backward through a retained graph recomputes the gradients from the saved
inputs (see ``_autograd.ClosedFormLoss``). Under torch.compile the registered op's backward
is ``grad * grad_output``, which the compiler fuses into the gradients' consumers.
"""
from __future__ import annotations

import torch
from torch import nn

from fastmix.backends import kernels_for, resolve_backend
from fastmix.backends.torch_backend import compute_dtype

from . import _checks
from ._autograd import closed_form_loss, wants_grad
from .contrastive import check_target_kinds, contrastive_loss
from .sharpen import sharpen


@torch.library.custom_op("fastmix::mixunlearn_loss", mutates_args=())
def _mixunlearn(
    mix_logits: torch.Tensor,
    forget_logits: torch.Tensor | None,
    retain_logits: torch.Tensor | None,
    forget_target: torch.Tensor,
    retain_target: torch.Tensor,
    lam: torch.Tensor,
    perm: torch.Tensor | None,
    tau_mix: float,
    tau_real: float,
    omega: float,
    reduction: str,
    with_grad: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return kernels_for(backend).loss_forward(
        mix_logits, forget_logits, retain_logits, forget_target, retain_target, lam, perm,
        tau_mix, tau_real, omega, reduction, with_grad,
    )


@_mixunlearn.register_fake
def _(mix_logits, forget_logits, retain_logits, forget_target, retain_target, lam, perm,
      tau_mix, tau_real, omega, reduction, with_grad, backend):
    loss = mix_logits.new_empty((), dtype=compute_dtype(mix_logits.dtype))
    if not with_grad:
        return loss, mix_logits.new_empty(0), mix_logits.new_empty(0), mix_logits.new_empty(0)
    g_mix = mix_logits.new_empty(mix_logits.shape)
    if omega == 0:
        return loss, g_mix, mix_logits.new_empty(0), mix_logits.new_empty(0)
    return loss, g_mix, forget_logits.new_empty(forget_logits.shape), retain_logits.new_empty(retain_logits.shape)


def _mixunlearn_setup(ctx, inputs, output):
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*output[1:])


def _mixunlearn_backward(ctx, grad_loss, _g_mix, _g_f, _g_r):
    nothing = (None,) * 10
    if grad_loss is None:
        return (None, None, None) + nothing
    grads = ctx.saved_tensors
    if grads[0].numel() == 0:
        raise RuntimeError("the loss op ran with with_grad=False, so it saved no gradient to go backward through")
    out = tuple(g * grad_loss if need else None for g, need in zip(grads, ctx.needs_input_grad[:3]))
    return out + nothing


_mixunlearn.register_autograd(_mixunlearn_backward, setup_context=_mixunlearn_setup)


def mixunlearn_loss(
    mix_logits: torch.Tensor,
    forget_logits: torch.Tensor | None,
    retain_logits: torch.Tensor | None,
    forget_target: torch.Tensor,
    retain_target: torch.Tensor,
    lam,
    tau_mix: float,
    tau_real: float,
    omega: float,
    *,
    perm: torch.Tensor | None = None,
    reduction: str = "sum",
    backend: str | None = None,
) -> torch.Tensor:
    """``L_mix + omega * L_real`` (SPEC 4 and 6) in one op: ``C_tau_mix`` on the mixed
    predictions (as :func:`fastmix.contrastive_loss`) plus ``omega`` times ``C_tau_real`` on
    the real retain and forget batches (as :func:`fastmix.real_loss`).

    ``forget_target`` is the target of both the mixes' forget terms and the forget
    batch; ``retain_target`` row ``perm[i]`` (``i`` without ``perm``) is mix ``i``'s retain
    target, and row ``j`` that of ``retain_logits[j]``. All logits share the class count;
    ``forget_logits`` and ``retain_logits`` share a dtype. With ``omega == 0`` the real-data
    term is not computed and those two may be None. Returns a 0-d float32 loss (float64
    for float64 logits with the ``torch`` backend), differentiable with respect to the
    three logits. Checks as in :func:`fastmix.contrastive_loss`; inside
    ``fastmix.ops.debug.trusted_inputs()`` the value checks are skipped.

    Backward: the forward already wrote ``d loss / d logits``; the backward scales those
    buffers in place by ``grad_output`` (no pass at all when it is 1, decided without a
    host sync), hands them to autograd and never writes them again; a second backward
    through a retained graph recomputes them. See this module's docstring.
    """
    tau_mix = _checks.positive_finite("tau_mix", tau_mix)
    tau_real = _checks.positive_finite("tau_real", tau_real)
    omega = _checks.non_negative_finite("omega", omega)
    reduction = _checks.reduction_arg(reduction)
    return _loss(mix_logits, forget_logits, retain_logits, forget_target, retain_target, lam, perm,
                 tau_mix, tau_real, omega, reduction, backend)


# metadata of the arguments -> (device, dtype for the backend) of calls that passed the checks
_PASSED = _checks.Passed()


def _loss(mix, forget, retain, q_f, q_r, lam, perm, tau_mix, tau_real, omega, reduction, backend):
    """The checks of the tensors and the call; the scalars are checked already.

    Runs on every training step, so each check is a plain test of metadata read once; the
    ``_checks`` helpers, which word the errors, run only when a test fails. Eager calls
    with the metadata of a call that passed skip the metadata checks (``_PASSED``).
    """
    compiling = torch.compiler.is_compiling()
    passed = key = None
    if not compiling:
        try:  # _checks.meta of each tensor, written out flat: a call per tensor costs 1.5 us more
            key = (type(mix), mix.dtype, mix.shape, mix.device, type(q_f), q_f.dtype, q_f.shape, q_f.device,
                   type(q_r), q_r.dtype, q_r.shape, q_r.device, type(lam), lam.dtype, lam.shape, lam.device,
                   None if perm is None else (type(perm), perm.dtype, perm.shape, perm.device),
                   None if omega == 0 else (type(forget), forget.dtype, forget.shape, forget.device,
                                            type(retain), retain.dtype, retain.shape, retain.device))
            passed = _PASSED.get(key)
        except AttributeError:  # not a tensor: the checks say which
            pass
    if passed is None:
        device, wide = _check_logits(mix, forget, retain, q_f, q_r, perm, omega)
    else:
        device, wide = passed
    if omega == 0:
        forget = retain = None
    backend = resolve_backend(backend, device, wide)
    kernels = kernels_for(backend)
    values = _checks.values_wanted(mix, backend_checks=kernels.checks_values)
    if passed is None or values:
        B, C = mix.shape
        _checks.target("forget_target", q_f, B, C, values)
        n_retain = retain.shape[0] if retain is not None else (None if perm is not None else B)
        _checks.target("retain_target", q_r, n_retain, C, values)
        if (q_f.dtype == torch.int64) != (q_r.dtype == torch.int64):
            check_target_kinds(forget_target=q_f, retain_target=q_r)
        _checks.perm("perm", perm, B, q_r.shape[0], values)
        if perm is None and q_r.shape[0] != B:
            raise ValueError(f"without perm, retain_target must have B={B} rows like mix_logits, got {q_r.shape[0]}")
        cacheable = key is not None and passed is None  # a float lam is no key: checked, made a tensor per call
        lam = _checks.lam("lam", lam, B, device, values, like=mix.dtype)
        if cacheable:
            _PASSED.add(key, (device, wide))
    if not compiling:
        return closed_form_loss(kernels.loss_forward, (mix, forget, retain), (q_f, q_r, lam, perm),
                                (tau_mix, tau_real, omega, reduction))
    with_grad = wants_grad(mix, forget, retain)
    return _mixunlearn(mix, forget, retain, q_f, q_r, lam, perm, tau_mix, tau_real, omega, reduction, with_grad,
                       backend)[0]


def _check_logits(mix, forget, retain, q_f, q_r, perm, omega) -> tuple:
    """The checks of the three logits and of every tensor's device; returns the device and
    the dtype that chooses the backend."""
    if not _checks.is_logits(mix):
        _checks.logits("mix_logits", mix)
    B, C = mix.shape
    device = mix.device
    if omega == 0:
        if not _checks.on_device(device, q_f, q_r, perm):
            _checks.same_device(mix_logits=mix, forget_target=q_f, retain_target=q_r, perm=perm)
        return device, mix.dtype
    if not _checks.is_logits(forget):
        _checks.logits("forget_logits", forget)
    if not _checks.is_logits(retain):
        _checks.logits("retain_logits", retain)
    wide = forget.dtype
    if retain.dtype != wide:
        _checks.same_dtype(retain_logits=retain, forget_logits=forget)
    for name, t in (("forget_logits", forget), ("retain_logits", retain)):
        if t.shape[1] != C:
            raise ValueError(f"{name} must have C={C} classes like mix_logits, got shape {tuple(t.shape)}")
    if forget.shape[0] != B:
        raise ValueError(f"forget_logits must have B={B} rows like mix_logits, got {forget.shape[0]}")
    if not _checks.on_device(device, forget, retain, q_f, q_r, perm):
        _checks.same_device(
            mix_logits=mix, forget_logits=forget, retain_logits=retain, forget_target=q_f, retain_target=q_r,
            perm=perm,
        )
    # float64 anywhere goes to the reference: the kernel backends compute in float32
    return device, torch.float64 if torch.float64 in (mix.dtype, wide) else mix.dtype


class MixUnlearnLoss(nn.Module):
    """The objectives of MixUnlearn (SPEC 4 and 6).

    ``forward`` gives the unlearner's loss ``L_mix + omega * L_real`` with
    ``L_mix = C_tau_mix`` on the mixed samples and ``L_real = C_tau_real`` on the
    real forget and retain batches. ``generator_loss`` gives the MixBlock's loss
    ``-C_tau_gen`` on the mixed samples. ``targets`` turns teacher logits into the
    sharpened soft targets of the label-agnostic setting.

    With ``omega == 0`` the real-data term is not computed at all (the ablation
    without ``L_real``), so ``forget_logits`` and ``retain_logits`` may be None.
    ``backend`` is passed to every op (None: ``FASTMIX_BACKEND`` or the fastest).
    """

    def __init__(
        self,
        tau_gen: float,
        tau_mix: float,
        tau_real: float,
        omega: float,
        sharpen_T: float = 0.3,
        reduction: str = "sum",
        *,
        backend: str | None = None,
    ):
        super().__init__()
        self.tau_gen = _checks.positive_finite("tau_gen", tau_gen)
        self.tau_mix = _checks.positive_finite("tau_mix", tau_mix)
        self.tau_real = _checks.positive_finite("tau_real", tau_real)
        self.omega = _checks.non_negative_finite("omega", omega)
        self.sharpen_T = _checks.positive_finite("sharpen_T", sharpen_T)
        self.reduction = _checks.reduction_arg(reduction)
        self.backend = backend

    def forward(self, mix_logits, forget_logits, retain_logits, forget_target, retain_target, lam, perm=None):
        """``L_mix + omega * L_real`` in one op (:func:`mixunlearn_loss`); the mixes pair forget
        row i with retain row ``perm[i]``."""
        return _loss(mix_logits, forget_logits, retain_logits, forget_target, retain_target, lam, perm,
                     self.tau_mix, self.tau_real, self.omega, self.reduction, self.backend)

    def generator_loss(self, mix_logits, forget_target, retain_target, lam, perm=None):
        """``-C_tau_gen`` on the mixed samples: the MixBlock minimises it."""
        return -contrastive_loss(
            mix_logits,
            forget_target,
            retain_target,
            lam,
            self.tau_gen,
            perm=perm,
            reduction=self.reduction,
            backend=self.backend,
        )

    @torch.no_grad()
    def targets(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Sharpened soft targets ``softmax(teacher_logits / sharpen_T)`` (no gradient)."""
        return sharpen(teacher_logits, self.sharpen_T, backend=self.backend)

    def extra_repr(self) -> str:
        return (
            f"tau_gen={self.tau_gen}, tau_mix={self.tau_mix}, tau_real={self.tau_real}, "
            f"omega={self.omega}, sharpen_T={self.sharpen_T}, reduction={self.reduction!r}"
        )
