"""The authors' choices as options: each changes what it should, and the
mask-against-lambda diagnostic."""
import pytest
import torch

from fastmix import MixUnlearn
from fastmix.harness.models import build_model
from fastmix.mixunlearn import steps
from fastmix.mixunlearn.config import LAGGED_MOMENTUM
from fastmix.mixunlearn.mixblock import MixBlock

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def digits_like(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def prepared(**kw):
    model = build_model("digits-cnn", 10, 1, seed=0)
    mu = MixUnlearn(model, seed=0, batch_size=8, epochs=1, lr=1e-3, **kw)
    run = mu.prepare(digits_like(8, 1), digits_like(8, 2))
    idx = torch.arange(8)
    return mu, run, run.batch(idx, idx)


def lambdas_seen(monkeypatch, state):
    """The lambdas the MixBlock and the losses receive."""
    seen = {"mask": [], "loss": []}
    real_mask, real_forward, real_gen = MixBlock.mask, type(state.loss_fn).forward, type(state.loss_fn).generator_loss

    def mask(self, h_f, h_r, lam, size):
        seen["mask"].append(lam)
        return real_mask(self, h_f, h_r, lam, size)

    def forward(self, mix_logits, f_logits, r_logits, q_f, q_r, lam, perm=None):
        seen["loss"].append(lam)
        return real_forward(self, mix_logits, f_logits, r_logits, q_f, q_r, lam, perm)

    def generator_loss(self, logits, q_f, q_r, lam):
        seen["loss"].append(lam)
        return real_gen(self, logits, q_f, q_r, lam)

    monkeypatch.setattr(MixBlock, "mask", mask)
    monkeypatch.setattr(type(state.loss_fn), "forward", forward)
    monkeypatch.setattr(type(state.loss_fn), "generator_loss", generator_loss)
    return seen


@pytest.mark.parametrize("per", ["sample", "batch"])
def test_lambda_per_batch_is_one_draw_for_the_whole_batch(monkeypatch, per):
    _, run, batch = prepared(lambda_per=per)
    seen = lambdas_seen(monkeypatch, run.state)
    steps.generator_step(run.state, batch)
    steps.unlearner_step(run.state, batch)
    assert len(seen["mask"]) == 2 and len(seen["loss"]) == 2
    for lam in seen["mask"] + seen["loss"]:
        assert lam.shape == (8,)
        assert (torch.unique(lam).numel() == 1) == (per == "batch")
    for a, b in zip(seen["mask"], seen["loss"]):  # the MixBlock's lambda channel is the loss's lambda
        assert torch.equal(a, b)


def test_paper_step_draws_one_lambda_per_batch_too(monkeypatch):
    mu = MixUnlearn(build_model("digits-cnn", 10, 1, seed=0), seed=0, batch_size=8, epochs=1, step="paper",
                    lambda_per="batch")
    seen = []
    real = MixBlock.mask
    monkeypatch.setattr(MixBlock, "mask", lambda self, hf, hr, lam, size: (seen.append(lam), real(self, hf, hr,
                                                                                                  lam, size))[1])
    mu.unlearn(digits_like(16, 1), digits_like(16, 2))
    assert len(seen) == 3 and all(torch.unique(lam).numel() == 1 for lam in seen)


def test_lagged_opponent_follows_the_ema_and_scores_in_train_mode():
    _, run, batch = prepared(generator_opponent="lagged")
    state = run.state
    opp, unl = state.opponent, state.unlearner
    assert opp is not None and opp is not unl
    assert all(torch.equal(a, b) for a, b in zip(opp.parameters(), unl.parameters()))  # starts as f_U
    assert not any(p.requires_grad for p in opp.parameters())
    calls = []
    opp.register_forward_hook(lambda m, i, o: calls.append(("opponent", m.training)))
    unl.register_forward_hook(lambda m, i, o: calls.append(("unlearner", m.training)))
    before = [p.detach().clone() for p in opp.parameters()]
    steps.generator_step(state, batch)
    assert calls == [("opponent", True)]
    assert all(torch.equal(a, b) for a, b in zip(before, opp.parameters()))  # G's step leaves it
    steps.unlearner_step(state, batch)
    assert calls[1:] == [("unlearner", True)]
    for b, o, u in zip(before, opp.parameters(), unl.parameters()):
        torch.testing.assert_close(o, LAGGED_MOMENTUM * b + (1 - LAGGED_MOMENTUM) * u, rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(b, o) for b, o in zip(before, opp.parameters()))


def test_lagged_opponent_runs_in_both_steps():
    for step in ("fast", "paper"):
        mu = MixUnlearn(build_model("digits-cnn", 10, 1, seed=0), seed=0, batch_size=8, epochs=1, step=step,
                        generator_opponent="lagged")
        mu.unlearn(digits_like(16, 1), digits_like(16, 2))
        assert all(torch.isfinite(torch.tensor(mu.history["generator"] + mu.history["unlearner"])))


def test_paper_init_normal_weights_zero_biases():
    torch.manual_seed(0)
    block = MixBlock(256, init="paper")
    for conv in (block.q, block.k, block.v):
        assert torch.count_nonzero(conv.bias) == 0
    w = torch.cat([block.q.weight.flatten(), block.k.weight.flatten()]).detach()
    assert abs(float(w.std()) - 0.01) < 0.0005 and abs(float(w.mean())) < 0.0005
    torch_default = MixBlock(256)
    assert float(torch_default.q.weight.detach().std()) > 0.02 and torch.count_nonzero(torch_default.q.bias) > 0
    mu, run, _ = prepared(mixblock_init="paper")
    assert all(torch.count_nonzero(b) == 0 for n, b in run.state.mixblock.named_parameters() if n.endswith("bias"))


def test_nearest_upsampling_gives_piecewise_constant_masks():
    torch.manual_seed(0)
    h_f, h_r, lam = torch.randn(3, 8, 4, 4), torch.randn(3, 8, 4, 4), torch.rand(3)
    near = MixBlock(8, upsample="nearest").mask(h_f, h_r, lam, (8, 8))
    blocks = near.view(3, 1, 4, 2, 4, 2)
    assert torch.equal(blocks, blocks[:, :, :, :1, :, :1].expand_as(blocks))
    torch.manual_seed(0)
    bilinear = MixBlock(8, upsample="bilinear").mask(h_f, h_r, lam, (8, 8)).view(3, 1, 4, 2, 4, 2)
    assert not torch.equal(bilinear, bilinear[:, :, :, :1, :, :1].expand_as(bilinear))


def test_mask_stats_bin_every_mix_against_lambda():
    model = build_model("digits-cnn", 10, 1, seed=0)
    mu = MixUnlearn(model, seed=0, batch_size=8, epochs=2, lr=1e-3)
    mu.unlearn(digits_like(20, 1), digits_like(40, 2))
    s = mu.mask_stats
    assert set(s) == {"bins", "count", "mean_lambda", "mean_mask"} and len(s["bins"]) == 10
    assert sum(s["count"]) == 2 * 20  # every forget row of every epoch's unlearner step
    for (lo, hi), c, lam, m in zip(s["bins"], s["count"], s["mean_lambda"], s["mean_mask"]):
        if c == 0:
            assert lam is None and m is None
        else:
            assert lo <= lam <= hi and 0.0 <= m <= 1.0
    beta = MixUnlearn(model, seed=0, batch_size=8, epochs=1, mask="beta")
    beta.unlearn(digits_like(8, 1), digits_like(8, 2))
    assert beta.mask_stats is None


def test_defaults_are_the_measured_choices():
    """RESULTS.md (issue 13): fastmix's own choice for three, the authors' nearest upsampling."""
    mu = MixUnlearn(build_model("digits-cnn", 10, 1, seed=0))
    cfg = mu.config
    assert (cfg.lambda_per, cfg.generator_opponent, cfg.mixblock_init, cfg.mask_upsample) == (
        "sample", "live", "torch", "nearest")
    _, run, _ = prepared()
    assert run.state.mixblock.upsample == "nearest"  # the setting reaches the MixBlock
    with pytest.raises(ValueError, match="lambda_per"):
        MixUnlearn(build_model("digits-cnn", 10, 1, seed=0), lambda_per="epoch")


def test_cli_flags_exist():
    import argparse

    from fastmix.cli.args import add_setting_flags, setting_values
    from fastmix.mixunlearn.config import MixUnlearnConfig

    parser = argparse.ArgumentParser()
    add_setting_flags(parser, MixUnlearnConfig)
    args = parser.parse_args(["--lambda-per", "batch", "--generator-opponent", "lagged", "--mixblock-init", "paper",
                              "--mask-upsample", "nearest"])
    values = setting_values(args, MixUnlearnConfig)
    assert {k: values[k] for k in ("lambda_per", "generator_opponent", "mixblock_init", "mask_upsample")} == dict(
        lambda_per="batch", generator_opponent="lagged", mixblock_init="paper", mask_upsample="nearest")
