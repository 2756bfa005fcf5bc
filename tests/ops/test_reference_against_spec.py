"""The PyTorch reference (backend='torch') against the independent float64 spec."""
import pytest
import spec64
import torch
from tolerance import assert_close_to_exact

import fastmix


def _targets(kind, n, C, gen):
    if kind == "labels":
        return torch.randint(0, C, (n,), generator=gen)
    return torch.softmax(torch.randn(n, C, generator=gen, dtype=torch.float64) * 2, dim=1)


def _grads(fn, *logits):
    leaves = [z.detach().clone().requires_grad_() for z in logits]
    value = fn(*leaves)
    grads = torch.autograd.grad(value, leaves)
    return value.detach(), grads


@pytest.mark.parametrize("kind", ["labels", "probabilities"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("lam_kind", ["scalar", "per_sample"])
@pytest.mark.parametrize("B,C", [(1, 1), (3, 2), (8, 10), (5, 37)])
def test_contrastive_matches_spec(kind, reduction, lam_kind, B, C):
    gen = torch.Generator().manual_seed(B * 100 + C)
    logits = torch.randn(B, C, generator=gen, dtype=torch.float64) * 3
    pool = B + 4
    forget_t, retain_t = _targets(kind, B, C, gen), _targets(kind, pool, C, gen)
    perm = torch.randint(0, pool, (B,), generator=gen)
    lam_shape = () if lam_kind == "scalar" else (B,)
    lam = torch.rand(lam_shape, generator=gen, dtype=torch.float64)
    tau = 0.37

    value, (grad,) = _grads(
        lambda z: fastmix.contrastive_loss(z, forget_t, retain_t, lam, tau, perm=perm, reduction=reduction,
                                           backend="torch"),
        logits,
    )
    exact, (exact_grad,) = spec64.with_grads(
        spec64.contrastive, logits, forget_target=forget_t, retain_target=retain_t, lam=lam, tau=tau, perm=perm,
        reduction=reduction,
    )
    assert_close_to_exact(value, exact, torch.float64, "loss")
    assert_close_to_exact(grad, exact_grad, torch.float64, "grad")


@pytest.mark.parametrize("kind", ["labels", "probabilities"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("B_r,B_f,C", [(1, 1, 1), (4, 7, 10), (9, 2, 33)])
def test_real_loss_matches_spec(kind, reduction, B_r, B_f, C):
    gen = torch.Generator().manual_seed(B_r * 1000 + B_f * 10 + C)
    z_r = torch.randn(B_r, C, generator=gen, dtype=torch.float64) * 3
    z_f = torch.randn(B_f, C, generator=gen, dtype=torch.float64) * 3
    q_r, q_f = _targets(kind, B_r, C, gen), _targets(kind, B_f, C, gen)
    value, grads = _grads(
        lambda a, b: fastmix.real_loss(a, b, q_r, q_f, 5.0, reduction=reduction, backend="torch"), z_r, z_f
    )
    exact, exact_grads = spec64.with_grads(
        spec64.real, z_r, z_f, retain_target=q_r, forget_target=q_f, tau=5.0, reduction=reduction
    )
    assert_close_to_exact(value, exact, torch.float64, "loss")
    for g, e in zip(grads, exact_grads):
        assert_close_to_exact(g, e, torch.float64, "grad")


def test_retain_rows_stay_out_of_the_log_sum_exp():
    # SPEC 4: a row of B_r has no term inside log sum exp, so the loss moves with
    # a retain row's distance one for one, whatever tau is.
    z_r = torch.zeros(2, 3, dtype=torch.float64)
    z_f = torch.zeros(2, 3, dtype=torch.float64)
    labels = torch.tensor([0, 1])
    base = fastmix.real_loss(z_r, z_f, labels, labels, 0.01, backend="torch")
    shifted = z_r.clone()
    shifted[0, 0] = 50.0  # retain row 0 now predicts its label: distance 1 - 1/sqrt(3) -> ~0
    moved = fastmix.real_loss(shifted, z_f, labels, labels, 0.01, backend="torch")
    torch.testing.assert_close(base - moved, torch.tensor(1 - 3**-0.5, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["labels", "probabilities"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_loss_gradcheck_float64(kind, reduction):
    gen = torch.Generator().manual_seed(7)
    B, C, pool = 5, 6, 9
    z = torch.randn(B, C, generator=gen, dtype=torch.float64, requires_grad=True)
    z_r = torch.randn(3, C, generator=gen, dtype=torch.float64, requires_grad=True)
    q_f, q_r = _targets(kind, B, C, gen), _targets(kind, pool, C, gen)
    perm = torch.randint(0, pool, (B,), generator=gen)
    lam = torch.rand(B, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda z: fastmix.contrastive_loss(z, q_f, q_r, lam, 0.2, perm=perm, reduction=reduction, backend="torch"), (z,)
    )
    assert torch.autograd.gradcheck(
        lambda a, b: fastmix.real_loss(a, b, q_r[:3], q_f, 3.0, reduction=reduction, backend="torch"), (z_r, z)
    )


@pytest.mark.parametrize("weight_kind", ["scalar", "per_sample", "mask"])
def test_mixup_matches_spec_and_gradcheck(weight_kind):
    gen = torch.Generator().manual_seed(3)
    B, pool = 3, 5
    x_f = torch.randn(B, 2, 4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    x_r = torch.randn(pool, 2, 4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    shape = {"scalar": (), "per_sample": (B,), "mask": (B, 1, 4, 3)}[weight_kind]
    weight = torch.rand(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    perm = torch.tensor([4, 4, 0])
    out = fastmix.mixup(x_f, x_r, weight, perm, backend="torch")
    assert_close_to_exact(out, spec64.mixup(x_f, x_r, weight, perm), torch.float64, "mixup")
    assert torch.autograd.gradcheck(lambda a, b, w: fastmix.mixup(a, b, w, perm, backend="torch"), (x_f, x_r, weight))


def test_sharpen_matches_power_form_and_gradcheck():
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(4, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    assert_close_to_exact(fastmix.sharpen(z, 0.3, backend="torch"), spec64.sharpen(z, 0.3), torch.float64, "sharpen")
    assert torch.autograd.gradcheck(lambda z: fastmix.sharpen(z, 0.3, backend="torch"), (z,))


def test_nan_logits_give_nan_loss():
    z = torch.randn(4, 5)
    z[2, 1] = float("nan")
    labels = torch.tensor([0, 1, 2, 3])
    assert torch.isnan(fastmix.contrastive_loss(z, labels, labels, 0.5, 1.0, backend="torch"))
    assert torch.isnan(fastmix.real_loss(z, torch.randn(3, 5), labels, labels[:3], 1.0, backend="torch"))
    assert torch.isnan(fastmix.real_loss(torch.randn(3, 5), z, labels[:3], labels, 1.0, backend="torch"))
