"""Maps a resolved backend name to the module that holds its kernels.

Every backend module offers the same functions as ``fastmix.reference``:
``sharpen_forward``, ``sharpen_backward``, ``mixup_forward``, ``mixup_backward``,
``contrastive_forward`` and ``real_forward``.
"""
from __future__ import annotations

import importlib

_MODULES = {"torch": "fastmix.reference", "triton": "fastmix.kernels", "cuda": "fastmix._cuda_lib"}


def kernels_for(backend: str):
    return importlib.import_module(_MODULES[backend])
