"""Triton kernels of fastmix, installed as ``fastmix.kernels``.

Each module holds one op's kernels and the functions that launch them, with
the same signatures as ``fastmix.backends.torch_backend``.
"""
from .contrastive import contrastive_forward, loss_forward, real_forward
from .mixup import mixup_backward, mixup_forward
from .sharpen import sharpen_backward, sharpen_forward

__all__ = [
    "contrastive_forward", "loss_forward", "mixup_backward", "mixup_forward", "real_forward", "sharpen_backward",
    "sharpen_forward",
]
