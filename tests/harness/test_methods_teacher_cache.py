"""The original's logits, computed once per run for the distillation-style baselines
(scrub, bad_teacher), are bit for bit what a forward pass of the frozen original on
each batch gave, and the original runs once per set instead of once per batch."""
import pytest
import torch
from harness.method_checks import same_weights

from fastmix.harness.methods import common, get_method, scrub
from fastmix.harness.methods.common import frozen_copy, original_logits

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SCRUB = {"scrub_epochs": 2, "scrub_msteps": 2, "scrub_lr": 0.01}


@pytest.mark.parametrize("batch_size", [64, 256])  # scrub's and bad_teacher's batches
def test_cached_rows_equal_a_forward_pass_per_batch(digits_case, batch_size):
    ctx = digits_case.ctx
    teacher = frozen_copy(ctx.original)
    gen = torch.Generator().manual_seed(1)
    for which, x in (("forget", ctx.x_forget), ("retain", ctx.x_retain)):
        cached = original_logits(ctx, which)
        for idx in torch.randperm(x.shape[0], generator=gen).split(batch_size):
            with torch.no_grad():
                assert torch.equal(cached[idx], teacher(x[idx]))
    with pytest.raises(ValueError, match="which"):
        original_logits(ctx, "test")


class PerBatch:
    """Today's teacher before the cache: the frozen original run on each batch."""

    def __init__(self, ctx, which):
        self.model, self.x = frozen_copy(ctx.original), ctx.x_forget if which == "forget" else ctx.x_retain

    def __getitem__(self, idx):
        with torch.no_grad():
            return self.model(self.x[idx])


def test_scrub_with_the_cache_trains_the_model_a_per_batch_teacher_trains(digits_case, monkeypatch):
    cached = get_method("scrub")(digits_case.context(options=SCRUB)).model
    monkeypatch.setattr(scrub, "original_logits", PerBatch)
    assert same_weights(cached, get_method("scrub")(digits_case.context(options=SCRUB)).model)


@pytest.mark.parametrize("name, options", [("scrub", SCRUB), ("bad_teacher", {"bad_teacher_epochs": 2})])
def test_the_original_runs_once_per_set_not_once_per_batch(digits_case, name, options, monkeypatch):
    calls = []
    real = common.logits_of

    def counting(model, x, batch_size=1024):
        calls.append(x.shape[0])
        return real(model, x, batch_size)

    monkeypatch.setattr(common, "logits_of", counting)
    forwards, original = [], digits_case.ctx.original
    # the students and the bad teacher are deep copies, hook included: count the original's own calls
    hook = original.register_forward_hook(lambda m, *_: forwards.append(1) if m is original else None)
    try:
        get_method(name)(digits_case.context(options=options))
    finally:
        hook.remove()
    ctx = digits_case.ctx
    assert sorted(calls[-2:]) == sorted([ctx.x_forget.shape[0], ctx.x_retain.shape[0]])
    batches = sum(-(-x.shape[0] // 1024) for x in (ctx.x_forget, ctx.x_retain))
    assert len(forwards) == batches  # batches of 1024 over each set once, whatever the epochs
