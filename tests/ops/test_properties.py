"""Property-based tests of the public ops: random shapes, strides, dtypes and values
(valid or not). Each call either returns what the float64 spec (spec64) returns, within
tolerance.py's bounds for its dtype, or raises fastmix's ValueError / TypeError naming the
argument at fault. Never NaN or zeros in silence."""
import re

import pytest
import spec64
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tolerance import assert_close_to_exact

import fastmix

BACKENDS = ["torch"] + (["cpu"] if fastmix.backends("cpu")["cpu"].usable else [])
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# what a bad value may be: out of range, NaN, infinite
BAD_FLOATS = [0.0, -1.0, float("nan"), float("inf"), -float("inf")]


def _names_an_argument(exc: Exception, names) -> bool:
    return any(re.search(rf"\b{re.escape(n)}\b", str(exc)) for n in names)


def _call(fn, names):
    """fn() or None when it raised a fastmix error naming one of ``names``."""
    try:
        return fn()
    except (ValueError, TypeError) as exc:
        assert _names_an_argument(exc, names), f"the error names no argument of {names}: {exc}"
        return None


@st.composite
def logits_tensors(draw, rows=None, cols=None, dtypes=DTYPES):
    """(rows, cols) logits of a random dtype, values and layout (contiguous, every other
    column of a wider tensor, a transpose, or an expanded row)."""
    B = rows if rows is not None else draw(st.integers(1, 9))
    C = cols if cols is not None else draw(st.integers(1, 40))
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0, 20.0]))
    z = torch.randn(B, C, generator=torch.Generator().manual_seed(seed)) * scale
    layout = draw(st.sampled_from(["contiguous", "strided", "transposed", "expanded"]))
    z = z.to(dtype)
    if layout == "strided":
        z = torch.cat([z, z], 1)[:, ::2]
    elif layout == "transposed":
        z = z.t().contiguous().t()
    elif layout == "expanded":
        z = z[:1].expand(B, C)
    return z


@st.composite
def targets(draw, n, C, labels):
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    if labels:
        t = torch.randint(0, C, (n,), generator=gen)
        if draw(st.integers(0, 9)) == 0:  # sometimes a label out of range
            t[draw(st.integers(0, n - 1))] = draw(st.sampled_from([-1, C, C + 7]))
        return t
    t = torch.softmax(torch.randn(n, C, generator=gen) * 2, 1)
    if draw(st.integers(0, 9)) == 0:  # sometimes a NaN or negative probability
        t[draw(st.integers(0, n - 1)), 0] = draw(st.sampled_from([float("nan"), -0.5, float("inf")]))
    return t


def _tau(draw):
    return draw(st.one_of(st.floats(0.05, 10.0), st.sampled_from(BAD_FLOATS)))


def _lam(draw, B):
    seed = draw(st.integers(0, 2**31 - 1))
    lam = torch.rand(B, generator=torch.Generator().manual_seed(seed))
    if draw(st.integers(0, 9)) == 0:
        lam[0] = draw(st.sampled_from([1.5, -0.1, float("nan")]))
    return lam


def _grads(fn, leaves):
    leaves = [z.detach().clone().requires_grad_() for z in leaves]
    value = fn(*leaves)
    if value is None:
        return None, None
    return value.detach(), torch.autograd.grad(value, leaves)


@SETTINGS
@given(z=logits_tensors(), T=st.one_of(st.floats(1e-3, 10.0), st.sampled_from(BAD_FLOATS + [1e-40])),
       backend=st.sampled_from(BACKENDS))
def test_sharpen(z, T, backend):
    out = _call(lambda: fastmix.sharpen(z, T, backend=backend), ["T", "logits"])
    if out is None:
        return
    assert out.dtype == z.dtype and out.shape == z.shape
    assert_close_to_exact(out, torch.softmax((z.double() - z.double().amax(1, keepdim=True)) / T, 1), z.dtype,
                          "sharpen")
    if z.dtype == torch.float64 and T > 0.05:
        assert_close_to_exact(out, spec64.sharpen(z, T), z.dtype, "sharpen (power form)")


