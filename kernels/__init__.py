"""Triton kernels of fastmix, installed as ``fastmix.kernels``.

Each module holds one op's kernels and the functions that launch them, with
the same signatures as ``fastmix.backends.torch_backend``.
"""
from .sharpen import sharpen_backward, sharpen_forward

__all__ = ["sharpen_forward", "sharpen_backward"]
from .mixup import mixup_backward, mixup_forward  # noqa: E402

__all__ += ["mixup_forward", "mixup_backward"]
from .contrastive import contrastive_forward, loss_forward, real_forward  # noqa: E402

__all__ += ["contrastive_forward", "real_forward", "loss_forward"]
