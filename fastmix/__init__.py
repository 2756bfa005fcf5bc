"""fastmix: fused kernels and a fast trainer for MixUnlearn (ICLR 2025).

The ops (``sharpen``, ``sample_lambda``, ``mixup``, ``contrastive_loss``,
``real_loss``) and the module ``MixUnlearnLoss`` implement SPEC sections 2 to 4;
``backends()`` says which implementations can run here.
"""
from ._config import debug_checks
from .backends import backends
from .loss import MixUnlearnLoss
from .mixblock import MixBlock
from .ops.contrastive import contrastive_loss, real_loss
from .ops.mixup import mixup
from .ops.sharpen import sharpen
from .sampling import sample_lambda
from .unlearn import MixUnlearn

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