@SETTINGS
@given(n=st.integers(0, 64), alpha=st.one_of(st.floats(1e-3, 1e6), st.floats(1e37, 1e39), st.sampled_from(BAD_FLOATS)),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**31 - 1))
def test_sample_lambda(n, alpha, dtype, seed):
    lam = _call(lambda: fastmix.sample_lambda(n, alpha, generator=torch.Generator().manual_seed(seed), dtype=dtype),
                ["alpha"])
    if lam is None:
        return
    assert lam.shape == (n,) and lam.dtype == dtype
    assert bool(((lam >= 0) & (lam <= 1)).all())
    if alpha > 1e6 and n:  # Beta(alpha, alpha) concentrates at 1/2 (standard deviation 1 / sqrt(8 alpha))
        assert float((lam - 0.5).abs().max()) < 1e-2


@SETTINGS
@given(data=st.data())
def test_mixup(data):
    draw = data.draw
    B, C, H, W = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    pool = B + draw(st.integers(0, 3))
    x_f = torch.randn(B, C, H, W, generator=gen).to(dtype)
    x_r = torch.randn(pool, C, H, W, generator=gen).to(dtype)
    if draw(st.booleans()):
        x_f, x_r = x_f.contiguous(memory_format=torch.channels_last), x_r.contiguous(memory_format=torch.channels_last)
    kind = draw(st.sampled_from(["float", "scalar", "per_sample", "mask"]))
    shape = {"float": None, "scalar": (), "per_sample": (B,), "mask": (B, 1, H, W)}[kind]
    weight = draw(st.floats(0, 1)) if shape is None else torch.rand(shape, generator=gen).to(dtype)
    if draw(st.integers(0, 9)) == 0:  # sometimes a weight outside [0, 1]
        weight = 1.5 if shape is None else weight.fill_(float("nan"))
    perm = torch.randint(0, pool, (B,), generator=gen)
    if draw(st.integers(0, 9)) == 0:
        perm[0] = pool
    backend = draw(st.sampled_from(BACKENDS))
    out = _call(lambda: fastmix.mixup(x_f, x_r, weight, perm, backend=backend), ["weight", "perm"])
    if out is None:
        return
    w = torch.as_tensor(weight, dtype=torch.float64)
    assert out.dtype == dtype and out.shape == x_f.shape
    assert_close_to_exact(out, spec64.mixup(x_f, x_r, w, perm), dtype, "mixup")


