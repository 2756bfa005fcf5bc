"""The C++ CPU kernels (backend 'cpu') against float64: odd sizes, strides, expanded and
channels_last inputs, every dtype they take, outputs poisoned with NaN first; and their
in-kernel value checks. (The fused loss is tested in test_fused_loss.py.)"""
import pytest
import spec64
import torch
from tolerance import assert_as_accurate

import fastmix
from fastmix.backends import cpu_backend
from fastmix.ops.debug import trusted_inputs

pytestmark = pytest.mark.skipif(cpu_backend.load_error() is not None, reason=f"{cpu_backend.load_error()}")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def poisoned(monkeypatch):
    monkeypatch.setattr(cpu_backend, "POISON_OUTPUTS", True)


def _layout(t, layout):
    if layout == "strided":
        return torch.cat([t, t], -1)[..., ::2]
    if layout == "expanded":
        return t[:1].expand(t.shape)
    return t


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "strided", "expanded"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (37, 10), (16, 16), (9, 1), (33, 1000), (2, 3, 17)])
def test_sharpen(shape, layout, dtype):
    gen = torch.Generator().manual_seed(sum(shape))
    z = _layout((torch.randn(shape, generator=gen) * 3).to(dtype), layout).requires_grad_()
    g = torch.randn(shape, generator=gen).to(dtype)
    out = fastmix.sharpen(z, 0.3, backend="cpu")
    (grad,) = torch.autograd.grad(out, z, g)
    ref = fastmix.sharpen(z, 0.3, backend="torch")
    (ref_grad,) = torch.autograd.grad(ref, z, g)
    z64 = z.detach().double().requires_grad_()
    exact = torch.softmax(z64 / 0.3, -1)
    (exact_grad,) = torch.autograd.grad(exact, z64, g.double())
    assert out.dtype == dtype and out.is_contiguous()
    assert_as_accurate(out, ref, exact, dtype, "sharpen")
    assert_as_accurate(grad, ref_grad, exact_grad, dtype, "sharpen backward")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("weight_kind", ["scalar", "per_sample", "mask"])
@pytest.mark.parametrize("shape,pool", [((1, 1, 1, 1), 1), ((3, 2, 5, 7), 6), ((5, 3, 9, 4), 5)])
def test_mixup(shape, pool, weight_kind, channels_last, dtype):
    B, C, H, W = shape
    gen = torch.Generator().manual_seed(B * 100 + H)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x_f = torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=fmt)
    x_r = torch.randn(pool, C, H, W, generator=gen).to(dtype).contiguous(memory_format=fmt)
    w_shape = {"scalar": (), "per_sample": (B,), "mask": (B, 1, H, W)}[weight_kind]
    weight = torch.rand(w_shape, generator=gen)
    perm = torch.randint(0, pool, (B,), generator=gen)
    perm[0] = perm[-1]  # a repeat: its retain gradient is a sum
    g = torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=fmt)

    def run(backend):
        leaves = [t.detach().clone().requires_grad_() for t in (x_f, x_r, weight)]
        out = fastmix.mixup(*leaves, perm, backend=backend)
        return out, torch.autograd.grad(out, leaves, g)

    out, grads = run("cpu")
    ref, ref_grads = run("torch")
    leaves = [t.detach().double().requires_grad_() for t in (x_f, x_r, weight)]
    exact = spec64.mixup(*leaves, perm)
    exact_grads = torch.autograd.grad(exact, leaves, g.double())
    assert out.dtype == dtype and out.is_contiguous(memory_format=fmt)
    assert_as_accurate(out, ref, exact, dtype, "mixup")
    for a, r, e, what in zip(grads, ref_grads, exact_grads, ("x_forget", "x_retain", "weight")):
        assert_as_accurate(a, r, e, dtype if what != "weight" else torch.float32, f"grad {what}")


