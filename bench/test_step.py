"""One full unlearning step: the unlearner's iteration of SPEC 6 (every iteration).

Each case draws ``lam ~ Beta(alpha, alpha)`` and a random pairing, makes the mask
with fastmix's MixBlock from cached features of the frozen model (no gradient),
mixes, runs the unlearner on the mixes and both real batches in one forward pass,
and takes an Adam step on ``L_mix + omega * L_real`` (label-aware targets: integer
labels), on the trainer's models (fastmix.harness.models). The implementations:

* ``eager``: that step written with bench_eager's mixup and loss, autograd through them;
* ``compile``: the same with ``torch.compile`` of mixup + model forward + loss;
* ``fastmix-<backend>``: the trainer's own step, ``fastmix.mixunlearn.steps.unlearner_step``, with
  the ops on that backend, called one step at a time (the trainer's loop, CUDA graphs
  and all, is timed by test_trainer_speed.py).

The generator's step (every ``gen_interval``-th iteration) is in test_step_generator.py.
"""
import bench_eager as eager
import pytest
import torch
from bench_common import DEVICE, IMPLS, LAYOUTS, compile_fn, run_case
from step_common import ALPHA, LR, MODELS, OMEGA, TAU_MIX, TAU_REAL, B, batch_of, setup_step, state_for

from fastmix.mixunlearn.steps import unlearner_step


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("impl", IMPLS)
def test_unlearning_step(benchmark, impl, model_name, layout):
    s = setup_step(impl, model_name, layout)
    model, mixblock, size = s.model, s.mixblock.requires_grad_(False), s.size
    opt = torch.optim.Adam(model.parameters(), lr=LR)

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
            with torch.no_grad():
                mask = mixblock.mask(h_f, h_r.index_select(0, perm), lam, size)
            loss = forward_loss(x_f, x_r, mask, perm, y_f, y_r, lam)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.detach()
    else:
        state = state_for(s, unlearner_opt=opt)

        def step(*inputs):
            return unlearner_step(state, batch_of(*inputs))

    benchmark.group = f"unlearning-step {model_name} B={B} fp32 {layout}"
    run_case(
        benchmark, impl=impl, make_inputs=s.make_inputs, fn=step, bytes_moved=None, min_rounds=10,
        op="unlearning-step", shape=[B, *s.image], dtype="fp32", layout=layout, model=model_name, mask="mixblock",
    )