@SETTINGS
@given(data=st.data())
def test_contrastive_loss(data):
    draw = data.draw
    z = draw(logits_tensors())
    B, C = z.shape
    labels = draw(st.booleans())
    pool = B + draw(st.integers(0, 4))
    q_f, q_r = draw(targets(B, C, labels)), draw(targets(pool, C, labels))
    perm = torch.randint(0, pool, (B,), generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
    lam, tau = _lam(draw, B), _tau(draw)
    reduction = draw(st.sampled_from(["sum", "mean"]))
    backend = draw(st.sampled_from(BACKENDS))

    def fn(logits):
        return _call(lambda: fastmix.contrastive_loss(logits, q_f, q_r, lam, tau, perm=perm, reduction=reduction,
                                                      backend=backend),
                     ["forget_target", "retain_target", "lam", "tau", "perm"])

    value, grads = _grads(fn, [z])
    if value is None:
        return
    exact, exact_grads = spec64.with_grads(spec64.contrastive, z, forget_target=q_f, retain_target=q_r,
                                           lam=lam.double(), tau=tau, perm=perm, reduction=reduction)
    _check(value, grads, exact, exact_grads, z.dtype)


def _check(value, grads, exact, exact_grads, dtype, loss_exact_in_float64=None):
    # the loss is computed in float32 (float64 for float64 logits): its bound is float32's
    f64 = dtype == torch.float64 if loss_exact_in_float64 is None else loss_exact_in_float64
    assert_close_to_exact(value, exact, torch.float64 if f64 else torch.float32, "loss")
    for g, e in zip(grads, exact_grads):
        assert g.dtype == dtype
        assert_close_to_exact(g, e, dtype, "grad")


@SETTINGS
@given(data=st.data())
def test_real_loss(data):
    draw = data.draw
    z_r = draw(logits_tensors())
    C = z_r.shape[1]
    z_f = draw(logits_tensors(cols=C, dtypes=[z_r.dtype]))
    labels = draw(st.booleans())
    q_r, q_f = draw(targets(z_r.shape[0], C, labels)), draw(targets(z_f.shape[0], C, labels))
    tau, reduction = _tau(draw), draw(st.sampled_from(["sum", "mean"]))
    backend = draw(st.sampled_from(BACKENDS))

    def fn(a, b):
        return _call(lambda: fastmix.real_loss(a, b, q_r, q_f, tau, reduction=reduction, backend=backend),
                     ["forget_target", "retain_target", "tau"])

    value, grads = _grads(fn, [z_r, z_f])
    if value is None:
        return
    exact, exact_grads = spec64.with_grads(spec64.real, z_r, z_f, retain_target=q_r, forget_target=q_f, tau=tau,
                                           reduction=reduction)
    _check(value, grads, exact, exact_grads, z_r.dtype)


@SETTINGS
@given(data=st.data())
def test_mixunlearn_loss(data):
    draw = data.draw
    mix = draw(logits_tensors())
    B, C = mix.shape
    N = B + draw(st.integers(0, 4))
    forget = draw(logits_tensors(rows=B, cols=C))
    retain = draw(logits_tensors(rows=N, cols=C, dtypes=[forget.dtype]))
    labels = draw(st.booleans())
    q_f, q_r = draw(targets(B, C, labels)), draw(targets(N, C, labels))
    perm = torch.randint(0, N, (B,), generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
    if draw(st.integers(0, 9)) == 0:
        perm[-1] = -1
    lam = _lam(draw, B)
    tau_mix, tau_real = draw(st.floats(0.05, 10.0)), draw(st.floats(0.05, 10.0))
    omega = draw(st.sampled_from([0.0, 0.5, 1.0, 3.0]))
    reduction = draw(st.sampled_from(["sum", "mean"]))
    backend = draw(st.sampled_from(BACKENDS))
    loss_fn = fastmix.MixUnlearnLoss(1.0, tau_mix, tau_real, omega, reduction=reduction, backend=backend)

    def fn(a, b, c):
        return _call(lambda: loss_fn(a, b, c, q_f, q_r, lam, perm), ["forget_target", "retain_target", "lam", "perm"])

    value, grads = _grads(fn, [mix, forget, retain]) if omega else _grads(lambda a: fn(a, None, None), [mix])
    if value is None:
        return

    def exact_fn(a, b=None, c=None):
        v = spec64.contrastive(a, q_f, q_r, lam.double(), tau_mix, perm=perm, reduction=reduction)
        return v + omega * spec64.real(c, b, q_r, q_f, tau_real, reduction=reduction) if omega else v

    exact, exact_grads = spec64.with_grads(exact_fn, *([mix, forget, retain] if omega else [mix]))
    all_f64 = mix.dtype == torch.float64 and (not omega or forget.dtype == torch.float64)
    _check(value, grads[:1], exact, exact_grads[:1], mix.dtype, all_f64)
    if omega:
        _check(value, grads[1:], exact, exact_grads[1:], forget.dtype, all_f64)


def test_hypothesis_is_declared_for_the_tests():
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parents[2]
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    assert any(dep.split(">")[0].split("=")[0].strip() == "hypothesis" for dep in extra)


pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
