"""One full unlearning step: the unlearner's iteration of SPEC 6.

Each case draws ``lam ~ Beta(alpha, alpha)`` and a random pairing, makes the mask
with fastmix's MixBlock from cached features of the frozen model (no gradient),
mixes, runs the unlearner on the mixes and both real batches in one forward pass,
and takes an Adam step on ``L_mix + omega * L_real`` (label-aware targets: integer
labels), on the trainer's models (fastmix.models). The implementations:

* ``eager``: that step written with bench_eager's mixup and loss, autograd through them;
* ``compile``: the same with ``torch.compile`` of mixup + model forward + loss;
* ``fastmix-<backend>``: the trainer's own step, ``MixUnlearn._unlearner_step``, with
  the ops on that backend.
"""
import pytest
import torch

import bench_eager as eager
from bench_common import DEVICE, IMPLS, LAYOUTS, ON_GPU, compile_fn, impl_skip, run_case
from fastmix.mixblock import MixBlock
from fastmix.models import MnistCNN, ResNet18
from cases import smoke_skip

B = 32
ALPHA, TAU_GEN, TAU_MIX, TAU_REAL, OMEGA = 0.75, 1.0, 10.0, 10.0, 1.0
LR = 5e-5


# name: (model class, image shape (C, H, W), shape of its feature layer's output (C, h, w))
MODELS = {
    "mnist-cnn": (MnistCNN, (1, 28, 28), (32, 7, 7)),
    "resnet18": (ResNet18, (3, 32, 32), (256, 8, 8)),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("impl", IMPLS)
def test_unlearning_step(benchmark, impl, model_name, layout):
    backend = impl_skip(impl)
    if model_name == "resnet18" and not ON_GPU:
        pytest.skip("ResNet-18 steps take seconds each on this CPU; the step group times it on a GPU only")
    cls, (C, H, W), feat = MODELS[model_name]
    smoke_skip(impl, (B, C, H, W), [(B, 1, 28, 28)], layout)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    torch.manual_seed(0)
    model = cls().to(DEVICE).to(memory_format=fmt).train()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    torch.manual_seed(1)
    mixblock = MixBlock(feat[0]).to(DEVICE).to(memory_format=fmt).requires_grad_(False)

    def make_inputs():
        x_f = torch.randn(B, C, H, W, device=DEVICE).contiguous(memory_format=fmt)
        x_r = torch.randn(B, C, H, W, device=DEVICE).contiguous(memory_format=fmt)
        h_f = torch.randn(B, *feat, device=DEVICE).relu_().contiguous(memory_format=fmt)
        h_r = torch.randn(B, *feat, device=DEVICE).relu_().contiguous(memory_format=fmt)
        y_f = torch.randint(0, 10, (B,), device=DEVICE)
        y_r = torch.randint(0, 10, (B,), device=DEVICE)
        return x_f, x_r, h_f, h_r, y_f, y_r

    def mask(lam, h_f, h_r, perm):
        with torch.no_grad():
            return mixblock.mask(h_f, h_r.index_select(0, perm), lam, (H, W))

    if impl in ("eager", "compile"):
        def forward_loss(x_f, x_r, mask, perm, y_f, y_r, lam):
            x_mix = eager.mixup(x_f, x_r, mask, perm)
            logits = model(torch.cat([x_mix, x_r, x_f]))
            return eager.mixunlearn_loss(
                logits[:B], logits[2 * B:], logits[B:2 * B], y_f, y_r, lam, perm, TAU_MIX, TAU_REAL, OMEGA
            )

        if impl == "compile":
            forward_loss = compile_fn(forward_loss)

        def step(x_f, x_r, h_f, h_r, y_f, y_r):
            lam = eager.sample_beta(B, ALPHA, DEVICE)
            perm = torch.randperm(B, device=DEVICE)
            loss = forward_loss(x_f, x_r, mask(lam, h_f, h_r, perm), perm, y_f, y_r, lam)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.detach()
    else:
        import fastmix
        from fastmix.unlearn import MixUnlearn

        trainer = MixUnlearn(
            model, feature_layer=model.feature_layer, backend=backend, alpha=ALPHA, tau_gen=TAU_GEN,
            tau_mix=TAU_MIX, tau_real=TAU_REAL, omega=OMEGA, lr=LR, batch_size=B,
        )
        trainer.mixblock = mixblock
        loss_fn = fastmix.MixUnlearnLoss(TAU_GEN, TAU_MIX, TAU_REAL, OMEGA, backend=backend)
        gen = torch.Generator(device=DEVICE).manual_seed(0)

        def step(x_f, x_r, h_f, h_r, y_f, y_r):
            return trainer._unlearner_step(model, loss_fn, opt, x_f, x_r, h_f, h_r, y_f, y_r, (H, W), gen)

    benchmark.group = f"unlearning-step {model_name} B={B} fp32 {layout}"
    run_case(
        benchmark, impl=impl, make_inputs=make_inputs, fn=step, bytes_moved=None,
        min_rounds=10, op="unlearning-step", shape=[B, C, H, W], dtype="fp32", layout=layout, model=model_name,
        mask="mixblock",
    )
