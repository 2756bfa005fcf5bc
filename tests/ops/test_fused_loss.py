"""MixUnlearnLoss as one op: values and gradients against float64, the backward's in-place
scaling (any grad_output, retained graphs, buffers never written once handed out), the
composed fallback of backends without a fused kernel, and its launches."""
import contextlib

import pytest
import spec64
import torch
from inputs import seeded
from tolerance import assert_as_accurate, assert_close_to_exact
from torch.utils._python_dispatch import TorchDispatchMode

import fastmix
from fastmix.backends import cpu_backend, kernels_for
from fastmix.ops import _scale

CPU_OK = cpu_backend.load_error() is None
BACKENDS = ["torch", "triton", pytest.param("cpu", marks=pytest.mark.skipif(not CPU_OK, reason="C++ CPU kernels "
                                                                                               "not built"))]


def _case(kind, B, N, C, gen, dtype=torch.float32):
    mix, forget = ((torch.randn(B, C, generator=gen) * 3).to(dtype) for _ in range(2))
    retain = (torch.randn(N, C, generator=gen) * 3).to(dtype)
    if kind == "labels":
        q_f, q_r = torch.randint(0, C, (B,), generator=gen), torch.randint(0, C, (N,), generator=gen)
    else:
        q_f = torch.softmax(torch.randn(B, C, generator=gen) * 2, 1)
        q_r = torch.softmax(torch.randn(N, C, generator=gen) * 2, 1)
    lam = torch.rand(B, generator=gen)
    perm = torch.randint(0, N, (B,), generator=gen)
    return mix, forget, retain, q_f, q_r, lam, perm


def _exact(omega, tau_mix, tau_real, reduction):
    def fn(mix, forget, retain, q_f, q_r, lam, perm):
        value = spec64.contrastive(mix, q_f, q_r, lam, tau_mix, perm=perm, reduction=reduction)
        if omega:
            value = value + omega * spec64.real(retain, forget, q_r, q_f, tau_real, reduction=reduction)
        return value

    return fn


