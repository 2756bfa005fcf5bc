"""Shared test set-up: Triton runs under its interpreter where no GPU is present."""
import os

import torch

# Must be set before triton.jit wraps any kernel, i.e. before fastmix.kernels is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device; none is visible here")
