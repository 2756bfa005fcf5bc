"""The unlearning loop (SPEC 6): what each step updates, the pairing of targets,
seeding, and models that are not CNNs."""
import pytest
import torch
from torch import nn

import fastmix
from fastmix import MixUnlearn
from fastmix.harness.models import build_model
from fastmix.mixunlearn import steps

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module):
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


def digits_like(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.fixture
def setup():
    """A prepared run of 8 forget and 8 retain samples, and its first batch."""
    torch.manual_seed(0)
    model = build_model("digits-cnn", 10, 1, seed=0)
    mu = MixUnlearn(model, seed=0, batch_size=8, epochs=1, lr=1e-3)
    xf, yf = digits_like(8, 1)
    xr, yr = digits_like(8, 2)
    run = mu.prepare((xf, yf), (xr, yr))
    idx = torch.arange(8)
    return run, run.batch(idx, idx)


def test_generator_step_updates_only_the_mixblock(setup):
    run, batch = setup
    state = run.state
    s_before, g_before = snapshot(state.unlearner), snapshot(state.mixblock)
    steps.generator_step(state, batch)
    assert changed(s_before, state.unlearner) == set()
    assert all(p.grad is None for p in state.unlearner.parameters())
    assert all(p.requires_grad for p in state.unlearner.parameters())  # unfrozen again
    assert changed(g_before, state.mixblock) == set(g_before)  # every MixBlock tensor moved


def test_unlearner_step_updates_only_the_unlearner(setup):
    run, batch = setup
    state = run.state
    s_before, g_before = snapshot(state.unlearner), snapshot(state.mixblock)
    steps.unlearner_step(state, batch)
    assert changed(g_before, state.mixblock) == set()
    assert all(p.grad is None for p in state.mixblock.parameters())
    assert changed(s_before, state.unlearner) == set(s_before)


def test_mixed_targets_follow_the_pairing(setup, monkeypatch):
    run, batch = setup
    state = run.state
    xf, xr, yf, yr = batch.x_f, batch.x_r, batch.q_f, batch.q_r
    seen = {}
    real_mixup, real_forward = steps.mixup, type(state.loss_fn).forward

    def spy_mixup(x_f, x_r, weight, perm=None, **kw):
        seen["mix_perm"], seen["weight"] = perm, weight
        out = real_mixup(x_f, x_r, weight, perm, **kw)
        seen["x_mix"] = out
        return out

    def spy_forward(self, mix_logits, f_logits, r_logits, q_f, q_r, lam, perm=None):
        seen["loss_perm"], seen["q_r"], seen["lam"], seen["mix_logits"] = perm, q_r, lam, mix_logits
        return real_forward(self, mix_logits, f_logits, r_logits, q_f, q_r, lam, perm)

    monkeypatch.setattr(steps, "mixup", spy_mixup)
    monkeypatch.setattr(type(state.loss_fn), "forward", spy_forward)
    state.unlearner_opt = torch.optim.SGD(state.unlearner.parameters(), lr=0.0)
    state.rng.manual_seed(3)
    loss = steps.unlearner_step(state, batch)
    perm = seen["mix_perm"]
    assert not torch.equal(perm, torch.arange(8))  # a real permutation was drawn
    assert torch.equal(seen["loss_perm"], perm) and torch.equal(seen["q_r"], yr)
    # row i mixes x_f[i] with x_r[perm[i]] ...
    m = seen["weight"]
    assert torch.allclose(seen["x_mix"], m * xf + (1 - m) * xr[perm], atol=1e-6)
    # ... and is scored against q_r[perm[i]]: the same loss as with targets permuted by hand
    mix_only = fastmix.contrastive_loss(seen["mix_logits"], yf, yr[perm], seen["lam"], state.config.tau_mix)
    with_perm = fastmix.contrastive_loss(seen["mix_logits"], yf, yr, seen["lam"], state.config.tau_mix, perm=perm)
    assert torch.allclose(mix_only, with_perm)
    assert torch.isfinite(loss)


def run(seed, **kw):
    model = build_model("digits-cnn", 10, 1, seed=0)
    xf, yf = digits_like(20, 1)
    xr, yr = digits_like(40, 2)
    mu = MixUnlearn(model, seed=seed, batch_size=8, epochs=2, lr=1e-3, **kw)
    return mu.unlearn((xf, yf), (xr, yr)), mu


def test_same_seed_same_model_and_original_untouched():
    a, mu = run(0)
    b, _ = run(0)
    c, _ = run(1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    fresh = build_model("digits-cnn", 10, 1, seed=0).state_dict()
    assert all(torch.equal(fresh[k], mu.model.state_dict()[k]) for k in fresh)
    assert len(mu.history["unlearner"]) == 6 and len(mu.history["generator"]) == 2  # 3 steps/epoch, G every 4th


@pytest.mark.parametrize(
    "kw",
    [dict(labels="agnostic"), dict(mask="beta"), dict(omega=0.0), dict(use_mix=False),
     dict(labels="agnostic", sharpen_T=1.0)],
)
def test_ablations_run(kw):
    model, mu = run(0, **kw)
    assert all(torch.isfinite(torch.tensor(v)) for v in mu.history["unlearner"])
    assert (mu.mixblock is None) == (kw.get("mask") == "beta")
    x_f, x_r, mask, x_mix, lam = mu.preview()
    assert x_mix.shape == x_f.shape and mask.shape[1] == 1


def test_bad_options():
    model = build_model("digits-cnn", 10, 1, seed=0)
    with pytest.raises(TypeError, match="unknown MixUnlearn options"):
        MixUnlearn(model, tau=1.0)
    with pytest.raises(ValueError, match="labels must be"):
        MixUnlearn(model, labels="maybe")
    with pytest.raises(ValueError, match="needs labels"):
        MixUnlearn(model).unlearn(torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8))


class TinyViT(nn.Module):
    """Patch embedding, a class token, one transformer layer, a linear head."""

    def __init__(self, dim=16, classes=10):
        super().__init__()
        self.embed = nn.Conv2d(1, dim, 2, stride=2)  # 8x8 -> 4x4 patches
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.Sequential(nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=True))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1)
        return self.head(self.blocks(t)[:, 0])


def test_a_transformer_works_through_its_patch_tokens():
    torch.manual_seed(0)
    vit = TinyViT()
    xf, yf = digits_like(16, 1)
    xr, yr = digits_like(32, 2)
    mu = MixUnlearn(vit, feature_layer="blocks.0", seed=0, batch_size=8, epochs=2, lr=1e-3)
    out = mu.unlearn((xf, yf), (xr, yr))
    assert mu.mixblock.in_channels == 16
    assert any(not torch.equal(a, b) for a, b in zip(out.state_dict().values(), vit.state_dict().values()))
    assert mu.preview()[2].shape == (8, 1, 8, 8)
