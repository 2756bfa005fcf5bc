"""Batch norm in the fast step: its one forward over [mixes; x_r; x_f] computes
what the paper step's three separate forwards compute, gradients and running statistics."""
import copy

import pytest
import torch
from mixunlearn.bn_net import bn_model
from torch import nn

from fastmix import MixUnlearn
from fastmix.mixunlearn import steps
from fastmix.mixunlearn.batchnorm import GroupBatchNorm, RowGroups, group_batchnorm, plain_batchnorm

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def shifted_data(n_f=8, n_r=8):
    """Forget images from a shifted and scaled distribution: per-part statistics differ."""
    g = torch.Generator().manual_seed(1)
    xf = 2.0 + 3.0 * torch.randn(n_f, 1, 8, 8, generator=g)
    xr = torch.randn(n_r, 1, 8, 8, generator=g)
    return (xf, torch.randint(0, 10, (n_f,), generator=g)), (xr, torch.randint(0, 10, (n_r,), generator=g))


def bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def cosine(a, b):
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


def fast_and_separate(**kw):
    """One fast unlearner step with SGD(lr=1) (so the weights move by minus the gradient)
    and the same step as separate forwards of the mixes, x_r, x_f on a copy of f_U. Returns
    the fast step's and the reference's (gradient, batch-norm buffers); ``union=True``
    runs the fast step's old single pass over the union."""
    union = kw.pop("union", False)
    mu = MixUnlearn(bn_model(), seed=0, batch_size=8, lr=1e-3, **{"channels_last": False, **kw})
    forget, retain = shifted_data()
    run = mu.prepare(forget, retain)
    state = run.state
    assert state.groups is not None
    if union:
        state.groups = None
    idx = torch.arange(8)
    batch = run.batch(idx, idx)
    reference = copy.deepcopy(state.unlearner)
    plain_batchnorm(reference)
    seen = {}
    real_mixup, real_forward = steps.mixup, type(state.loss_fn).forward

    def spy_mixup(*a, **k):
        seen["x_mix"] = real_mixup(*a, **k)
        return seen["x_mix"]

    def spy_forward(self, mix_logits, f_logits, r_logits, q_f, q_r, lam, perm=None):
        seen["lam"], seen["perm"] = lam, perm
        return real_forward(self, mix_logits, f_logits, r_logits, q_f, q_r, lam, perm)

    state.unlearner_opt = torch.optim.SGD(state.unlearner.parameters(), lr=1.0)
    before = torch.cat([p.detach().flatten().clone() for p in state.unlearner.parameters()])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(steps, "mixup", spy_mixup)
        mp.setattr(type(state.loss_fn), "forward", spy_forward)
        steps.unlearner_step(state, batch)
    after = torch.cat([p.detach().flatten() for p in state.unlearner.parameters()])
    fast = (before - after, bn_state(state.unlearner))

    reference.train()
    mix_logits = reference(seen["x_mix"].detach())  # the paper step's order: mixes, x_r, x_f
    real_r, real_f = reference(batch.x_r), reference(batch.x_f)
    loss = state.loss_fn(mix_logits, real_f, real_r, batch.q_f, batch.q_r, seen["lam"], seen["perm"])
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    ref = (torch.cat([g.flatten() for g in grads]), bn_state(reference))
    return fast, ref


