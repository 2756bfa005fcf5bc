"""Each kernel backend (Triton, CUDA C++) against the PyTorch reference and the float64 spec.

On a CPU machine the Triton cases run under TRITON_INTERPRET=1 (set in
conftest.py) in float32; the float16 and bfloat16 cases, the CUDA backend and
the largest sizes run where a GPU is present. (tests/backends/test_cuda_emulated.py runs
the CUDA source on the CPU.)
"""
import pytest
import spec64
import torch
from devices import HAS_CUDA, needs_gpu
from inputs import noncontiguous, seeded, targets
from tolerance import assert_as_accurate

import fastmix
from fastmix.backends import cuda_backend

DEVICE = "cuda" if HAS_CUDA else "cpu"
DTYPES = [
    torch.float32,
    pytest.param(torch.float16, marks=needs_gpu),
    pytest.param(torch.bfloat16, marks=needs_gpu),
]
BATCHES = [1, 3, 32, 257]
CLASSES = [1, 2, 10, 100, 1000, 1001]
_CUDA_ERROR = cuda_backend.load_error()
BACKENDS = [
    "triton",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            needs_gpu,
            pytest.mark.skipif(_CUDA_ERROR is not None, reason=f"the cuda backend cannot run: {_CUDA_ERROR}"),
        ],
    ),
]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """The kernel backend under test, with every output it writes poisoned first."""
    if request.param == "triton":
        from fastmix.kernels import _common

        monkeypatch.setattr(_common, "POISON_OUTPUTS", True)
    else:
        # the cuda launchers allocate through torch: fill freed device memory with NaN instead
        for n in (1 << 12, 1 << 16, 1 << 20, 1 << 24):
            torch.full((n,), float("nan"), device=DEVICE)  # freed at once, its blocks stay cached
    yield request.param
    if request.param == "cuda":
        cuda_backend.check_index_error()  # a test that left the device flag set fails here


def _run(fn, logits, backend):
    leaves = [z.detach().clone().requires_grad_() for z in logits]
    value = fn(*leaves, backend=backend)
    value.backward()
    return value.detach(), [z.grad for z in leaves]


def _compare(fn, logits, exact_fn, dtype, what, backend):
    """A kernel backend and the torch reference, both against float64."""
    value_t, grads_t = _run(fn, logits, backend)
    value_r, grads_r = _run(fn, logits, "torch")
    exact, exact_grads = spec64.with_grads(exact_fn, *logits)
    assert value_t.dtype == value_r.dtype == torch.float32 and value_t.dim() == 0
    assert_as_accurate(value_t, value_r, exact, dtype, f"{what} loss")
    for g_t, g_r, e in zip(grads_t, grads_r, exact_grads):
        assert g_t.dtype == dtype and g_t.shape == e.shape
        assert_as_accurate(g_t, g_r, e, dtype, f"{what} grad")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["labels", "probabilities"])
@pytest.mark.parametrize("C", CLASSES)
@pytest.mark.parametrize("B", BATCHES)
def test_contrastive_loss(B, C, kind, dtype, backend):
    gen = seeded("contrastive", B, C, kind)
    pool = B + 5
    logits = (torch.randn(B, C, generator=gen) * 3).to(DEVICE, dtype)
    if (B + C) % 2:
        logits = noncontiguous(logits)
    q_f, q_r = targets(kind, B, C, gen, DEVICE), targets(kind, pool, C, gen, DEVICE)
    perm = torch.randint(0, pool, (B,), generator=gen).to(DEVICE)
    perm[0] = perm[-1]  # a repeat
    lam = torch.rand(B, generator=gen).to(DEVICE) if C % 2 else torch.rand((), generator=gen).to(DEVICE)
    if B > 2 and lam.dim() == 1:
        lam[0], lam[1] = 0.0, 1.0
    reduction = "mean" if B % 2 else "sum"

    def fn(z, backend):
        return fastmix.contrastive_loss(z, q_f, q_r, lam, 0.3, perm=perm, reduction=reduction, backend=backend)

    def exact(z):
        return spec64.contrastive(z, q_f, q_r, lam, 0.3, perm=perm, reduction=reduction)

    _compare(fn, [logits], exact, dtype, f"B={B} C={C} {kind}", backend)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["labels", "probabilities"])
@pytest.mark.parametrize("C", [1, 10, 1001])
@pytest.mark.parametrize("B_r,B_f", [(1, 1), (32, 3), (3, 257), pytest.param(600, 40, marks=needs_gpu)])
def test_real_loss(B_r, B_f, C, kind, dtype, backend):
    gen = seeded("real", B_r, B_f, C, kind)
    z_r = (torch.randn(B_r, C, generator=gen) * 3).to(DEVICE, dtype)
    z_f = noncontiguous((torch.randn(B_f, C, generator=gen) * 3).to(DEVICE, dtype))
    q_r, q_f = targets(kind, B_r, C, gen, DEVICE), targets(kind, B_f, C, gen, DEVICE)
    reduction = "mean" if C % 2 else "sum"

    def fn(a, b, backend):
        return fastmix.real_loss(a, b, q_r, q_f, 5.0, reduction=reduction, backend=backend)

    def exact(a, b):
        return spec64.real(a, b, q_r, q_f, 5.0, reduction=reduction)

    _compare(fn, [z_r, z_f], exact, dtype, f"B_r={B_r} B_f={B_f} C={C} {kind}", backend)


