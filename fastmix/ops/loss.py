"""MixUnlearnLoss: the unlearner's and the generator's objectives as one module."""
from __future__ import annotations

import torch
from torch import nn

from . import _checks
from .contrastive import contrastive_loss, real_loss
from .sharpen import sharpen


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
        if isinstance(omega, bool) or not isinstance(omega, (int, float)) or not (omega >= 0 and omega < float("inf")):
            raise ValueError(f"omega must be a finite float >= 0, got {omega!r}")
        self.omega = float(omega)
        self.sharpen_T = _checks.positive_finite("sharpen_T", sharpen_T)
        self.reduction = _checks.reduction_arg(reduction)
        self.backend = backend

    def forward(self, mix_logits, forget_logits, retain_logits, forget_target, retain_target, lam, perm=None):
        """``L_mix + omega * L_real``; the mixes pair forget row i with retain row ``perm[i]``."""
        loss = contrastive_loss(
            mix_logits,
            forget_target,
            retain_target,
            lam,
            self.tau_mix,
            perm=perm,
            reduction=self.reduction,
            backend=self.backend,
        )
        if self.omega == 0:
            return loss
        l_real = real_loss(
            retain_logits,
            forget_logits,
            retain_target,
            forget_target,
            self.tau_real,
            reduction=self.reduction,
            backend=self.backend,
        )
        return loss + self.omega * l_real

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
