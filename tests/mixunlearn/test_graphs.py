"""CUDA graphs of the fast step (fastmix.mixunlearn.graphs): the graph mode's loop, run uncaptured,
is the plain fast loop (on the CPU); captured, it matches itself uncaptured (GPU only)."""
import pytest
import torch
from mixunlearn.bn_net import bn_model

from fastmix import MixUnlearn
from fastmix.harness.models import build_model
from fastmix.mixunlearn.config import EngineOptions

HAS_CUDA = torch.cuda.is_available()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def data(device, n_f=50, n_r=120):
    g = torch.Generator().manual_seed(1)
    xf, yf = torch.randn(n_f, 1, 8, 8, generator=g), torch.randint(0, 10, (n_f,), generator=g)
    xr, yr = torch.randn(n_r, 1, 8, 8, generator=g), torch.randint(0, 10, (n_r,), generator=g)
    return (xf.to(device), yf.to(device)), (xr.to(device), yr.to(device))


def unlearn(device, graph_mode: bool, capture: bool, argsort: bool = True, model: str = "cnn", **kw):
    # B = 8 and 50 forget samples: 6 full batches an epoch (3 warm-up, then replays) and a short one
    model = bn_model() if model == "bn" else build_model("digits-cnn", 10, 1, seed=0)
    mu = MixUnlearn(model.to(device), seed=0, batch_size=8, epochs=3, lr=1e-3,
                    device=device, cuda_graphs=graph_mode if device.type == "cuda" else None, **kw)
    forget, retain = data(device)
    if kw.get("labels") == "agnostic":
        forget, retain = forget[0], retain[0]
    run = mu.prepare(forget, retain)
    run.plan.capture = capture
    run.state.pairing = "argsort" if argsort else "randperm"
    return mu.run(run), mu


CASES = [{}, dict(labels="agnostic"), dict(mask="beta"), dict(model="bn", generator_opponent="lagged")]


@pytest.mark.parametrize("kw", CASES)
def test_graph_mode_run_uncaptured_is_the_plain_fast_loop(monkeypatch, kw):
    """Static index buffers, the generator schedule and the eager short batch give, step
    for step, what the plain loop computes with the same pairing sampler."""
    cpu = torch.device("cpu")
    plain, mu_plain = unlearn(cpu, False, False, **kw)
    monkeypatch.setattr(EngineOptions, "use_cuda_graphs", lambda self, device: True)
    graphed, mu = unlearn(cpu, True, False, **kw)
    assert mu.history == mu_plain.history and len(mu.history["unlearner"]) == 21
    for a, b in zip(plain.state_dict().values(), graphed.state_dict().values()):
        assert torch.equal(a, b)


def test_cuda_graphs_are_refused_where_they_cannot_run():
    model = build_model("digits-cnn", 10, 1, seed=0)
    with pytest.raises(ValueError, match="needs a CUDA device.*--no-cuda-graphs"):
        MixUnlearn(model, cuda_graphs=True, device="cpu")
    with pytest.raises(ValueError, match="fp16.*--amp bf16"):
        MixUnlearn(model, cuda_graphs=True, amp="fp16", device="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device; none is visible here")
@pytest.mark.parametrize("kw", CASES + [dict(amp="bf16")])
def test_captured_steps_match_the_same_steps_uncaptured(kw):
    dev = torch.device("cuda")
    eager, mu_e = unlearn(dev, True, False, **kw)
    graphed, mu_g = unlearn(dev, True, True, **kw)
    torch.testing.assert_close(torch.tensor(mu_g.history["unlearner"]), torch.tensor(mu_e.history["unlearner"]),
                               rtol=1e-4, atol=1e-4)
    for (name, a), b in zip(eager.state_dict().items(), graphed.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)


def test_graph_mode_turns_the_autocast_cast_cache_off(monkeypatch):
    """PyTorch's rule for autocast under CUDA-graph capture; the plain loop keeps the cache."""
    seen = []
    real = torch.autocast

    def spy(*args, **kw):
        seen.append(kw.get("cache_enabled", True))
        return real(*args, **kw)

    monkeypatch.setattr(torch, "autocast", spy)
    cpu = torch.device("cpu")
    unlearn(cpu, False, False, amp="bf16")
    assert seen and all(seen)
    seen.clear()
    monkeypatch.setattr(EngineOptions, "use_cuda_graphs", lambda self, device: True)
    unlearn(cpu, True, False, amp="bf16")
    assert seen and not any(seen)
