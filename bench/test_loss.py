"""loss: forward plus backward of ``MixUnlearnLoss`` (``L_mix + omega * L_real``, SPEC 4
and 6), gradients to all three logits, with sharpened soft targets (the label-agnostic
setting) and with integer labels (the label-aware setting, the trainer's default)."""
import bench_eager as eager
import pytest
import torch
from bench_common import DEVICE, DTYPES, OP_IMPLS, compile_fn, dtype_skip, impl_skip, run_case, tensor_bytes
from cases import LOGIT_SIZES, size_id, smoke_skip

TAU_GEN, TAU_MIX, TAU_REAL, OMEGA, T = 1.0, 10.0, 10.0, 1.0, 0.3


@pytest.mark.parametrize("targets", ["soft", "label"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("size", LOGIT_SIZES, ids=size_id)
@pytest.mark.parametrize("impl", OP_IMPLS)
def test_loss_forward_backward(benchmark, impl, size, dtype, targets):
    dtype_skip(dtype)
    backend = impl_skip(impl)
    smoke_skip(impl, size, LOGIT_SIZES, "contiguous" if targets == "soft" else "label")
    B, C = size
    dt = DTYPES[dtype]

    def make_inputs():
        logits = [torch.randn(B, C, device=DEVICE).mul_(2).to(dt).requires_grad_(True) for _ in range(3)]
        if targets == "soft":
            q_f, q_r = (torch.softmax(torch.randn(B, C, device=DEVICE) * 2 / T, dim=1).to(dt) for _ in range(2))
        else:
            q_f, q_r = (torch.randint(0, C, (B,), device=DEVICE) for _ in range(2))
        lam = torch.rand(B, device=DEVICE)
        perm = torch.randperm(B, device=DEVICE)
        return (*logits, q_f, q_r, lam, perm)

    if impl in ("eager", "compile"):
        def loss_fn(mix, forget, retain, q_f, q_r, lam, perm):
            return eager.mixunlearn_loss(mix, forget, retain, q_f, q_r, lam, perm, TAU_MIX, TAU_REAL, OMEGA)

        if impl == "compile":
            loss_fn = compile_fn(loss_fn)
    else:
        import fastmix

        module = fastmix.MixUnlearnLoss(TAU_GEN, TAU_MIX, TAU_REAL, OMEGA, sharpen_T=T, backend=backend)

        def loss_fn(mix, forget, retain, q_f, q_r, lam, perm):
            return module(mix, forget, retain, q_f, q_r, lam, perm)

    def fn(mix, forget, retain, q_f, q_r, lam, perm):
        loss = loss_fn(mix, forget, retain, q_f, q_r, lam, perm)
        return torch.autograd.grad(loss, (mix, forget, retain))

    mix, forget, retain, q_f, q_r, lam, _perm = make_inputs()
    benchmark.group = f"loss-fwd+bwd {size_id(size)} {dtype} {targets}"
    run_case(
        benchmark, impl=impl, make_inputs=make_inputs, fn=fn,
        # read three logits and two targets (or labels), write three gradients
        bytes_moved=tensor_bytes(mix, forget, retain, q_f, q_r, lam) + 3 * tensor_bytes(mix),
        large=size == LOGIT_SIZES[-1], op="loss-fwd+bwd", shape=list(size), dtype=dtype, layout="contiguous",
        targets=targets,
    )
