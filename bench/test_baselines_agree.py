"""The baselines compute what fastmix computes, so the timings compare like with like.

Plain tests (no benchmark fixture): ``--benchmark-only`` skips them, the smoke run
(``pytest bench --benchmark-disable``) runs them. fp32 on every backend usable here.
"""
import bench_eager as eager
import pytest
import torch
from bench_common import DEVICE, ON_GPU

import fastmix

BACKENDS = [
    name for name, s in fastmix.backends(DEVICE).items()
    if s.usable and (ON_GPU or name == "torch")  # the Triton interpreter is tested in tests/, not here
]


def close(a, b, rtol=2e-5, atol=1e-6):
    torch.testing.assert_close(a.float(), b.float(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sharpen_agrees(backend):
    z = torch.randn(64, 37, device=DEVICE) * 3
    close(fastmix.sharpen(z, 0.3, backend=backend), eager.sharpen(z, 0.3))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_mixup_and_mask_gradient_agree(backend, layout):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x_f = torch.randn(6, 3, 9, 7, device=DEVICE).contiguous(memory_format=fmt)
    x_r = torch.randn(6, 3, 9, 7, device=DEVICE).contiguous(memory_format=fmt)
    perm = torch.randperm(6, device=DEVICE)
    g = torch.randn(6, 3, 9, 7, device=DEVICE)
    outs = []
    for fn in (lambda m: eager.mixup(x_f, x_r, m, perm), lambda m: fastmix.mixup(x_f, x_r, m, perm, backend=backend)):
        torch.manual_seed(0)  # the same mask for both
        mask = torch.rand(6, 1, 9, 7, device=DEVICE).requires_grad_(True)
        out = fn(mask)
        outs.append((out, torch.autograd.grad(out, mask, g)[0]))
    close(outs[1][0], outs[0][0])
    close(outs[1][1], outs[0][1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("targets", ["soft", "labels"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_and_gradients_agree(backend, targets):
    B, C = 24, 11
    logits = [torch.randn(B, C, device=DEVICE, dtype=torch.float32) * 2 for _ in range(3)]
    if targets == "soft":
        q_f, q_r = (torch.softmax(torch.randn(B, C, device=DEVICE) / 0.3, dim=1) for _ in range(2))
    else:
        q_f, q_r = (torch.randint(0, C, (B,), device=DEVICE) for _ in range(2))
    lam = torch.rand(B, device=DEVICE)
    perm = torch.randperm(B, device=DEVICE)
    module = fastmix.MixUnlearnLoss(1.0, 10.0, 5.0, 2.0, backend=backend)
    results = []
    for fn in (
        lambda m, f, r: eager.mixunlearn_loss(m, f, r, q_f, q_r, lam, perm, 10.0, 5.0, 2.0),
        lambda m, f, r: module(m, f, r, q_f, q_r, lam, perm),
    ):
        leaves = [t.clone().requires_grad_(True) for t in logits]
        loss = fn(*leaves)
        results.append((loss, torch.autograd.grad(loss, leaves)))
    (loss_e, grads_e), (loss_f, grads_f) = results
    close(loss_f, loss_e, rtol=1e-5, atol=1e-4)
    for a, b in zip(grads_f, grads_e):
        close(a, b, rtol=1e-4, atol=1e-5)