@pytest.mark.parametrize("weight_kind", ["scalar", "per_sample", "mask"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_mixup_in_parallel_gives_the_one_thread_results(torch_threads, weight_kind, channels_last):
    # above the kernels' parallel threshold (32768 elements): blocks of samples, and the
    # retain gradient in blocks of a row's elements with repeated perm rows added in order
    gen = torch.Generator().manual_seed(5)
    B, C, H, W, pool = 9, 3, 40, 37, 6
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x_f = torch.randn(B, C, H, W, generator=gen).contiguous(memory_format=fmt)
    x_r = torch.randn(pool, C, H, W, generator=gen).contiguous(memory_format=fmt)
    weight = torch.rand({"scalar": (), "per_sample": (B,), "mask": (B, 1, H, W)}[weight_kind], generator=gen)
    perm = torch.tensor([0, 5, 5, 1, 0, 2, 3, 5, 4])
    g = torch.randn(B, C, H, W, generator=gen)

    def run(backend="cpu"):
        leaves = [t.clone().requires_grad_() for t in (x_f, x_r, weight)]
        out = fastmix.mixup(*leaves, perm, backend=backend)
        return (out, *torch.autograd.grad(out, leaves, g))

    with torch_threads(1):
        one = run()
    with torch_threads(3):
        three = run()
    ref = run("torch")
    leaves = [t.double().requires_grad_() for t in (x_f, x_r, weight)]
    exact = spec64.mixup(*leaves, perm)
    exact = (exact, *torch.autograd.grad(exact, leaves, g.double()))
    for a, b, r, e, what in zip(one, three, ref, exact, ("out", "x_forget", "x_retain", "weight")):
        if not (what == "weight" and weight_kind == "scalar"):  # one sum over the batch: its blocks differ
            assert torch.equal(a, b), what
        assert_as_accurate(a, r, e, torch.float32, what)
        assert_as_accurate(b, r, e, torch.float32, what)


@pytest.mark.parametrize("C", [5, 13, 300, 1000])
def test_sharpen_in_parallel_gives_the_one_thread_results(torch_threads, C):
    gen = torch.Generator().manual_seed(C)
    z = (torch.randn(40000 // C + 3, C, generator=gen) * 4).requires_grad_()
    g = torch.randn(z.shape, generator=gen)

    def run(backend="cpu"):
        out = fastmix.sharpen(z, 0.25, backend=backend)
        return out, torch.autograd.grad(out, z, g)[0]

    with torch_threads(1):
        one = run()
    with torch_threads(3):
        three = run()
    ref = run("torch")
    assert torch.equal(one[0], three[0]) and torch.equal(one[1], three[1])
    z64 = z.detach().double().requires_grad_()
    exact = torch.softmax(z64 / 0.25, -1)
    assert_as_accurate(one[0], ref[0], exact, torch.float32, "sharpen")
    assert_as_accurate(one[1], ref[1], torch.autograd.grad(exact, z64, g.double())[0], torch.float32, "backward")


@pytest.mark.parametrize("C", [3, 10, 16, 40])
def test_sharpen_rows_with_nan_or_inf_are_nan_and_alone(C):
    # rows of <= 16 classes go 8 at a time with a lane per row: a bad row stays in its lane
    z = torch.randn(19, C)
    z[2, 1], z[5, C - 1], z[9, 0], z[17, :] = float("nan"), float("inf"), -float("inf"), -float("inf")
    out, ref = fastmix.sharpen(z, 0.3, backend="cpu"), fastmix.sharpen(z, 0.3, backend="torch")
    assert out[[2, 5, 17]].isnan().all() and out[9].isfinite().all()
    torch.testing.assert_close(out, ref, equal_nan=True)


def test_sharpen_of_a_temperature_below_float_range_is_the_argmax():
    z = torch.tensor([[1.0, 3.0, 3.0, -2.0], [0.5, float("nan"), 0.0, 1.0], [2.0, 1.0, 0.0, -1.0]])
    out = fastmix.sharpen(z, 1e-40, backend="cpu")
    ref = fastmix.sharpen(z, 1e-40, backend="torch")
    torch.testing.assert_close(out, ref, equal_nan=True)
    assert out[0].tolist() == [0.0, 0.5, 0.5, 0.0] and out[1].isnan().all()


@pytest.mark.parametrize("shape", [(3, 0, 4, 5), (3, 2, 0, 5), (0, 2, 4, 5)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_mixup_of_empty_images(shape, channels_last):
    B, C, H, W = shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x_f = torch.randn(shape).contiguous(memory_format=fmt)
    x_r = torch.randn(B + 1, C, H, W).contiguous(memory_format=fmt)
    perm = torch.arange(B)
    for weight in (torch.rand(B, 1, H, W), torch.rand(B), torch.tensor(0.25)):
        grads = []
        for backend in ("cpu", "torch"):
            leaves = [t.clone().requires_grad_() for t in (x_f, x_r, weight)]
            out = fastmix.mixup(*leaves, perm, backend=backend)
            assert out.shape == shape
            grads.append(torch.autograd.grad(out, leaves, torch.ones_like(out)))
        for a, b in zip(*grads):
            assert a.shape == b.shape and torch.equal(a, b)
    if B and H * W:  # a mask value outside [0, 1] is refused even with no channel to mix
        bad = torch.rand(B, 1, H, W)
        bad[-1, 0, -1, -1] = 2.0
        _same_error_as_the_host(fastmix.mixup, x_f, x_r, bad, perm, name="weight")
    if B:
        _same_error_as_the_host(fastmix.mixup, x_f, x_r, 0.5, torch.full((B,), B + 1), name="perm")


def test_mixup_forward_rounds_as_the_reference():
    # fp-contract off: the same float32 products and sum as PyTorch's, bit for bit
    gen = torch.Generator().manual_seed(0)
    x_f, x_r = torch.randn(4, 3, 8, 8, generator=gen), torch.randn(4, 3, 8, 8, generator=gen)
    mask = torch.rand(4, 1, 8, 8, generator=gen)
    assert torch.equal(fastmix.mixup(x_f, x_r, mask, backend="cpu"), fastmix.mixup(x_f, x_r, mask, backend="torch"))


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def _same_error_as_the_host(fn, *args, name, in_kernel=True, **kwargs):
    """The cpu backend's error is the host path's, word for word, and names ``name``; inside
    trusted_inputs() (no host scans) the kernel still catches the value (``in_kernel``)."""
    host = _error(fn, *args, backend="torch", **kwargs)
    assert name in host
    assert _error(fn, *args, backend="cpu", **kwargs) == host
    if in_kernel:
        with trusted_inputs():
            assert _error(fn, *args, backend="cpu", **kwargs) == host


@pytest.mark.parametrize("bad,name", [
    ("forget_label", "forget_target"),
    ("retain_label", "retain_target"),
    ("perm", "perm"),
    ("lam", "lam"),
    ("lam_range", "lam"),
    ("forget_prob", "forget_target"),
    ("forget_prob_inf", "forget_target"),
    ("retain_prob", "retain_target"),
    ("retain_prob_shared", "retain_target"),
])
@pytest.mark.parametrize("omega", [0.0, 1.0])
def test_the_loss_kernel_checks_values(bad, name, omega):
    gen = torch.Generator().manual_seed(1)
    B, N, C = 4, 6, 5
    logits = [torch.randn(n, C, generator=gen) for n in (B, B, N)]
    labels = bad.endswith("label")
    if labels:
        q_f, q_r = torch.randint(0, C, (B,), generator=gen), torch.randint(0, C, (N,), generator=gen)
    else:
        q_f, q_r = torch.softmax(torch.randn(B, C, generator=gen), 1), torch.softmax(torch.randn(N, C,
                                                                                                 generator=gen), 1)
    lam, perm = torch.rand(B, generator=gen), torch.tensor([0, 2, 2, 1])
    if bad == "forget_label":
        q_f[1] = C
    elif bad == "retain_label":
        q_r[5] = -1  # a row perm never reaches: still refused
    elif bad == "perm":
        perm[2] = N
    elif bad == "lam":
        lam[3] = float("nan")
    elif bad == "lam_range":
        lam[0] = 1.5
    elif bad == "forget_prob":
        q_f[0, 0] = -0.1
    elif bad == "forget_prob_inf":
        q_f[2, 3] = float("inf")
    elif bad == "retain_prob_shared":  # a row that both a mix row and a retain row read
        q_r[2, 4] = -1e-3
    else:
        q_r[5, 1] = float("nan")

    def loss(*args, backend):
        return fastmix.MixUnlearnLoss(1.0, 1.0, 1.0, omega, backend=backend)(*args)

    _same_error_as_the_host(loss, *logits, q_f, q_r, lam, perm, name=name)
    if omega == 0:
        _same_error_as_the_host(fastmix.contrastive_loss, logits[0], q_f, q_r, lam, 1.0, perm=perm, name=name)


@pytest.mark.parametrize("bad,name", [
    ("perm_high", "perm"), ("perm_negative", "perm"),
    ("mask_nan", "weight"), ("mask_high", "weight"), ("mask_negative", "weight"),
    ("per_sample_high", "weight"), ("per_sample_nan", "weight"), ("scalar_nan", "weight"),
    ("float64_mask_just_above_1", "weight"), ("perm_and_mask", "perm"),
])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_mixup_kernel_checks_values(bad, name, channels_last, dtype):
    gen = torch.Generator().manual_seed(3)
    B, C, H, W, pool = 4, 3, 5, 6, 7
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x_f = torch.randn(B, C, H, W, generator=gen).to(dtype).contiguous(memory_format=fmt)
    x_r = torch.randn(pool, C, H, W, generator=gen).to(dtype).contiguous(memory_format=fmt)
    perm = torch.tensor([0, 6, 6, 2])
    weight = torch.rand(B, 1, H, W, generator=gen)
    if bad.startswith("perm"):
        perm[2] = pool if bad != "perm_negative" else -1
    if bad in ("mask_nan", "perm_and_mask"):
        weight[3, 0, 4, 5] = float("nan")  # the last element the kernel reads
    elif bad == "mask_high":
        weight[1, 0, 2, 3] = 1.0 + 2 ** -23
    elif bad == "mask_negative":
        weight[0, 0, 0, 0] = -1e-30
    elif bad.startswith("per_sample"):
        weight = torch.rand(B, generator=gen)
        weight[2] = 1.25 if bad.endswith("high") else float("nan")
    elif bad == "scalar_nan":
        weight = torch.tensor(float("nan"))
    elif bad == "float64_mask_just_above_1":  # 1 in float32: the backend checks float64 weights itself
        weight = weight.double()
        weight[2, 0, 1, 1] = 1.0 + 1e-12
    _same_error_as_the_host(fastmix.mixup, x_f, x_r, weight, perm, name=name,
                            in_kernel=weight.dtype != torch.float64)  # float64: checked as the host does


@pytest.mark.parametrize("which", ["forget_target", "retain_target"])
def test_a_float64_target_is_checked_before_float32_rounds_its_bad_value_away(which):
    # -1e-50 is -0.0 in float32, where the kernel's check cannot see it: the backend
    # checks a float64 target as the host does, whichever of the two it is
    gen = torch.Generator().manual_seed(5)
    B, C = 4, 5
    q = {k: torch.softmax(torch.randn(B, C, generator=gen), 1) for k in ("forget_target", "retain_target")}
    q[which] = q[which].double()
    q[which][1, 2] = -1e-50
    logits = torch.randn(B, C, generator=gen)
    _same_error_as_the_host(fastmix.contrastive_loss, logits, q["forget_target"], q["retain_target"],
                            torch.rand(B, generator=gen), 1.0, name=which, in_kernel=False)


def test_good_inputs_are_not_scanned_on_the_host(monkeypatch):
    # the cpu backend's kernels check the values: no aminmax and read-back per call
    from fastmix.ops import _checks

    def no_scan(t):
        raise AssertionError("a host scan of the values")

    monkeypatch.setattr(_checks, "value_range", no_scan)
    gen = torch.Generator().manual_seed(4)
    B, C = 4, 5
    x = torch.randn(B, 2, 3, 3, generator=gen)
    fastmix.mixup(x, x.flip(0), torch.rand(B, 1, 3, 3, generator=gen), torch.tensor([1, 0, 3, 3]), backend="cpu")
    fastmix.mixup(x, x.flip(0), torch.rand(B, generator=gen), backend="cpu")
    logits = [torch.randn(B, C, generator=gen) for _ in range(3)]
    for q in (torch.randint(0, C, (B,), generator=gen), torch.softmax(torch.randn(B, C, generator=gen), 1)):
        fastmix.MixUnlearnLoss(1.0, 1.0, 1.0, 1.0, backend="cpu")(*logits, q, q, torch.rand(B, generator=gen),
                                                                   torch.tensor([1, 0, 3, 3]))
    with pytest.raises(AssertionError, match="a host scan"):  # the torch backend does scan
        fastmix.mixup(x, x.flip(0), torch.rand(B, generator=gen), backend="torch")


@pytest.mark.parametrize("omega", [0.0, 1.0])
def test_a_huge_finite_probability_is_not_refused(omega):
    # the kernel's quick test flags a row whose squares overflow; the rescan that names the
    # bad argument finds nothing NaN, infinite or negative, so no error (as the reference)
    gen = torch.Generator().manual_seed(2)
    B, N, C = 4, 6, 5
    logits = [torch.randn(n, C, generator=gen) for n in (B, B, N)]
    q_f, q_r = torch.softmax(torch.randn(B, C, generator=gen), 1), torch.softmax(torch.randn(N, C, generator=gen), 1)
    q_f[1, 2] = 1e20
    q_r[0, 0] = 3e38
    lam, perm = torch.rand(B, generator=gen), torch.tensor([0, 2, 2, 1])
    for backend in ("cpu", "torch"):
        fastmix.MixUnlearnLoss(1.0, 1.0, 1.0, omega, backend=backend)(*logits, q_f, q_r, lam, perm)
