"""Shared test set-up: Triton runs under its interpreter where no GPU is present."""
import contextlib
import os

import torch

# Must be set before triton.jit wraps any kernel, i.e. before fastmix.kernels is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@contextlib.contextmanager
def _threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and CI runners are shared; scikit-learn's
    attack pools follow torch's count. Restored after the module."""
    with _threads(1):
        yield


@pytest.fixture
def torch_threads():
    """``with torch_threads(n):`` runs a block on n torch threads, then restores the count."""
    return _threads
