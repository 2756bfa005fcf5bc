"""What only the CUDA C++ kernels (csrc/, the ``cuda`` backend) do, on a GPU: the
device-side index flag. Their accuracy is tested with
the Triton kernels' in tests/test_kernels.py. Skipped, with the reason, where no GPU
or no built library is present; ``bench/gpu_check.sh`` runs them on a lent GPU.
"""
import pytest
import torch
from devices import HAS_CUDA

import fastmix
from fastmix.backends import cuda_backend

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device; none is visible here"),
    pytest.mark.skipif(
        cuda_backend.load_error() is not None, reason=f"the cuda backend cannot run: {cuda_backend.load_error()}"
    ),
]

DEVICE = "cuda"


@pytest.fixture(autouse=True)
def flag_left_clear():
    yield
    if HAS_CUDA:
        cuda_backend.check_index_error()  # a test that left the flag set fails here


# --- index errors: never out of bounds, NaN outputs, IndexError at the check -----------------


def test_bad_label_sets_the_flag():
    logits = torch.randn(4, 3, device=DEVICE)
    labels = torch.tensor([0, 1, 2, 7], device=DEVICE)
    lam = torch.full((), 0.5, device=DEVICE)
    loss, _grad = cuda_backend.contrastive_forward(logits, labels, labels, lam, None, 1.0, "sum", True)
    assert torch.isnan(loss)
    with pytest.raises(IndexError, match="label"):
        cuda_backend.check_index_error()
    cuda_backend.check_index_error()  # cleared
    loss, *_ = cuda_backend.real_forward(logits, logits, labels, labels - 10, 1.0, "sum", True)
    assert torch.isnan(loss)
    with pytest.raises(IndexError, match="label"):
        cuda_backend.check_index_error()


def test_bad_perm_sets_the_flag():
    logits = torch.randn(4, 3, device=DEVICE)
    good = torch.tensor([0, 1, 2, 1], device=DEVICE)
    perm = torch.tensor([0, 1, 9, 2], device=DEVICE)
    lam = torch.rand(4, device=DEVICE)
    loss, _ = cuda_backend.contrastive_forward(logits, good, good, lam, perm, 1.0, "sum", True)
    assert torch.isnan(loss)
    x = torch.randn(4, 2, 3, 3, device=DEVICE)
    out = cuda_backend.mixup_forward(x, x, torch.rand(4, device=DEVICE), torch.tensor([0, 1, -1, 2], device=DEVICE))
    assert torch.isnan(out[2]).all() and torch.isfinite(out[[0, 1, 3]]).all()
    _gf, gr, gw = cuda_backend.mixup_backward(out, x, x, torch.rand(4, device=DEVICE), perm, (True, True, True))
    assert torch.isfinite(gr).all() and torch.isnan(gw[2])
    torch.cuda.synchronize()  # no illegal address
    with pytest.raises(IndexError, match="perm"):
        cuda_backend.check_index_error()


def test_bad_index_raises_under_debug_checks():
    logits = torch.randn(4, 3, device=DEVICE)
    labels = torch.tensor([0, 1, 2, 3], device=DEVICE)
    lam = torch.full((), 0.5, device=DEVICE)
    with fastmix.debug_checks(True):
        with pytest.raises(ValueError, match="forget_target"):
            fastmix.contrastive_loss(logits, labels, labels.clamp_max(2), 0.5, 1.0, backend="cuda")
        with pytest.raises(IndexError, match="contrastive_loss"):
            cuda_backend.contrastive_forward(logits, labels, labels, lam, None, 1.0, "sum", True)


# --- the unlearner's loss as one op ---------------------------------------------------------


@pytest.mark.parametrize("B,C", [(32, 10), (33, 1000), (4, 3000)])  # one block; the grid; block rows
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_forward_matches_the_reference(B, C, dtype):
    from fastmix.backends import torch_backend

    gen = torch.Generator(device=DEVICE).manual_seed(B * C)
    z = (torch.randn(3, B, C, device=DEVICE, generator=gen) * 3).to(dtype)
    q_f = torch.softmax(torch.randn(B, C, device=DEVICE, generator=gen), 1)
    q_r = torch.randint(0, C, (B,), device=DEVICE, generator=gen)
    lam = torch.rand(B, device=DEVICE, generator=gen)
    perm = torch.randperm(B, device=DEVICE, generator=gen)
    args = (z[0], z[2], z[1], q_f, q_r, lam, perm, 10.0, 5.0, 2.0, "mean", True)
    got = cuda_backend.loss_forward(*args)
    ref = torch_backend.loss_forward(*args)
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.float(), b.float(), **tol)


def test_loss_forward_replays_in_a_cuda_graph():
    # no host synchronisation, no allocation in the launcher: capture and replay agree with eager
    z = torch.randn(3, 64, 1000, device=DEVICE)
    q = torch.randint(0, 1000, (64,), device=DEVICE)
    lam = torch.rand(64, device=DEVICE)
    eager = cuda_backend.loss_forward(z[0], z[2], z[1], q, q, lam, None, 1.0, 2.0, 3.0, "sum", True)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        cuda_backend.loss_forward(z[0], z[2], z[1], q, q, lam, None, 1.0, 2.0, 3.0, "sum", True)  # warm-up
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = cuda_backend.loss_forward(z[0], z[2], z[1], q, q, lam, None, 1.0, 2.0, 3.0, "sum", True)
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        for a, b in zip(captured, eager):
            torch.testing.assert_close(a, b)
