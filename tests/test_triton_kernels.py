"""Each Triton kernel against the PyTorch reference and the float64 spec.

On a CPU machine these run under TRITON_INTERPRET=1 (set in conftest.py) in
float32; the float16 and bfloat16 cases run where a GPU is present.
"""
import pytest
import torch

import fastmix
import spec64
from conftest import HAS_CUDA, needs_gpu
from tolerance import assert_as_accurate

pytestmark = pytest.mark.usefixtures("poisoned_outputs")

DEVICE = "cuda" if HAS_CUDA else "cpu"
DTYPES = [
    torch.float32,
    pytest.param(torch.float16, marks=needs_gpu),
    pytest.param(torch.bfloat16, marks=needs_gpu),
]
BATCHES = [1, 3, 32, 257]
CLASSES = [1, 2, 10, 100, 1000, 1001]


def _gen(*seed):
    return torch.Generator().manual_seed(hash(seed) % 2**31)


def _targets(kind, n, C, gen):
    if kind == "labels":
        return torch.randint(0, C, (n,), generator=gen).to(DEVICE)
    return torch.softmax(torch.randn(n, C, generator=gen) * 2, dim=1).to(DEVICE)


def _noncontiguous(t):
    """The same values, every other column of a wider tensor."""
    wide = torch.empty(t.shape[0], 2 * t.shape[1], dtype=t.dtype, device=t.device)
    wide[:, ::2] = t
    return wide[:, ::2]


def _run(fn, logits, backend):
    leaves = [z.detach().clone().requires_grad_() for z in logits]
    value = fn(*leaves, backend=backend)
    value.backward()
    return value.detach(), [z.grad for z in leaves]


def _compare(fn, logits, exact_fn, dtype, what):
    """fastmix's triton backend and the torch reference, both against float64."""
    value_t, grads_t = _run(fn, logits, "triton")
    value_r, grads_r = _run(fn, logits, "torch")
    exact, exact_grads = spec64.with_grads(exact_fn, *logits)
    assert value_t.dtype == value_r.dtype
    assert_as_accurate(value_t, value_r, exact, dtype, f"{what} loss")
    for g_t, g_r, e in zip(grads_t, grads_r, exact_grads):
        assert g_t.dtype == dtype and g_t.shape == e.shape
        assert_as_accurate(g_t, g_r, e, dtype, f"{what} grad")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["labels", "probabilities"])
