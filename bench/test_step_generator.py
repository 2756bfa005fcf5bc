"""The generator's step of SPEC 6 (every ``gen_interval``-th iteration, 4 in the paper).

``lam ~ Beta(alpha, alpha)``, identity pairing; the MixBlock makes the mask with
gradient, the unlearner (in eval mode, frozen) scores the mixes, and the MixBlock
takes an Adam step on ``L_gen = -C_tau_gen``; no gradient reaches the unlearner's
weights. Implementations as in test_step.py: the eager step, ``torch.compile`` of
mask + mixup + model forward + loss, and the trainer's ``fastmix.mixunlearn.steps.generator_step``.
"""
import bench_eager as eager
import pytest
import torch
from bench_common import DEVICE, IMPLS, LAYOUTS, Settings, compile_fn, run_case
from step_common import ALPHA, GEN_LR, MODELS, TAU_GEN, B, batch_of, setup_step, state_for

from fastmix.mixunlearn.steps import generator_step


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("impl", IMPLS)
def test_generator_step(benchmark, impl, model_name, layout):
    if impl == "compile" and Settings.smoke:
        pytest.skip("smoke run (--benchmark-disable): the unlearner step's case covers torch.compile of a step")
    s = setup_step(impl, model_name, layout)
    model, mixblock, size = s.model, s.mixblock, s.size
    gen_params = list(mixblock.parameters())
    opt_g = torch.optim.Adam(gen_params, lr=GEN_LR)

    if impl in ("eager", "compile"):
        def forward_loss(x_f, x_r, h_f, h_r, y_f, y_r, lam):
            mask = mixblock.mask(h_f, h_r, lam, size)
            logits = model(eager.mixup(x_f, x_r, mask))
            return -eager.contrastive_loss(logits, y_f, y_r, lam, TAU_GEN)

        if impl == "compile":
            forward_loss = compile_fn(forward_loss)

        def step(x_f, x_r, h_f, h_r, y_f, y_r):
            lam = eager.sample_beta(B, ALPHA, DEVICE)
            model.eval()
            loss = forward_loss(x_f, x_r, h_f, h_r, y_f, y_r, lam)
            model.train()
            grads = torch.autograd.grad(loss, gen_params)
            for p, g in zip(gen_params, grads):
                p.grad = g
            opt_g.step()
            return loss.detach()
    else:
        state = state_for(s, mixblock_opt=opt_g)

        def step(*inputs):
            return generator_step(state, batch_of(*inputs))

    benchmark.group = f"generator-step {model_name} B={B} fp32 {layout}"
    run_case(
        benchmark, impl=impl, make_inputs=s.make_inputs, fn=step, bytes_moved=None, min_rounds=10,
        op="generator-step", shape=[B, *s.image], dtype="fp32", layout=layout, model=model_name, mask="mixblock",
    )
