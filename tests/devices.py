"""Which devices the tests can use (a module of its own: ``from conftest import`` is
ambiguous once a test folder has a conftest.py of its own)."""
import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device; none is visible here")