def _run(loss_fn, logits, rest):
    leaves = [z.detach().clone().requires_grad_() for z in logits]
    value = loss_fn(*leaves, *rest)
    value.backward()
    return value.detach(), [z.grad for z in leaves]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["labels", "probabilities"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("B,N,C,omega", [(1, 1, 1, 1.0), (3, 5, 10, 0.5), (17, 9, 33, 2.0), (6, 6, 7, 0.0)])
def test_loss_matches_spec(backend, kind, reduction, B, N, C, omega, monkeypatch):
    monkeypatch.setattr(cpu_backend, "POISON_OUTPUTS", True)
    gen = seeded(kind, reduction, B, N, C, omega)
    mix, forget, retain, q_f, q_r, lam, perm = _case(kind, B, N, C, gen)
    if C > 2:  # strided logits: every other column of a wider tensor
        mix = torch.cat([mix, mix], 1)[:, ::2]
    loss_fn = fastmix.MixUnlearnLoss(1.0, 0.7, 2.0, omega, reduction=reduction, backend=backend)
    args = (q_f, q_r, lam, perm)
    value, grads = _run(lambda a, b, c, *r: loss_fn(a, b, c, *r), [mix, forget, retain], args)
    ref_value, ref_grads = _run(
        lambda a, b, c, *r: fastmix.MixUnlearnLoss(1.0, 0.7, 2.0, omega, reduction=reduction, backend="torch")(a, b,
                                                                                                               c, *r),
        [mix, forget, retain], args,
    )
    fn = _exact(omega, 0.7, 2.0, reduction)
    leaves = [z.detach().double().requires_grad_() for z in (mix, forget, retain)]
    exact = fn(*leaves, q_f, q_r, lam.double(), perm)
    exact_grads = torch.autograd.grad(exact, leaves, allow_unused=True)
    assert value.dtype == torch.float32 and value.dim() == 0
    assert_as_accurate(value, ref_value, exact, torch.float32, "loss")
    for g, r, e, z in zip(grads, ref_grads, exact_grads, (mix, forget, retain)):
        if e is None:  # omega == 0: no gradient reaches the real-data logits
            assert g is None
            continue
        assert g.shape == z.shape and g.dtype == z.dtype
        assert_as_accurate(g, r, e, torch.float32, "grad")


@pytest.mark.skipif(not CPU_OK, reason="C++ CPU kernels not built")
@pytest.mark.parametrize("kind", ["labels", "probabilities"])
@pytest.mark.parametrize("omega", [1.0, 0.0])
def test_cpu_loss_at_many_classes_on_one_thread_and_two(kind, omega, monkeypatch, torch_threads):
    # C spans several of the kernel's float32 partial sums and ends in a ragged one; enough
    # rows for its threaded path, whose results must not depend on the thread count
    monkeypatch.setattr(cpu_backend, "POISON_OUTPUTS", True)
    gen = seeded("many classes", kind, omega)
    mix, forget, retain, q_f, q_r, lam, perm = _case(kind, 37, 45, 1029, gen)
    args = (q_f, q_r, lam, perm)
    loss_fn = fastmix.MixUnlearnLoss(1.0, 0.7, 2.0, omega, backend="cpu")
    runs = []
    for n in (1, 2):
        with torch_threads(n):
            runs.append(_run(loss_fn, [mix, forget, retain], args))
    (value, grads), (value2, grads2) = runs
    assert torch.equal(value, value2)
    for g, g2 in zip(grads, grads2):
        assert (g is None and g2 is None) or torch.equal(g, g2)
    ref_value, ref_grads = _run(fastmix.MixUnlearnLoss(1.0, 0.7, 2.0, omega, backend="torch"), [mix, forget, retain],
                                args)
    leaves = [z.detach().double().requires_grad_() for z in (mix, forget, retain)]
    exact = _exact(omega, 0.7, 2.0, "sum")(*leaves, q_f, q_r, lam.double(), perm)
    exact_grads = torch.autograd.grad(exact, leaves, allow_unused=True)
    assert_as_accurate(value, ref_value, exact, torch.float32, "loss")
    for g, r, e in zip(grads, ref_grads, exact_grads):
        if e is not None:
            assert_as_accurate(g, r, e, torch.float32, "grad")


def test_loss_in_float64_is_exact():
    gen = seeded("f64")
    mix, forget, retain, q_f, q_r, lam, perm = _case("probabilities", 5, 8, 6, gen, torch.float64)
    value = fastmix.ops.loss.mixunlearn_loss(mix, forget, retain, q_f, q_r, lam.double(), 0.4, 3.0, 1.5, perm=perm)
    exact = _exact(1.5, 0.4, 3.0, "sum")(mix, forget, retain, q_f, q_r, lam.double(), perm)
    assert value.dtype == torch.float64
    assert_close_to_exact(value, exact, torch.float64, "loss")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("device_path", [False, True])
def test_backward_scales_by_any_grad_output_and_survives_retained_graphs(backend, device_path, monkeypatch):
    if device_path:  # the GPU's path: grad_output never read on the host, the Triton kernel scales
        monkeypatch.setattr(_scale, "host_reads", lambda g: False)
    gen = seeded("scale", backend)
    mix, forget, retain, q_f, q_r, lam, perm = _case("labels", 4, 6, 5, gen)
    logits = [z.requires_grad_() for z in (mix, forget, retain)]
    loss_fn = fastmix.MixUnlearnLoss(1.0, 0.7, 2.0, 1.5, backend=backend)
    loss = loss_fn(*logits, q_f, q_r, lam, perm)
    base = torch.autograd.grad(loss, logits, retain_graph=True)  # grad_output 1: the buffers themselves
    kept = [g.clone() for g in base]
    for factor in (2.5, 0.0, -1.0, 1.0):
        scaled = torch.autograd.grad(loss * factor, logits, retain_graph=True)
        for g, b in zip(scaled, kept):
            torch.testing.assert_close(g, b * factor, rtol=1e-6, atol=0)
    for g, b in zip(base, kept):  # what the caller got first was never written again
        assert torch.equal(g, b)
    (loss * 3.0).backward()
    for z, b in zip(logits, kept):
        torch.testing.assert_close(z.grad, 3.0 * b, rtol=1e-6, atol=0)


def test_a_modified_input_fails_the_retained_backward():
    gen = seeded("version")
    mix, forget, retain, q_f, q_r, lam, perm = _case("labels", 4, 6, 5, gen)
    logits = [z.requires_grad_() for z in (mix, forget, retain)]
    loss = fastmix.MixUnlearnLoss(1.0, 0.7, 2.0, 1.0)(*logits, q_f, q_r, lam, perm)
    torch.autograd.grad(loss, logits, retain_graph=True)
    with torch.no_grad():
        logits[0].add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(loss, logits)


def test_only_the_logits_that_need_it_get_a_gradient():
    gen = seeded("partial")
    mix, forget, retain, q_f, q_r, lam, perm = _case("probabilities", 4, 6, 5, gen)
    mix.requires_grad_()
    loss = fastmix.MixUnlearnLoss(1.0, 0.7, 2.0, 1.0)(mix, forget, retain, q_f, q_r, lam, perm)
    (g,) = torch.autograd.grad(loss, [mix])
    assert g.shape == mix.shape and forget.grad is None
    with torch.no_grad():
        assert fastmix.MixUnlearnLoss(1.0, 0.7, 2.0, 1.0)(mix, forget, retain, q_f, q_r, lam, perm).grad_fn is None


def test_composed_fallback_for_backends_without_a_fused_kernel(monkeypatch):
    import sys

    from fastmix.backends import Kernels, compose_loss_forward, has_fused_loss, register

    registry = sys.modules["fastmix.backends"]
    ref = kernels_for("torch")
    kernels_for("triton")
    monkeypatch.setitem(registry._REGISTERED, "triton", registry._REGISTERED["triton"])
    monkeypatch.setitem(registry._FUSED_LOSS, "triton", registry._FUSED_LOSS["triton"])
    plain = Kernels(ref.sharpen_forward, ref.sharpen_backward, ref.mixup_forward, ref.mixup_backward,
                    ref.contrastive_forward, ref.real_forward)
    assert plain.loss_forward is None
    register("triton", plain)
    assert kernels_for("triton").loss_forward is not None and not has_fused_loss("triton")
    gen = seeded("compose")
    args = _case("labels", 4, 6, 5, gen)
    fused = compose_loss_forward(ref.contrastive_forward, ref.real_forward)(*args, 0.7, 2.0, 0.0, "sum", True)
    assert fused[2].numel() == 0 and fused[3].numel() == 0  # omega == 0: no real-data gradients


# --- launches ----------------------------------------------------------------------------

# aten ops that launch nothing on a GPU: allocation, views and metadata
_NO_LAUNCH = {
    "empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "view", "_unsafe_view", "as_strided",
    "detach", "alias", "expand", "t", "transpose", "permute", "squeeze", "unsqueeze", "select", "slice",
    "_reshape_alias", "lift_fresh", "_local_scalar_dense", "set_", "resize_",
}


class _Launches(TorchDispatchMode):
    """Counts aten ops that launch a kernel, outside Triton's interpreter (which runs a
    kernel with torch ops of its own); Triton launches are counted by ``_count_triton``."""

    def __init__(self):
        super().__init__()
        self.aten, self.triton, self.inside = [], [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not self.inside and name not in _NO_LAUNCH:
            self.aten.append(name)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _count_triton(counter, monkeypatch):
    from triton.runtime.interpreter import InterpretedFunction

    run = InterpretedFunction.run

    def counting(self, *args, **kwargs):
        counter.triton.append(getattr(self.fn, "__name__", "kernel"))
        counter.inside += 1
        try:
            return run(self, *args, **kwargs)
        finally:
            counter.inside -= 1

    monkeypatch.setattr(InterpretedFunction, "run", counting)
    yield


def _has_fused_kernel(backend):
    from fastmix.backends import has_fused_loss

    return has_fused_loss(backend)


@pytest.mark.parametrize("kind", ["labels", "probabilities"])
def test_launches_of_forward_and_backward_on_the_triton_backend(kind, monkeypatch):
    """Forward plus backward at (32, 10), counted as a GPU would launch them: Triton kernels
    under the interpreter and the aten kernels around them (the implicit grad_output
    included); grad_output is never read on the host (the GPU's path)."""
    monkeypatch.setattr(_scale, "host_reads", lambda g: False)
    gen = seeded("launch", kind)
    mix, forget, retain, q_f, q_r, lam, perm = _case(kind, 32, 32, 10, gen)
    logits = [z.requires_grad_() for z in (mix, forget, retain)]
    loss_fn = fastmix.MixUnlearnLoss(1.0, 10.0, 10.0, 1.0, backend="triton")
    torch.autograd.grad(loss_fn(*logits, q_f, q_r, lam, perm), logits)  # warm-up
    counter = _Launches()
    # value checks off, as on a GPU without debug_checks
    with _count_triton(counter, monkeypatch), fastmix.ops.debug.trusted_inputs(), counter:
        torch.autograd.grad(loss_fn(*logits, q_f, q_r, lam, perm), logits)
    launches = len(counter.aten) + len(counter.triton)
    print(f"launches: {launches}: aten {counter.aten}, triton {counter.triton}")
    if _has_fused_kernel("triton"):
        assert launches <= 3, (counter.aten, counter.triton)
    else:  # composed: contrastive and real kernels, the sum of the two losses, ones_like, the scaling
        assert launches <= 5, (counter.aten, counter.triton)
    assert "mul" not in counter.aten  # the backward never multiplies in a separate pass
    # eager calls take the fast path, not the registered custom ops (kept for torch.compile)
    assert not {"mixunlearn_loss", "contrastive_loss", "real_loss"} & set(counter.aten)


@pytest.mark.parametrize("kind", ["labels", "probabilities"])
@pytest.mark.parametrize("omega,reduction", [(1.0, "sum"), (0.5, "mean"), (0.0, "sum")])
def test_torch_backend_rounds_as_the_two_ops_did(kind, omega, reduction):
    """The trainer's CPU results are pinned bit for bit: on the reference backend the fused
    op gives exactly what ``contrastive_loss(...) + omega * real_loss(...)`` through autograd
    gave before it, value and gradients."""
    gen = seeded("bits", kind, omega)
    mix, forget, retain, q_f, q_r, lam, perm = _case(kind, 32, 40, 10, gen)
    args = (q_f, q_r, lam, perm)
    fused_value, fused_grads = _run(
        fastmix.MixUnlearnLoss(1.0, 10.0, 5.0, omega, reduction=reduction, backend="torch"), [mix, forget, retain], args
    )

    def two_ops(a, b, c, q_f, q_r, lam, perm):
        loss = fastmix.contrastive_loss(a, q_f, q_r, lam, 10.0, perm=perm, reduction=reduction, backend="torch")
        if omega == 0:
            return loss + 0 * (b.sum() + c.sum())  # the old module never touched the real-data logits
        return loss + omega * fastmix.real_loss(c, b, q_r, q_f, 5.0, reduction=reduction, backend="torch")

    value, grads = _run(two_ops, [mix, forget, retain], args)
    assert torch.equal(fused_value, value)
    assert torch.equal(fused_grads[0], grads[0])
    for f, g in zip(fused_grads[1:], grads[1:]):
        assert f is None if omega == 0 else torch.equal(f, g)


def test_trusted_inputs_skips_only_the_value_checks():
    gen = seeded("trusted")
    mix, forget, retain, q_f, q_r, lam, perm = _case("probabilities", 4, 6, 5, gen)
    lam[0] = 1.5  # out of [0, 1]: a value check catches it
    loss_fn = fastmix.MixUnlearnLoss(1.0, 0.7, 2.0, 1.0, backend="torch")
    with pytest.raises(ValueError, match="lam must lie in"):
        loss_fn(mix, forget, retain, q_f, q_r, lam, perm)
    with fastmix.ops.debug.trusted_inputs():
        loss_fn(mix, forget, retain, q_f, q_r, lam, perm)  # the caller vouched for the values
        with pytest.raises(ValueError, match="must have B=4 rows"):  # shapes are still checked
            loss_fn(mix, forget[:3], retain, q_f, q_r, lam, perm)
        with fastmix.debug_checks(True), pytest.raises(ValueError, match="lam must lie in"):
            loss_fn(mix, forget, retain, q_f, q_r, lam, perm)
    with pytest.raises(ValueError, match="lam must lie in"):  # restored on leaving the block
        loss_fn(mix, forget, retain, q_f, q_r, lam, perm)