@pytest.mark.parametrize("lam_value", [0.0, 1.0])
@pytest.mark.parametrize("kind", ["labels", "probabilities"])
def test_contrastive_loss_at_lambda_edges(lam_value, kind, backend):
    gen = seeded("edges", lam_value, kind)
    B, C = 6, 10
    logits = torch.randn(B, C, generator=gen).to(DEVICE)
    q_f, q_r = targets(kind, B, C, gen, DEVICE), targets(kind, B, C, gen, DEVICE)
    for lam in (torch.full((B,), lam_value, device=DEVICE), torch.tensor(lam_value, device=DEVICE), lam_value):

        def fn(z, backend, lam=lam):
            return fastmix.contrastive_loss(z, q_f, q_r, lam, 0.1, backend=backend)

        _compare(fn, [logits], lambda z: spec64.contrastive(z, q_f, q_r, lam_value, 0.1), torch.float32, "edge",
                 backend)


@pytest.mark.parametrize(
    "B,C,kind",  # rows longer than one tile, and the largest sizes (on a GPU: the interpreter runs a program at a time)
    [
        (2, 5000, "probabilities"),
        (2, 32768, "probabilities"),
        pytest.param(2, 32768, "labels", marks=needs_gpu),
        pytest.param(65536, 10, "labels", marks=needs_gpu),
        pytest.param(4096, 1000, "probabilities", marks=needs_gpu),
    ],
)
def test_contrastive_loss_large(B, C, kind, backend):
    gen = seeded("large", B, C, kind)
    logits = (torch.randn(B, C, generator=gen) * 4).to(DEVICE)
    q_f, q_r = targets(kind, B, C, gen, DEVICE), targets(kind, B + 7, C, gen, DEVICE)
    perm = torch.randint(0, B + 7, (B,), generator=gen).to(DEVICE)
    lam = torch.rand(B, generator=gen).to(DEVICE)

    def fn(z, backend):
        return fastmix.contrastive_loss(z, q_f, q_r, lam, 0.05, perm=perm, backend=backend)

    def exact(z):
        return spec64.contrastive(z, q_f, q_r, lam, 0.05, perm=perm)

    _compare(fn, [logits], exact, torch.float32, f"B={B} C={C}", backend)


def test_loss_without_grad_matches(backend):
    gen = seeded("nograd")
    logits = torch.randn(9, 7, generator=gen).to(DEVICE)
    labels = torch.randint(0, 7, (9,), generator=gen).to(DEVICE)
    with torch.no_grad():
        values = [fastmix.contrastive_loss(logits, labels, labels, 0.4, 0.5, backend=b) for b in (backend, "torch")]
        reals = [fastmix.real_loss(logits, logits[:4], labels, labels[:4], 2.0, backend=b) for b in (backend, "torch")]
    torch.testing.assert_close(values[0], values[1])
    torch.testing.assert_close(reals[0], reals[1])


@pytest.mark.parametrize("reference", [False, True])
def test_nan_logits_give_nan_loss(backend, reference):
    backend = "torch" if reference else backend
    logits = torch.randn(5, 4).to(DEVICE)
    logits[3, 2] = float("nan")
    labels = torch.tensor([0, 1, 2, 3, 0]).to(DEVICE)
    assert torch.isnan(fastmix.contrastive_loss(logits, labels, labels, 0.5, 1.0, backend=backend))
    assert torch.isnan(fastmix.real_loss(logits, logits[:2], labels, labels[:2], 1.0, backend=backend))
    assert torch.isnan(fastmix.real_loss(logits[:2], logits, labels[:2], labels, 1.0, backend=backend))
    assert torch.isnan(fastmix.sharpen(logits, 0.3, backend=backend)[3]).all()


def test_out_of_range_indices_never_pass_silently():
    # with value checks skipped (as on a GPU), a bad label or perm turns the Triton loss into NaN
    # (the cuda backend's flag: tests/test_cuda_kernels.py)
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
def test_sharpen(B, C, dtype, backend):
    gen = seeded("sharpen", B, C)
    logits = (torch.randn(B, C, generator=gen) * 3).to(DEVICE, dtype)
    if C % 2:
        logits = noncontiguous(logits)
    grad_out = torch.randn(B, C, generator=gen).to(DEVICE, dtype)
    results = {}
    for name in (backend, "torch"):
        z = logits.detach().clone().requires_grad_()
        out = fastmix.sharpen(z, 0.3, backend=name)
        out.backward(grad_out)
        results[name] = (out.detach(), z.grad)
    z64 = logits.detach().double().requires_grad_()
    exact = spec64.sharpen(z64, 0.3)
    (exact_grad,) = torch.autograd.grad(exact, z64, grad_out.double())
    assert_as_accurate(results[backend][0], results["torch"][0], exact, dtype, "sharpen")
    assert_as_accurate(results[backend][1], results["torch"][1], exact_grad, dtype, "sharpen grad")
    assert results[backend][0].dtype == dtype and results[backend][1].dtype == dtype