@pytest.mark.parametrize("C", CLASSES)
@pytest.mark.parametrize("B", BATCHES)
def test_contrastive_loss(B, C, kind, dtype):
    gen = _gen("contrastive", B, C, kind)
    pool = B + 5
    logits = (torch.randn(B, C, generator=gen) * 3).to(DEVICE, dtype)
    if (B + C) % 2:
        logits = _noncontiguous(logits)
    q_f, q_r = _targets(kind, B, C, gen), _targets(kind, pool, C, gen)
    perm = torch.randint(0, pool, (B,), generator=gen).to(DEVICE)
    perm[0] = perm[-1]  # a repeat
    lam = torch.rand(B, generator=gen).to(DEVICE) if C % 2 else torch.rand((), generator=gen).to(DEVICE)
    reduction = "mean" if B % 2 else "sum"

    def fn(z, backend):
        return fastmix.contrastive_loss(z, q_f, q_r, lam, 0.3, perm=perm, reduction=reduction, backend=backend)

    def exact(z):
        return spec64.contrastive(z, q_f, q_r, lam, 0.3, perm=perm, reduction=reduction)

    _compare(fn, [logits], exact, dtype, f"B={B} C={C} {kind}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["labels", "probabilities"])
@pytest.mark.parametrize("C", [1, 10, 1001])
@pytest.mark.parametrize("B_r,B_f", [(1, 1), (32, 3), (3, 257)])
def test_real_loss(B_r, B_f, C, kind, dtype):
    gen = _gen("real", B_r, B_f, C, kind)
    z_r = (torch.randn(B_r, C, generator=gen) * 3).to(DEVICE, dtype)
    z_f = _noncontiguous((torch.randn(B_f, C, generator=gen) * 3).to(DEVICE, dtype))
    q_r, q_f = _targets(kind, B_r, C, gen), _targets(kind, B_f, C, gen)
    reduction = "mean" if C % 2 else "sum"

    def fn(a, b, backend):
        return fastmix.real_loss(a, b, q_r, q_f, 5.0, reduction=reduction, backend=backend)

    def exact(a, b):
        return spec64.real(a, b, q_r, q_f, 5.0, reduction=reduction)

    _compare(fn, [z_r, z_f], exact, dtype, f"B_r={B_r} B_f={B_f} C={C} {kind}")


@pytest.mark.parametrize("lam_value", [0.0, 1.0])
@pytest.mark.parametrize("kind", ["labels", "probabilities"])
def test_contrastive_loss_at_lambda_edges(lam_value, kind):
    gen = _gen("edges", lam_value, kind)
    B, C = 6, 10
    logits = torch.randn(B, C, generator=gen).to(DEVICE)
    q_f, q_r = _targets(kind, B, C, gen), _targets(kind, B, C, gen)
    for lam in (torch.full((B,), lam_value, device=DEVICE), torch.tensor(lam_value, device=DEVICE), lam_value):

        def fn(z, backend):
            return fastmix.contrastive_loss(z, q_f, q_r, lam, 0.1, backend=backend)

        _compare(fn, [logits], lambda z: spec64.contrastive(z, q_f, q_r, lam_value, 0.1), torch.float32, "edge")


@pytest.mark.parametrize("C", [5000, 32768])
def test_contrastive_loss_tiles_long_rows(C):
    # rows longer than one tile exercise the online softmax across tiles; 32768 is the widest supported
    gen = _gen("long", C)
    B = 2
    logits = (torch.randn(B, C, generator=gen) * 4).to(DEVICE)
    q_f, q_r = _targets("probabilities", B, C, gen), _targets("probabilities", B, C, gen)
    lam = torch.rand(B, generator=gen).to(DEVICE)

    def fn(z, backend):
        return fastmix.contrastive_loss(z, q_f, q_r, lam, 0.05, backend=backend)

    _compare(fn, [logits], lambda z: spec64.contrastive(z, q_f, q_r, lam, 0.05), torch.float32, "long rows")


def test_loss_without_grad_matches():
    gen = _gen("nograd")
    logits = torch.randn(9, 7, generator=gen).to(DEVICE)
    labels = torch.randint(0, 7, (9,), generator=gen).to(DEVICE)
    with torch.no_grad():
        values = [fastmix.contrastive_loss(logits, labels, labels, 0.4, 0.5, backend=b) for b in ("triton", "torch")]
        reals = [fastmix.real_loss(logits, logits[:4], labels, labels[:4], 2.0, backend=b) for b in ("triton", "torch")]
    torch.testing.assert_close(values[0], values[1])
    torch.testing.assert_close(reals[0], reals[1])


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_nan_logits_give_nan_loss(backend):
    logits = torch.randn(5, 4).to(DEVICE)
    logits[3, 2] = float("nan")
    labels = torch.tensor([0, 1, 2, 3, 0]).to(DEVICE)
    assert torch.isnan(fastmix.contrastive_loss(logits, labels, labels, 0.5, 1.0, backend=backend))
    assert torch.isnan(fastmix.real_loss(logits, logits[:2], labels, labels[:2], 1.0, backend=backend))
    assert torch.isnan(fastmix.real_loss(logits[:2], logits, labels[:2], labels, 1.0, backend=backend))
    assert torch.isnan(fastmix.sharpen(logits, 0.3, backend=backend)[3]).all()


def test_out_of_range_indices_never_pass_silently():
    # with value checks skipped (as on a GPU), a bad label or perm turns the loss into NaN
    from fastmix.kernels import contrastive_forward, mixup_forward

    logits = torch.randn(4, 3, device=DEVICE)
    labels = torch.tensor([0, 1, 2, 7], device=DEVICE)
    lam = torch.full((), 0.5, device=DEVICE)
    loss, _ = contrastive_forward(logits, labels, labels, lam, None, 1.0, "sum", True)
    assert torch.isnan(loss)
    perm = torch.tensor([0, 1, 9, 2], device=DEVICE)
    good = torch.tensor([0, 1, 2, 3], device=DEVICE)
    loss, _ = contrastive_forward(logits, good, good, lam, perm, 1.0, "sum", True)
    assert torch.isnan(loss)
    x = torch.randn(4, 2, 3, 3, device=DEVICE)
    out = mixup_forward(x, x, torch.rand(4, device=DEVICE), perm)
    assert torch.isnan(out[2]).all() and torch.isfinite(out[[0, 1, 3]]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,C", [(B, C) for B in (1, 3, 257) for C in CLASSES] + [(2, 32768)])
def test_sharpen(B, C, dtype):
    gen = _gen("sharpen", B, C)
    logits = (torch.randn(B, C, generator=gen) * 3).to(DEVICE, dtype)
    if C % 2:
        logits = _noncontiguous(logits)
    grad_out = torch.randn(B, C, generator=gen).to(DEVICE, dtype)
    results = {}
    for backend in ("triton", "torch"):
        z = logits.detach().clone().requires_grad_()
        out = fastmix.sharpen(z, 0.3, backend=backend)
        out.backward(grad_out)
        results[backend] = (out.detach(), z.grad)
    z64 = logits.detach().double().requires_grad_()
    exact = spec64.sharpen(z64, 0.3)
    (exact_grad,) = torch.autograd.grad(exact, z64, grad_out.double())
    assert_as_accurate(results["triton"][0], results["torch"][0], exact, dtype, "sharpen")
    assert_as_accurate(results["triton"][1], results["torch"][1], exact_grad, dtype, "sharpen grad")
    assert results["triton"][0].dtype == dtype and results["triton"][1].dtype == dtype


MIXUP_SHAPES = [(1, 1, 5, 7), (3, 3, 8, 8), (5, 4, 9, 6)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("weight_kind", ["scalar", "per_sample", "mask"])
@pytest.mark.parametrize("shape", MIXUP_SHAPES)
def test_mixup(shape, weight_kind, channels_last, dtype):
    gen = _gen("mixup", shape, weight_kind, channels_last)
    B, Cc, H, W = shape
    pool = B + 3
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x_f = torch.randn(shape, generator=gen).to(DEVICE, dtype).contiguous(memory_format=fmt)
    x_r = torch.randn((pool, Cc, H, W), generator=gen).to(DEVICE, dtype).contiguous(memory_format=fmt)
    wshape = {"scalar": (), "per_sample": (B,), "mask": (B, 1, H, W)}[weight_kind]
    weight = torch.rand(wshape, generator=gen).to(DEVICE)
    if weight_kind == "per_sample" and B > 1:
        weight[0] = 0.0
        weight[-1] = 1.0
    perm = torch.randint(0, pool, (B,), generator=gen).to(DEVICE)
    perm[-1] = perm[0]
    grad_out = torch.randn(shape, generator=gen).to(DEVICE, dtype)

    results = {}
    for backend in ("triton", "torch"):
        leaves = [t.detach().clone().requires_grad_() for t in (x_f, x_r, weight)]
        out = fastmix.mixup(*leaves, perm, backend=backend)
        out.backward(grad_out)
        results[backend] = (out.detach(), *[t.grad for t in leaves])
    out_t = results["triton"][0]
    assert out_t.is_contiguous(memory_format=fmt) and out_t.dtype == dtype

    leaves64 = [t.detach().double().requires_grad_() for t in (x_f, x_r, weight)]
    exact = spec64.mixup(*leaves64, perm)
    exact_grads = torch.autograd.grad(exact, leaves64, grad_out.double())
    assert_as_accurate(out_t, results["torch"][0], exact, dtype, "mixup")
    for name, g_t, g_r, e in zip(("x_forget", "x_retain", "weight"), results["triton"][1:], results["torch"][1:], exact_grads):
        assert_as_accurate(g_t, g_r, e, dtype, f"mixup grad {name}")
    if weight_kind == "per_sample" and B > 1:
        # lambda exactly 1 and 0 reproduce the inputs bit for bit
        assert torch.equal(out_t[-1], x_f[-1])
        assert torch.equal(out_t[0], x_r[perm[0]])


def test_mixup_flat_samples_and_partial_grads():
    # (B, D) samples, no perm, and a backward that needs only the weight's gradient
    gen = _gen("flat")
    x_f = torch.randn(4, 3000, generator=gen).to(DEVICE)
    x_r = torch.randn(4, 3000, generator=gen).to(DEVICE)
    weight = torch.rand(4, generator=gen).to(DEVICE).requires_grad_()
    grads = {}
    for backend in ("triton", "torch"):
        w = weight.detach().clone().requires_grad_()
        out = fastmix.mixup(x_f, x_r, w, backend=backend)
        (grads[backend],) = torch.autograd.grad(out.sum(), w)
    torch.testing.assert_close(grads["triton"], grads["torch"], rtol=1e-5, atol=1e-4)
