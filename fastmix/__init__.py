"""fastmix: fused kernels and a fast trainer for MixUnlearn (ICLR 2025).

The ops (``sharpen``, ``sample_lambda``, ``mixup``, ``contrastive_loss``,
``real_loss``) and the module ``MixUnlearnLoss`` implement SPEC sections 2 to 4;
``backends()`` says which implementations can run here.

The layers, each a subpackage that imports only from those above it:

* ``ops``: the public ops, declared once with ``torch.library``, their checks and
  ``MixUnlearnLoss``;
* ``backends``: the kernels of each op (``torch``, ``triton``, ``cuda``, ``cpu``), each
  registered by its own module;
* ``mixunlearn``: the method (:class:`MixUnlearn`), its settings, steps and loops;
* ``harness``: data, splits, the original and retrained models, the methods
  registry, evaluation and the report;
* ``cli``: ``fastmix info``, ``fastmix train``, ``fastmix unlearn``.

Glossary (SPEC's words first):

* **f_D**, the *original* model, frozen (``FrozenOriginal``); **f_U**, the
  *unlearner*, a copy of it that is trained; **G**, the generator, i.e. the
  *MixBlock*; **retrain**, the model trained without D_f, the yardstick.
* **D_f**, **D_r**: the forget and retain sets; **B** the batch size; a *row* is
  one sample's logits.
* **q**, a *target*: int64 labels (label-aware) or f_D's sharpened outputs
  (label-agnostic); **lam** (λ) the mixing ratio; **perm** (π) the pairing.
* The *teacher cache*: f_D's outputs per sample, computed once.
* An *image folder* (``--dataset imagefolder``): image files in one sub-folder per
  class; a *checkpoint* (``--checkpoint``): the weights a model starts from; a
  transformer's *prefix tokens*: its class and register tokens, which the MixBlock's
  feature map leaves out (``num_prefix_tokens``).
* The *fast step* and the *paper step* (``step="paper"``): how the trainer runs an
  iteration; the paper step is the eager code the benchmarks compare against.
* The *torch backend*: fastmix's closed-form PyTorch implementation of the ops;
  *eager* (``fastmix.ops.eager``): the plain-torch code a user would write, autograd
  and all; *spec64* (tests): the float64 statement of SPEC that both are checked against.
"""
from fastmix.backends import backends
from fastmix.mixunlearn.method import MixUnlearn
from fastmix.mixunlearn.mixblock import MixBlock
from fastmix.ops.contrastive import contrastive_loss, real_loss
from fastmix.ops.debug import debug_checks
from fastmix.ops.loss import MixUnlearnLoss
from fastmix.ops.mixup import mixup
from fastmix.ops.sampling import sample_lambda
from fastmix.ops.sharpen import sharpen

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
