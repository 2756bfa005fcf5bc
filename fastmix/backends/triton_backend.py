"""The ``triton`` backend: the Triton kernels of ``kernels/`` (installed as ``fastmix.kernels``)."""
from __future__ import annotations

from fastmix.kernels import (
    contrastive_forward,
    loss_forward,
    mixup_backward,
    mixup_forward,
    real_forward,
    sharpen_backward,
    sharpen_forward,
)

from . import Kernels, register

register("triton", Kernels(
    sharpen_forward=sharpen_forward, sharpen_backward=sharpen_backward,
    mixup_forward=mixup_forward, mixup_backward=mixup_backward,
    contrastive_forward=contrastive_forward, real_forward=real_forward,
    loss_forward=loss_forward,
))