@pytest.mark.parametrize("kw", [{}, dict(channels_last=True), dict(labels="agnostic", lambda_per="batch")])
def test_fast_step_computes_what_separate_forwards_compute(kw):
    (grad, buffers), (ref_grad, ref_buffers) = fast_and_separate(**kw)
    assert cosine(grad, ref_grad) > 0.99999
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-5)
    for k, v in ref_buffers.items():
        torch.testing.assert_close(buffers[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert int(buffers["stem.1.num_batches_tracked"]) == 3  # one batch per part, as three forwards count


def test_the_union_form_fails_the_same_check():
    """The single pass over the union (the old fast step): what the check above catches."""
    (grad, buffers), (ref_grad, ref_buffers) = fast_and_separate(union=True)
    assert cosine(grad, ref_grad) < 0.99
    assert not torch.allclose(buffers["stem.1.running_mean"], ref_buffers["stem.1.running_mean"], atol=1e-3)
    assert int(buffers["stem.1.num_batches_tracked"]) == 1


def test_generator_step_scores_with_running_statistics_as_the_paper_step():
    """The generator step runs f_U in eval mode: the running statistics, which it leaves alone."""
    mu = MixUnlearn(bn_model(), seed=0, batch_size=8, channels_last=False)
    run = mu.prepare(*shifted_data())
    state = run.state
    seen = []
    state.unlearner.register_forward_hook(lambda m, i, o: seen.append(m.training))
    before = bn_state(state.unlearner)
    idx = torch.arange(8)
    steps.generator_step(state, run.batch(idx, idx))
    assert seen == [False] and state.unlearner.training
    after = bn_state(state.unlearner)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_pooled_statistics_weigh_padding_rows_zero():
    """The torchrun form (sums, padding weighted zero) in one process: each part's rows are
    normalised as torch's batch norm normalises that part alone, and the running
    statistics move part after part."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
    ref = copy.deepcopy(bn)
    parts = [torch.randn(3, 4, 5, 5) * 2 + 1, torch.randn(4, 4, 5, 5), torch.randn(2, 4, 5, 5) - 3]
    padded = [torch.cat([p, p[-1:]]) for p in parts]  # one padding row each, as RowShard repeats the last row
    valid = [torch.tensor([1.0] * p.shape[0] + [0.0]) for p in parts]
    x = torch.cat(padded).requires_grad_(True)
    groups = RowGroups()
    module = GroupBatchNorm(bn, groups)
    with groups([p.shape[0] for p in padded], valid):
        y = module(x)
    keep = torch.cat(valid).bool()
    w = torch.randn_like(y) * keep.view(-1, 1, 1, 1)  # the padding rows' outputs are dropped, as after the gather
    (y * w).sum().backward()

    xs = [p.clone().requires_grad_(True) for p in parts]
    ys = [ref(p) for p in xs]  # three forwards, in order
    torch.testing.assert_close(y[keep], torch.cat(ys), rtol=1e-5, atol=1e-5)
    sum(((yi * wi).sum() for yi, wi in zip(ys, w[keep].split([3, 4, 2]))), torch.tensor(0.0)).backward()
    torch.testing.assert_close(x.grad[keep], torch.cat([xi.grad for xi in xs]), rtol=1e-4, atol=1e-5)
    assert torch.count_nonzero(x.grad[~keep]) == 0
    torch.testing.assert_close(bn.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-5)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(module, name), getattr(ref, name), rtol=1e-5, atol=1e-6, msg=name)


def test_swap_keeps_the_state_dict_and_undoes_itself():
    model = bn_model()
    before = model.state_dict()
    n = group_batchnorm(model, RowGroups())
    assert n == 3 and list(model.state_dict()) == list(before)
    x = torch.randn(4, 1, 8, 8)
    model.eval()
    out = model(x)
    plain_batchnorm(model)
    assert not any(isinstance(m, GroupBatchNorm) for m in model.modules())
    torch.testing.assert_close(model(x), out)


def test_unlearn_returns_plain_batch_norm_and_trains():
    model = bn_model()
    forget, retain = shifted_data(12, 16)
    mu = MixUnlearn(model, seed=0, batch_size=8, epochs=1, lr=1e-3)
    out = mu.unlearn(forget, retain)
    assert not any(isinstance(m, GroupBatchNorm) for m in out.modules())
    assert all(torch.isfinite(torch.tensor(mu.history["unlearner"])))
    # 2 steps of 3 parts each moved the running statistics
    key = "stem.1.num_batches_tracked"
    assert int(out.state_dict()[key]) == int(model.state_dict()[key]) + 6
