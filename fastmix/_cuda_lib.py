"""Loader for the compiled CUDA kernels (csrc/). Filled in by the CUDA issue."""
from __future__ import annotations


def load_error() -> str | None:
    """None when the compiled CUDA library is loaded, else why it is not."""
    return "fastmix was installed without its CUDA kernels (csrc/ is not built yet)"
