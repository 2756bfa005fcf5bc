"""Shared test set-up: Triton runs under its interpreter where no GPU is present."""
import os

import torch

# Must be set before triton.jit wraps any kernel, i.e. before fastmix.kernels is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and CI runners are shared; scikit-learn's
    attack pools follow torch's count. Restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