def test_sharpen_many_leading_dims(backend):
    x = torch.randn(4, 5, 6, 7, device=DEVICE).transpose(1, 2)
    torch.testing.assert_close(fastmix.sharpen(x, 0.5, backend=backend), torch.softmax(x / 0.5, dim=-1))


MIXUP_SHAPES = [(1, 1, 5, 7), (3, 3, 8, 8), (5, 4, 9, 6), (2, 8, 4, 4)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("weight_kind", ["scalar", "per_sample", "mask"])
@pytest.mark.parametrize("shape", MIXUP_SHAPES)
@pytest.mark.parametrize("with_perm", [False, True])
def test_mixup(shape, weight_kind, channels_last, dtype, with_perm, backend):
    gen = seeded("mixup", shape, weight_kind, channels_last, with_perm)
    B, Cc, H, W = shape
    pool = B + 3 if with_perm else B
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x_f = torch.randn(shape, generator=gen).to(DEVICE, dtype).contiguous(memory_format=fmt)
    x_r = torch.randn((pool, Cc, H, W), generator=gen).to(DEVICE, dtype).contiguous(memory_format=fmt)
    wshape = {"scalar": (), "per_sample": (B,), "mask": (B, 1, H, W)}[weight_kind]
    weight = torch.rand(wshape, generator=gen).to(DEVICE)
    if weight_kind == "per_sample" and B > 1:
        weight[0] = 0.0
        weight[-1] = 1.0
    perm = None
    if with_perm:
        perm = torch.randint(0, pool, (B,), generator=gen).to(DEVICE)
        perm[-1] = perm[0]  # a repeat
    grad_out = torch.randn(shape, generator=gen).to(DEVICE, dtype)

    results = {}
    for name in (backend, "torch"):
        leaves = [t.detach().clone().requires_grad_() for t in (x_f, x_r, weight)]
        out = fastmix.mixup(*leaves, perm, backend=name)
        out.backward(grad_out)
        results[name] = (out.detach(), *[t.grad for t in leaves])
    out_t = results[backend][0]
    assert out_t.is_contiguous(memory_format=fmt) and out_t.dtype == dtype

    leaves64 = [t.detach().double().requires_grad_() for t in (x_f, x_r, weight)]
    exact = spec64.mixup(*leaves64, perm)
    exact_grads = torch.autograd.grad(exact, leaves64, grad_out.double())
    assert_as_accurate(out_t, results["torch"][0], exact, dtype, "mixup")
    for name, g_t, g_r, e in zip(("x_forget", "x_retain", "weight"), results[backend][1:], results["torch"][1:],
                                 exact_grads):
        assert g_t.dtype == g_r.dtype and g_t.shape == g_r.shape
        assert_as_accurate(g_t, g_r, e, dtype, f"mixup grad {name}")
    if weight_kind == "per_sample" and B > 1:
        # lambda exactly 1 and 0 reproduce the inputs bit for bit
        assert torch.equal(out_t[-1], x_f[-1])
        assert torch.equal(out_t[0], x_r[perm[0] if with_perm else 0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_mixup_flat_unaligned_and_partial_grads(dtype, backend):
    # (B, D) samples with D not a multiple of a vector width, offset views, and a backward
    # that needs only the weight's gradient
    gen = seeded("flat", dtype)
    x_f = torch.randn(5, 3001, generator=gen).to(DEVICE, dtype)[1:]
    x_r = torch.randn(4, 3001, generator=gen).to(DEVICE, dtype)
    weight = torch.rand(4, generator=gen).to(DEVICE)
    grads = {}
    for name in (backend, "torch"):
        w = weight.detach().clone().requires_grad_()
        out = fastmix.mixup(x_f, x_r, w, backend=name)
        (grads[name],) = torch.autograd.grad(out.float().sum(), w)
    torch.testing.assert_close(grads[backend], grads["torch"], rtol=1e-4, atol=1e-2)


@needs_gpu
def test_mixup_large_images_channels_last(backend):
    gen = seeded("big")
    x_f = torch.randn(16, 3, 224, 224, generator=gen).to(DEVICE).contiguous(memory_format=torch.channels_last)
    x_r = torch.randn(20, 3, 224, 224, generator=gen).to(DEVICE).contiguous(memory_format=torch.channels_last)
    mask = torch.rand(16, 1, 224, 224, generator=gen).to(DEVICE)
    perm = torch.randint(0, 20, (16,), generator=gen).to(DEVICE)
    outs = [fastmix.mixup(x_f, x_r, mask, perm, backend=b) for b in (backend, "torch")]
    torch.testing.assert_close(outs[0], outs[1])


@needs_gpu
def test_cuda_graph_capture_and_replay(backend):
    logits = torch.randn(64, 10, device=DEVICE, requires_grad=True)
    q = torch.softmax(torch.randn(64, 10, device=DEVICE), dim=1)
    lam = torch.rand(64, device=DEVICE)
    perm = torch.randperm(64, device=DEVICE)
    x = torch.randn(64, 3, 8, 8, device=DEVICE)

    def step():
        loss = fastmix.contrastive_loss(logits, q, q, lam, 0.5, perm=perm, backend=backend)
        (g,) = torch.autograd.grad(loss, logits)
        return loss, g, fastmix.mixup(x, x, lam, perm, backend=backend), fastmix.sharpen(logits.detach(),
                                                                                         backend=backend)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        eager = step()  # warm-up: compiles and loads kernels outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    with torch.no_grad():
        logits.mul_(1.5)
    graph.replay()
    expected = step()
    for c, e in zip(captured, expected):
        torch.testing.assert_close(c, e)
    assert not torch.equal(eager[1], expected[1])


@needs_gpu
@pytest.mark.parametrize("loss", ["contrastive", "real", "fused"])
def test_small_loss_forward_is_one_launch(backend, loss, monkeypatch):
    from torch.profiler import ProfilerActivity, profile

    if backend == "triton":
        from fastmix.kernels import _common

        monkeypatch.setattr(_common, "POISON_OUTPUTS", False)  # the fixture's NaN fills are not the op's launches
    logits = torch.randn(32, 10, device=DEVICE, requires_grad=True)
    labels = torch.randint(0, 10, (32,), device=DEVICE)
    lam = torch.rand(32, device=DEVICE)

    def forward():
        if loss == "contrastive":
            return fastmix.contrastive_loss(logits, labels, labels, lam, 1.0, backend=backend)
        if loss == "real":
            return fastmix.real_loss(logits, logits, labels, labels, 1.0, backend=backend)
        from fastmix.backends import kernels_for

        z = logits.detach()
        return kernels_for(backend).loss_forward(z, z, z, labels, labels, lam, None, 1.0, 2.0, 0.5, "mean", True)

    if loss == "fused" and _kernels(backend).loss_forward is None:
        pytest.skip(f"the {backend} backend has no loss_forward yet")
    forward()  # warm-up: compiles and loads the kernels
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        forward()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(kernels) == 1, [e.name for e in kernels]


def _kernels(backend):
    from fastmix.backends import kernels_for

    return kernels_for(backend)


# --- counting launches without a GPU ---------------------------------------------------------------


class _LaunchCounter:
    """Triton launches (under the interpreter) and the aten ops that would be launches on a GPU."""

    ALLOCATIONS = frozenset({"empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided"})

    def __init__(self, monkeypatch):
        from torch.utils._python_dispatch import TorchDispatchMode
        from triton.runtime.interpreter import InterpretedFunction

        self.triton, self.aten = [], []
        self.in_kernel = False  # the interpreter's own tensor work is the launch, not extra ops
        counter = self
        run = InterpretedFunction.run

        def counted_run(kernel, *args, grid, warmup, **kwargs):
            counter.triton.append((kernel.fn.__name__, grid))
            counter.in_kernel = True
            try:
                return run(kernel, *args, grid=grid, warmup=warmup, **kwargs)
            finally:
                counter.in_kernel = False

        monkeypatch.setattr(InterpretedFunction, "run", counted_run)

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func.overloadpacket.__name__
                if not counter.in_kernel and name not in counter.ALLOCATIONS and not func.is_view:
                    counter.aten.append(name)
                return func(*args, **(kwargs or {}))

        self.mode = Mode()


@pytest.fixture
def launches(monkeypatch):
    if HAS_CUDA:
        pytest.skip("counts launches under the interpreter")
    from fastmix.kernels import _common

    monkeypatch.setattr(_common, "POISON_OUTPUTS", False)  # a test's NaN fills are not the op's launches
    return _LaunchCounter(monkeypatch)


@pytest.mark.parametrize("kind", ["labels", "probabilities"])
@pytest.mark.parametrize("loss", ["contrastive", "real", "fused"])
def test_small_losses_are_one_triton_launch_and_nothing_else(loss, kind, launches):
    from fastmix import kernels

    gen = seeded("one launch", loss, kind)
    z = torch.randn(32, 10, generator=gen)
    q = targets(kind, 32, 10, gen, DEVICE)
    lam = torch.rand(32, generator=gen)
    perm = torch.randperm(32, generator=gen)
    with launches.mode:
        if loss == "contrastive":
            kernels.contrastive_forward(z, q, q, lam, perm, 0.5, "mean", True)
        elif loss == "real":
            kernels.real_forward(z, z, q, q, 0.5, "mean", True)
        else:
            kernels.loss_forward(z, z, z, q, q, lam, perm, 0.5, 2.0, 0.3, "mean", True)
    assert [name for name, _ in launches.triton] == ["_tile_kernel"]
    assert launches.aten == []


@pytest.mark.parametrize("loss", ["contrastive", "real", "fused"])
def test_large_losses_are_launches_over_rows(loss, launches):
    # past the tile every row runs in parallel: a program per mix row, then two persistent grids
    from fastmix import kernels

    gen = seeded("launches over rows", loss)
    z = torch.randn(200, 30, generator=gen)
    labels = torch.randint(0, 30, (200,), generator=gen)
    lam = torch.rand(200, generator=gen)
    with launches.mode:
        if loss == "contrastive":
            kernels.contrastive_forward(z, labels, labels, lam, None, 0.5, "sum", True)
        elif loss == "real":
            kernels.real_forward(z[:120], z[:150], labels, labels, 0.5, "sum", True)
        else:
            kernels.loss_forward(z, z, z[:120], labels, labels, lam, None, 0.5, 2.0, 0.3, "sum", True)
    names = [name for name, _ in launches.triton]
    assert names == (["_mix_terms_kernel"] if loss != "real" else []) + ["_rows_kernel", "_grad_kernel"]
    if loss != "real":
        assert launches.triton[0][1] == (200,)
    assert launches.aten == []


@pytest.mark.parametrize("kind", ["labels", "probabilities"])
def test_large_loss_traffic(kind, monkeypatch):
    # issue 11: the bytes of L_mix + omega * L_real past the tile, from the kernels' own loads
    # and stores (tests/traffic.py), per element of each logits, target and gradient tensor
    import traffic
    from fastmix.kernels import contrastive

    from fastmix import kernels

    if HAS_CUDA:
        pytest.skip("counts bytes under the interpreter")
    monkeypatch.setattr(contrastive, "TILE_ELEMENTS", 1)
    gen = seeded("traffic", kind)
    B, C = 24, 40
    z_mix, z_f, z_r = (torch.randn(B, C, generator=gen) for _ in range(3))
    q_f, q_r = targets(kind, B, C, gen, DEVICE), targets(kind, B, C, gen, DEVICE)
    # mix row i keeps towards q_r[i + 1]: never a row the same program reads (a random perm sometimes is)
    perm, lam = torch.arange(B).roll(-1), torch.rand(B, generator=gen)
    counter = traffic.Traffic(monkeypatch)
    _, g_mix, g_f, g_r = kernels.loss_forward(z_mix, z_f, z_r, q_f, q_r, lam, perm, 0.5, 2.0, 0.3, "sum", True)
    named = {"z_mix": z_mix, "z_f": z_f, "z_r": z_r, "q_f": q_f, "q_r": q_r, "g_mix": g_mix, "g_f": g_f, "g_r": g_r}
    counts = counter.count(named)
    assert [c["kernel"] for c in counts] == ["_mix_terms_kernel", "_rows_kernel", "_grad_kernel"]

    traffic.check_fused_loss_traffic(counts, named, kind, B, C)


def test_loss_forward_pairs_mix_and_forget_rows():
    # mix row i and forget row i share q_f[i] in the same program, so the row counts must agree
    from fastmix import kernels

    z, labels, lam = torch.randn(70, 30), torch.randint(0, 30, (70,)), torch.rand(70)
    with pytest.raises(ValueError, match="pair row by row"):
        kernels.loss_forward(z, z[:60], z, labels, labels, lam, None, 0.5, 2.0, 0.3, "sum", True)


def test_tile_limit_keeps_programs_small():
    # no set walks more than TILE_ELEMENTS padded logits in one program
    from fastmix.kernels import contrastive

    rows = contrastive.RowSet(contrastive.MIX, torch.randn(256, 10), torch.zeros(256, dtype=torch.int64),
                              torch.zeros(256, dtype=torch.int64), None, None, 256, 1.0, 1.0, False)
    assert not rows.fits_tile()
    rows = contrastive.RowSet(contrastive.MIX, torch.randn(128, 10), torch.zeros(128, dtype=torch.int64),
                              torch.zeros(128, dtype=torch.int64), None, None, 128, 1.0, 1.0, False)
    assert rows.fits_tile() and rows.tile_shape() == (128, 16)


# --- strides the kernels once ignored (issue 11) ------------------------------------------------------


def _strided(t, step=4):
    """The same values, every ``step``-th element of a longer tensor."""
    big = torch.zeros((t.shape[0] * step, *t.shape[1:]), dtype=t.dtype, device=t.device)
    big[::step] = t
    return big[::step]


@pytest.mark.parametrize("B,C", [(6, 10), (300, 7)])
def test_contrastive_strided_perm(B, C, backend):
    gen = seeded("strided perm", B, C)
    logits = torch.randn(B, C, generator=gen).to(DEVICE)
    q_f, q_r = targets("probabilities", B, C, gen, DEVICE), targets("probabilities", B + 3, C, gen, DEVICE)
    perm = _strided(torch.randint(0, B + 3, (B,), generator=gen).to(DEVICE))
    lam = torch.rand(B, generator=gen).to(DEVICE)
    assert perm.stride(0) == 4
    kernel = _kernels(backend).contrastive_forward
    loss, grad = kernel(logits, q_f, q_r, lam, perm, 0.3, "sum", True)
    exact, (exact_grad,) = spec64.with_grads(lambda z: spec64.contrastive(z, q_f, q_r, lam, 0.3, perm=perm), logits)
    ref_loss, ref_grad = _kernels("torch").contrastive_forward(logits, q_f, q_r, lam, perm, 0.3, "sum", True)
    assert_as_accurate(loss, ref_loss, exact, torch.float32, "loss")
    assert_as_accurate(grad, ref_grad, exact_grad, torch.float32, "grad")


@pytest.mark.parametrize("weight_kind", ["per_sample", "mask"])
def test_mixup_strided_perm(weight_kind, backend):
    gen = seeded("mixup strided perm", weight_kind)
    B, pool = 5, 9
    x_f = torch.randn(B, 3, 4, 5, generator=gen).to(DEVICE)
    x_r = torch.randn(pool, 3, 4, 5, generator=gen).to(DEVICE)
    weight = torch.rand((B,) if weight_kind == "per_sample" else (B, 1, 4, 5), generator=gen).to(DEVICE)
    perm = _strided(torch.randint(0, pool, (B,), generator=gen).to(DEVICE))
    grad = torch.randn(B, 3, 4, 5, generator=gen).to(DEVICE)
    k, ref = _kernels(backend), _kernels("torch")
    out = k.mixup_forward(x_f, x_r, weight, perm)
    torch.testing.assert_close(out, spec64.mixup(x_f, x_r, weight, perm).float())
    for got, want in zip(k.mixup_backward(grad, x_f, x_r, weight, perm, (True, True, True)),
                         ref.mixup_backward(grad, x_f, x_r, weight, perm, (True, True, True))):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("perm", [False, True])
def test_mixup_expanded_mask_gradient(perm, backend):
    # one mask for the whole batch, expanded (stride 0 over the batch): its gradient is per sample
    gen = seeded("expanded mask", perm)
    B, pool, Cc, H, W = 6, 8, 3, 5, 7
    x_f = torch.randn(B, Cc, H, W, generator=gen).to(DEVICE)
    x_r = torch.randn(pool, Cc, H, W, generator=gen).to(DEVICE)
    p = torch.randint(0, pool, (B,), generator=gen).to(DEVICE) if perm else None
    if not perm:
        x_r = x_r[:B]
    mask = torch.rand(1, 1, H, W, generator=gen).to(DEVICE)
    grad_out = torch.randn(B, Cc, H, W, generator=gen).to(DEVICE)
    leaf = mask.clone().requires_grad_()
    out = fastmix.mixup(x_f, x_r, leaf.expand(B, 1, H, W), p, backend=backend)
    out.backward(grad_out)
    m64 = mask.double().requires_grad_()
    exact = spec64.mixup(x_f, x_r, m64.expand(B, 1, H, W), p)
    (exact_grad,) = torch.autograd.grad(exact, m64, grad_out.double())
    torch.testing.assert_close(leaf.grad.double(), exact_grad, rtol=1e-5, atol=1e-5)
    # the kernel's own output: a fresh contiguous per-sample gradient, every row written
    _, _, grad_w = _kernels(backend).mixup_backward(grad_out, x_f, x_r, mask.expand(B, 1, H, W), p,
                                                     (False, False, True))
    assert grad_w.shape == (B, 1, H, W) and grad_w.is_contiguous()
    per_sample = (grad_out.double() * (x_f.double() - (x_r if p is None else x_r[p]).double())).sum(1, keepdim=True)
    torch.testing.assert_close(grad_w.double(), per_sample, rtol=1e-5, atol=1e-5)


@pytest.fixture
def cuda_grid_limits(monkeypatch):
    """Fails a Triton launch whose grid a GPU would refuse (the interpreter runs any grid)."""
    if HAS_CUDA:
        yield
        return
    from triton.runtime.interpreter import InterpretedFunction

    run = InterpretedFunction.run

    def checked_run(kernel, *args, grid, warmup, **kwargs):
        grid = tuple(grid) + (1, 1)
        assert grid[0] < 2**31 and grid[1] <= 65535 and grid[2] <= 65535, (kernel.fn.__name__, grid)
        return run(kernel, *args, grid=grid[:3], warmup=warmup, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", checked_run)
    yield


@pytest.mark.parametrize("weight_kind", ["per_sample", "mask"])
def test_mixup_batch_beyond_grid_axis_y(weight_kind, backend, cuda_grid_limits):
    B = 65537  # one more than the grid's y axis holds
    gen = seeded("big batch", weight_kind)
    x_f = torch.randn(B, 1, 1, 2, generator=gen).to(DEVICE)
    x_r = torch.randn(B + 3, 1, 1, 2, generator=gen).to(DEVICE)
    weight = torch.rand((B,) if weight_kind == "per_sample" else (B, 1, 1, 2), generator=gen).to(DEVICE)
    perm = torch.randint(0, B + 3, (B,), generator=gen).to(DEVICE)
    grad = torch.randn(B, 1, 1, 2, generator=gen).to(DEVICE)
    k, ref = _kernels(backend), _kernels("torch")
    torch.testing.assert_close(k.mixup_forward(x_f, x_r, weight, perm), ref.mixup_forward(x_f, x_r, weight, perm))
    for got, want in zip(k.mixup_backward(grad, x_f, x_r, weight, perm, (True, True, True)),
                         ref.mixup_backward(grad, x_f, x_r, weight, perm, (True, True, True))):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


# --- the fused loss: L_mix + omega * L_real -----------------------------------------------------------


def _fused_exact(z_mix, z_f, z_r, q_f, q_r, lam, perm, omega, reduction):
    mix = spec64.contrastive(z_mix, q_f, q_r, lam, 0.3, perm=perm, reduction=reduction)
    return mix + omega * spec64.real(z_r, z_f, q_r, q_f, 2.0, reduction=reduction)


@pytest.fixture(params=["default", "rows"])
def loss_path(request, monkeypatch):
    """Which Triton path runs: the launchers' own choice, or ("rows") the launches over rows (the
    large-batch path) at any size, each row in chunks of 16 logits, so that small cases
    exercise it under the interpreter."""
    if request.param == "rows":
        from fastmix.kernels import contrastive

        monkeypatch.setattr(contrastive, "TILE_ELEMENTS", 1)
        monkeypatch.setattr(contrastive, "MAX_BLOCK", 16)
    return request.param


@pytest.mark.parametrize("omega", [0.0, 0.7])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kind", ["labels", "probabilities"])
@pytest.mark.parametrize("B,B_r,C", [(32, 32, 10), (5, 3, 7), (3, 9, 1), (37, 41, 30)])
def test_loss_forward(B, B_r, C, kind, reduction, omega, backend, loss_path):
    kernel = _kernels(backend).loss_forward
    if kernel is None:
        pytest.skip(f"the {backend} backend has no loss_forward yet")
    if loss_path == "rows" and backend != "triton":
        pytest.skip("the row path's limits are the Triton launcher's")
    gen = seeded("fused", B, B_r, C, kind, reduction, omega)
    pool = B_r
    z_mix = (torch.randn(B, C, generator=gen) * 3).to(DEVICE)
    z_f = noncontiguous((torch.randn(B, C, generator=gen) * 3).to(DEVICE))
    z_r = (torch.randn(B_r, C, generator=gen) * 3).to(DEVICE)
    q_f, q_r = targets(kind, B, C, gen, DEVICE), targets(kind, pool, C, gen, DEVICE)
    if kind == "probabilities" and B > 1:
        q_f = q_f[:1].expand(B, C)  # one target row for every forget sample: stride 0
    perm = _strided(torch.randint(0, pool, (B,), generator=gen).to(DEVICE))
    lam = torch.rand(B, generator=gen).to(DEVICE)
    if B > 2:
        lam[0], lam[1] = 0.0, 1.0
    args = (q_f, q_r, lam, perm, 0.3, 2.0, omega, reduction)
    loss, g_mix, g_f, g_r = kernel(z_mix, z_f, z_r, *args, True)
    ref = _kernels("torch").loss_forward(z_mix, z_f, z_r, *args, True)
    exact, exact_grads = spec64.with_grads(
        lambda a, b, c: _fused_exact(a, b, c, q_f, q_r, lam, perm, omega, reduction), z_mix, z_f, z_r)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert_as_accurate(loss, ref[0], exact, torch.float32, "fused loss")
    for name, got, want, e, z in zip(("mix", "forget", "retain"), (g_mix, g_f, g_r), ref[1:], exact_grads,
                                     (z_mix, z_f, z_r)):
        if omega == 0 and name != "mix":  # the real term is not computed: no gradient buffers
            assert got.numel() == 0 and want.numel() == 0
            continue
        assert got.shape == z.shape and got.dtype == z.dtype and got.is_contiguous()
        assert_as_accurate(got, want, e, torch.float32, f"fused grad {name}")
    no_grad = kernel(z_mix, z_f, z_r, *args, False)
    torch.testing.assert_close(no_grad[0], loss)
    assert all(g.numel() == 0 for g in no_grad[1:])


@pytest.mark.parametrize("kind", ["labels", "probabilities"])
@pytest.mark.parametrize("loss", ["contrastive", "real"])
def test_single_losses_on_the_row_path(loss, kind, monkeypatch):
    # C_tau on mixes alone (three launches, the last only the loss) and L_real alone (no mix
    # launch), on the row path at odd sizes with rows in chunks of 16 logits
    from fastmix.kernels import contrastive

    monkeypatch.setattr(contrastive, "TILE_ELEMENTS", 1)
    monkeypatch.setattr(contrastive, "MAX_BLOCK", 16)
    gen = seeded("row path", loss, kind)
    C = 37
    if loss == "contrastive":
        z = noncontiguous((torch.randn(7, C, generator=gen) * 3).to(DEVICE))
        q_f, q_r = targets(kind, 7, C, gen, DEVICE), targets(kind, 11, C, gen, DEVICE)
        perm = _strided(torch.randint(0, 11, (7,), generator=gen).to(DEVICE))
        lam = torch.rand(7, generator=gen).to(DEVICE)

        def fn(a, backend):
            return fastmix.contrastive_loss(a, q_f, q_r, lam, 0.3, perm=perm, reduction="mean", backend=backend)

        def exact(a):
            return spec64.contrastive(a, q_f, q_r, lam, 0.3, perm=perm, reduction="mean")

        _compare(fn, [z], exact, torch.float32, f"row path {loss} {kind}", "triton")
    else:
        z_r = (torch.randn(9, C, generator=gen) * 3).to(DEVICE)
        z_f = noncontiguous((torch.randn(5, C, generator=gen) * 3).to(DEVICE))
        q_r, q_f = targets(kind, 9, C, gen, DEVICE), targets(kind, 5, C, gen, DEVICE)

        def fn(a, b, backend):
            return fastmix.real_loss(a, b, q_r, q_f, 2.0, backend=backend)

        def exact(a, b):
            return spec64.real(a, b, q_r, q_f, 2.0)

        _compare(fn, [z_r, z_f], exact, torch.float32, f"row path {loss} {kind}", "triton")


@pytest.mark.parametrize("B,C", [(4, 6), (130, 17)])  # the tile, and past it
def test_loss_forward_without_real_logits(B, C, backend):
    kernel = _kernels(backend).loss_forward
    if kernel is None:
        pytest.skip(f"the {backend} backend has no loss_forward yet")
    gen = seeded("fused omega 0", B)
    z = torch.randn(B, C, generator=gen).to(DEVICE)
    labels = torch.randint(0, C, (B,), generator=gen).to(DEVICE)
    lam = torch.rand(B, generator=gen).to(DEVICE)
    loss, g_mix, g_f, g_r = kernel(z, None, None, labels, labels, lam, None, 0.5, 2.0, 0.0, "mean", True)
    ref_loss, ref_grad = _kernels("torch").contrastive_forward(z, labels, labels, lam, None, 0.5, "mean", True)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(g_mix, ref_grad)
    assert g_f.numel() == 0 and g_r.numel() == 0
    with pytest.raises(ValueError, match="omega"):
        kernel(z, None, None, labels, labels, lam, None, 0.5, 2.0, 0.5, "mean", True)


def test_loss_forward_large_sets_against_spec():
    # the two-kernel path with all three sets (the interpreter runs each row's program in turn)
    from fastmix import kernels

    gen = seeded("fused large")
    B, B_r, C = 70, 90, 40
    z_mix, z_f, z_r = (torch.randn(n, C, generator=gen) * 3 for n in (B, B, B_r))
    z_f = noncontiguous(z_f)
    q_f, q_r = targets("probabilities", 1, C, gen, DEVICE).expand(B, C), targets("probabilities", B_r, C, gen, DEVICE)
    perm = _strided(torch.randint(0, B_r, (B,), generator=gen))
    lam = torch.rand(B, generator=gen)
    loss, *grads = kernels.loss_forward(z_mix, z_f, z_r, q_f, q_r, lam, perm, 0.3, 2.0, 0.4, "mean", True)
    ref = _kernels("torch").loss_forward(z_mix, z_f, z_r, q_f, q_r, lam, perm, 0.3, 2.0, 0.4, "mean", True)
    exact, exact_grads = spec64.with_grads(
        lambda a, b, c: _fused_exact(a, b, c, q_f, q_r, lam, perm, 0.4, "mean"), z_mix, z_f, z_r)
    assert_as_accurate(loss, ref[0], exact, torch.float32, "loss")
    for got, want, e in zip(grads, ref[1:], exact_grads):
        assert_as_accurate(got, want, e, torch.float32, "grad")


def test_eps_is_one_value_everywhere():
    import re
    from pathlib import Path

    from fastmix.kernels import _common

    from fastmix.backends import torch_backend
    from fastmix.ops import eager

    source = (Path(__file__).parents[2] / "csrc" / "loss.cu").read_text()
    match = re.search(r"constexpr float kEps = ([0-9.eE+-]+)f;", source)
    assert match, "kEps not found in csrc/loss.cu"
    assert float(match.group(1)) == torch_backend.EPS == eager.EPS == _common.EPS.value
