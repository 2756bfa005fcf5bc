"""How the unlearning loop runs: the paper-style step, the teacher
cache (its report and its refusal), on-device augmentation, mixed precision, options."""
import pytest
import torch
from mixunlearn.bn_net import bn_model

from fastmix import MixUnlearn
from fastmix.harness.models import build_model
from fastmix.mixunlearn.augment import crop_flip
from fastmix.mixunlearn.features import FrozenOriginal
from fastmix.mixunlearn.teacher_cache import TeacherCache

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def digits_like(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def run(seed=0, n_f=20, n_r=40, epochs=2, model="cnn", **kw):
    model = bn_model() if model == "bn" else build_model("digits-cnn", 10, 1, seed=0)
    xf, yf = digits_like(n_f, 1)
    xr, yr = digits_like(n_r, 2)
    mu = MixUnlearn(model, seed=seed, batch_size=8, epochs=epochs, lr=1e-3, **kw)
    return mu.unlearn((xf, yf), (xr, yr)), mu


def count_teacher_calls(monkeypatch):
    """The batch sizes of every pass of f_D (whole, or up to its feature layer)."""
    calls = []
    for name in ("forward", "features"):
        real = getattr(FrozenOriginal, name)

        def counting(self, x, real=real):
            calls.append(x.shape[0])
            return real(self, x)

        monkeypatch.setattr(FrozenOriginal, name, counting)
    return calls


def params_differ(a, b):
    return any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_paper_step_recomputes_the_teacher_every_batch(monkeypatch):
    calls = count_teacher_calls(monkeypatch)
    run(step="paper")
    # 2 epochs x 3 batches x (forget + retain), plus the feature-shape probe and the preview's 2
    assert len(calls) == 1 + 2 * 3 * 2 + 2
    calls.clear()
    run()
    # the fast step: the probe, D_f once, the retain samples each epoch draws for the first time, the preview
    assert calls[0] == 1 and calls[1] == 20 and calls[-2:] == [8, 8]
    assert len(calls) <= 1 + 1 + 2 + 2 and sum(calls[2:-2]) <= 40


def test_cache_fills_the_retain_side_as_epochs_first_draw_it(monkeypatch):
    """One epoch over 16 forget samples draws 16 of the 400 retain samples: f_D runs on
    those only, and the cached features are f_D's."""
    calls = count_teacher_calls(monkeypatch)
    _, mu = run(n_f=16, n_r=400, epochs=1)
    assert calls[1:-2] == [16, 16]
    caches = []
    real_init = TeacherCache.__init__
    monkeypatch.setattr(TeacherCache, "__init__",
                        lambda self, *a, **k: (real_init(self, *a, **k), caches.append(self))[0])
    run(n_f=16, n_r=400, epochs=3)
    cache = caches[0]
    done = cache.done_r
    assert 16 < int(done.sum()) <= 48
    torch.testing.assert_close(cache.feats[1][done], cache.original(cache.x_r[done])[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(cache.feats[0], cache.original(cache.x_f[:])[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kw", [{}, dict(labels="agnostic"), dict(mask="beta"), dict(use_mix=False), dict(omega=0.0)])
def test_paper_step_is_seeded_and_trains(kw):
    a, mu = run(step="paper", **kw)
    b, _ = run(step="paper", **kw)
    c, _ = run(seed=1, step="paper", **kw)
    assert not params_differ(a, b) and params_differ(a, c)
    assert len(mu.history["unlearner"]) == 6
    assert len(mu.history["generator"]) == (0 if kw.get("mask") == "beta" else 2)
    assert all(torch.isfinite(torch.tensor(mu.history["unlearner"])))
    assert params_differ(a, mu.model)


def test_paper_and_fast_steps_compute_the_same_objective():
    """Different random draws, the same loss: over full batches (the last batch of an
    epoch is short, and the sum reduction makes its loss smaller) the two steps' mean
    losses agree, with and without L_real, and with batch norm."""
    for kw in (dict(mask="beta"), dict(mask="beta", omega=0.0), dict(mask="beta", model="bn")):
        f = run(epochs=6, **kw)[1].history["unlearner"]
        r = run(epochs=6, step="paper", **kw)[1].history["unlearner"]
        full_f = [v for i, v in enumerate(f) if i % 3 != 2]
        full_r = [v for i, v in enumerate(r) if i % 3 != 2]
        mean_f, mean_r = sum(full_f) / len(full_f), sum(full_r) / len(full_r)
        assert abs(mean_f - mean_r) < 0.05 * abs(mean_f), (mean_f, mean_r)


def test_cache_gives_the_model_of_no_cache(monkeypatch):
    a, mu = run()
    assert mu.cache_info["cached"] and mu.cache_info["bytes"] == 60 * 32 * 4 * 4 * 4
    calls = count_teacher_calls(monkeypatch)
    b, mu_b = run(cache=False)
    assert not mu_b.cache_info["cached"] and "--no-cache" in mu_b.cache_info["reason"]
    assert len(calls) == 1 + 2 * 3 * 2 + 2
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_cache_reports_its_size_and_refuses_what_does_not_fit():
    lines = []
    run(labels="agnostic", log=lines.append)
    assert any("teacher cache: " in line and "MiB" in line and "--cache-limit-mb" in line for line in lines)
    with pytest.raises(ValueError, match=r"over its limit.*--cache-limit-mb.*--no-cache"):
        run(cache_limit_mb=0.01)
    _, mu = run(cache_limit_mb=0.01, cache=False)  # the way out the message names
    assert not mu.cache_info["cached"]


def test_augmentation_turns_the_cache_off_and_says_so(monkeypatch):
    lines = []
    calls = count_teacher_calls(monkeypatch)
    a, mu = run(augment="crop-flip", log=lines.append)
    assert not mu.cache_info["cached"] and "augment" in mu.cache_info["reason"]
    assert any("cache off" in line and "augment" in line for line in lines)
    assert len(calls) == 1 + 2 * 3 * 2 + 2
    b, _ = run(augment="crop-flip")
    assert not params_differ(a, b)  # augmentation draws from the seeded device generator


def test_crop_flip_shifts_and_flips_each_sample():
    x = torch.randn(16, 3, 8, 8)
    out = crop_flip(x, torch.Generator().manual_seed(0), pad=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    kinds = set()
    for i in range(16):
        found = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (0, 1)
                 if torch.equal(out[i], (lambda c: c.flip(-1) if f else c)(padded[i, :, dy:dy + 8, dx:dx + 8]))]
        assert found, f"sample {i} is no shifted/flipped copy of its input"
        kinds.add(found[0][2])
    assert kinds == {0, 1}


def test_bf16_autocast_tracks_fp32():
    _, full = run()
    _, half = run(amp="bf16")
    torch.testing.assert_close(torch.tensor(half.history["unlearner"][:3]), torch.tensor(full.history["unlearner"][:3]),
                               rtol=0.05, atol=0.5)


def test_bad_engine_options():
    model = build_model("digits-cnn", 10, 1, seed=0)
    with pytest.raises(ValueError, match="--cuda-graphs"):
        MixUnlearn(model, cuda_graphs=True)
    with pytest.raises(ValueError, match="step must be"):
        MixUnlearn(model, step="slow")
    with pytest.raises(ValueError, match="amp must be"):
        MixUnlearn(model, amp="fp8")
    with pytest.raises(ValueError, match="--paper-step"):
        MixUnlearn(model, step="paper", amp="bf16")
    with pytest.raises(ValueError, match="cache_limit_mb"):
        MixUnlearn(model, cache_limit_mb=-1)
    with pytest.raises(ValueError, match="augment"):
        MixUnlearn(model, augment="rotate")
    with pytest.raises(ValueError, match="flush_subnormals"):
        MixUnlearn(model, step="paper", flush_subnormals=True)


def test_channels_last_keeps_the_format_and_the_result(monkeypatch):
    import fastmix.mixunlearn.steps as unlearn_mod

    formats = []
    real_mixup = unlearn_mod.mixup

    def spy(x_f, x_r, weight, perm=None, **kw):
        out = real_mixup(x_f, x_r, weight, perm, **kw)
        formats.append(out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous())
        return out

    monkeypatch.setattr(unlearn_mod, "mixup", spy)
    g = torch.Generator().manual_seed(0)
    xf, xr = torch.randn(20, 3, 8, 8, generator=g), torch.randn(40, 3, 8, 8, generator=g)
    yf, yr = torch.randint(0, 10, (20,), generator=g), torch.randint(0, 10, (40,), generator=g)

    def run3(**kw):  # 3 channels: with 1, channels_last and contiguous are the same strides
        mu = MixUnlearn(build_model("digits-cnn", 10, 3, seed=0), seed=0, batch_size=8, epochs=2, lr=1e-3, **kw)
        return mu.unlearn((xf, yf), (xr, yr)), mu

    a, _ = run3(channels_last=False)
    assert formats and not any(formats)
    formats.clear()
    b, mu = run3()  # the default for a convolutional model, on the CPU too
    assert formats and all(formats)  # the fused mixup kept the images channels_last
    assert b.block1[0].weight.is_contiguous(memory_format=torch.channels_last)
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(x, y.contiguous(), rtol=1e-4, atol=1e-5)


def test_fp16_grad_scaler_path_runs():
    _, mu = run(amp="fp16", epochs=1)
    assert all(torch.isfinite(torch.tensor(mu.history["unlearner"])))


def test_cli_engine_flags(tmp_path, capsys):
    import json

    from fastmix.cli import main

    base = ["unlearn", "--train-epochs", "2", "--unlearn-epochs", "1", "--method", "mixunlearn", "--no-png",
            "--device", "cpu", "--quiet", "--models-dir", str(tmp_path / "models")]
    assert main([*base, "--paper-step", "--out", str(tmp_path / "ref")]) == 0
    res = json.loads((tmp_path / "ref" / "results.json").read_text())
    assert res["settings"]["options"]["step"] == "paper" and res["mixunlearn"]["seconds"] > 0
    capsys.readouterr()
    assert main([*base, "--cache-limit-mb", "0.001", "--out", str(tmp_path / "x")]) == 2
    assert "--cache-limit-mb" in capsys.readouterr().out
    assert main([*base, "--cuda-graphs", "--out", str(tmp_path / "x")]) == 2
    assert "--no-cuda-graphs" in capsys.readouterr().out
    assert main([*base, "--no-cache", "--augment", "crop-flip", "--amp", "bf16", "--no-flush-subnormals",
                 "--no-channels-last", "--out", str(tmp_path / "aug")]) == 0
    opts = json.loads((tmp_path / "aug" / "results.json").read_text())["settings"]["options"]
    assert opts["cache"] is False and opts["augment"] == "crop-flip" and opts["amp"] == "bf16"
    assert opts["flush_subnormals"] is False and opts["channels_last"] is False


def with_subnormal_weights(model, seed=0):
    """``model`` with a tenth of each weight set to +-subnormals (as weight decay leaves dead units)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            pick = torch.rand(p.shape, generator=g) < 0.1
            tiny = torch.finfo(p.dtype).tiny
            sub = tiny * torch.rand(p.shape, generator=g).clamp_min(1e-3) * torch.randn(p.shape, generator=g).sign()
            p.copy_(torch.where(pick, sub, p))
    return model


def test_flush_subnormals_zeroes_exactly_the_subnormals():
    from fastmix.mixunlearn.engine import flush_subnormals_

    tiny = torch.finfo(torch.float32).tiny
    lin = torch.nn.Linear(3, 2)
    values = torch.tensor([[tiny, -tiny / 2, tiny / 1e6], [-tiny, float("nan"), 0.5]])
    with torch.no_grad():
        lin.weight.copy_(values)
        lin.bias.copy_(torch.tensor([float("-inf"), -tiny * 0.999]))
    flush_subnormals_(lin)
    want = torch.tensor([[tiny, 0.0, 0.0], [-tiny, float("nan"), 0.5]])
    torch.testing.assert_close(lin.weight.detach(), want, equal_nan=True, rtol=0, atol=0)
    assert lin.bias[0] == float("-inf") and lin.bias[1] == 0


def test_fast_step_flushes_its_copies_not_the_callers_model(monkeypatch):
    import fastmix.mixunlearn.engine as engine_mod

    model = with_subnormal_weights(build_model("digits-cnn", 10, 1, seed=0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    xf, yf = digits_like(20, 1)
    xr, yr = digits_like(40, 2)
    flushed = []
    real = engine_mod.flush_subnormals_
    monkeypatch.setattr(engine_mod, "flush_subnormals_", lambda *m: (flushed.append(len(m)), real(*m))[1])

    def unlearn(**kw):
        mu = MixUnlearn(model, seed=0, batch_size=8, epochs=3, lr=1e-3, **kw)
        return mu.unlearn((xf, yf), (xr, yr))

    a = unlearn()  # on by default on the CPU: f_D, f_U and the MixBlock, then f_U and the MixBlock each later epoch
    assert flushed == [3, 2, 2]
    tiny = torch.finfo(torch.float32).tiny
    assert all(not ((p != 0) & (p.abs() < tiny)).any() for p in a.parameters())
    for k, v in model.state_dict().items():  # the caller's model keeps its subnormals
        assert torch.equal(v, before[k]), k
    flushed.clear()
    b = unlearn(flush_subnormals=False)
    assert flushed == []
    # values below finfo.tiny change the training by rounding at most
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
    unlearn(step="paper")
    assert flushed == []
