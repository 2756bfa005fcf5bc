"""fastmix: fused kernels and a fast trainer for MixUnlearn (ICLR 2025).

The ops (``sharpen``, ``sample_lambda``, ``mixup``, ``contrastive_loss``,
``real_loss``) and the module ``MixUnlearnLoss`` implement SPEC sections 2 to 4;
``backends()`` says which implementations can run here.
"""
from fastmix.ops.debug import debug_checks
from fastmix.backends import backends
from fastmix.ops.loss import MixUnlearnLoss
from fastmix.mixunlearn.mixblock import MixBlock
from fastmix.ops.contrastive import contrastive_loss, real_loss
from fastmix.ops.mixup import mixup
from fastmix.ops.sharpen import sharpen
from fastmix.ops.sampling import sample_lambda
from fastmix.mixunlearn.method import MixUnlearn

__version__ = "0.1.0"

__all__ = [
    "MixBlock",
    "MixUnlearn",
    "MixUnlearnLoss",
    "backends",
    "contrastive_loss",
    "debug_checks",
    "mixup",
    "real_loss",
    "sample_lambda",
    "sharpen",
]
