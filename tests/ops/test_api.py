"""sample_lambda, MixUnlearnLoss, debug_checks, backends() and `fastmix info`."""
import os
import subprocess
import sys

import pytest
import spec64
import torch
from tolerance import assert_close_to_exact

import fastmix
from fastmix.ops.debug import debug_checks_enabled, value_checks_wanted
from fastmix.ops.sampling import beta_variance


@pytest.mark.parametrize("alpha", [0.3, 0.75, 1.0, 5.0])
def test_sample_lambda_follows_beta(alpha):
    gen = torch.Generator().manual_seed(11)
    lam = fastmix.sample_lambda(200_000, alpha, generator=gen)
    assert lam.shape == (200_000,) and lam.dtype == torch.float32
    assert bool(((lam >= 0) & (lam <= 1)).all())
    # Beta(a, a): mean 1/2, variance 1/(4(2a+1)); the standard error at n=2e5 is ~1e-3 of each
    assert abs(float(lam.mean()) - 0.5) < 0.005
    assert abs(float(lam.var()) / beta_variance(alpha) - 1) < 0.02
    # and the share below 0.1 matches the distribution's (computed by numeric integration)
    grid = torch.linspace(0, 0.1, 200_001, dtype=torch.float64)[1:]
    density = grid ** (alpha - 1) * (1 - grid) ** (alpha - 1)
    norm = torch.exp(2 * torch.lgamma(torch.tensor(alpha,
                                                   dtype=torch.float64)) - torch.lgamma(torch.tensor(2 * alpha,
                                                                                                     dtype=torch.float64)))
    cdf_01 = float(density.mean() * 0.1 / norm)
    if alpha < 1:  # the integrable singularity at 0: add the part the grid misses analytically
        cdf_01 += float((0.1 / 200_000) ** alpha / alpha / norm)
    assert abs(float((lam < 0.1).double().mean()) - cdf_01) < 0.01


def test_sample_lambda_is_reproducible_and_on_device():
    a = fastmix.sample_lambda(7, 0.5, generator=torch.Generator().manual_seed(3))
    b = fastmix.sample_lambda(7, 0.5, generator=torch.Generator().manual_seed(3))
    c = fastmix.sample_lambda(7, 0.5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert fastmix.sample_lambda(0, 1.0).shape == (0,)
    assert fastmix.sample_lambda(3, 1.0, device="cpu", dtype=torch.float64).dtype == torch.float64


def test_mixunlearn_loss_combines_the_terms():
    gen = torch.Generator().manual_seed(5)
    B, C = 6, 4
    mix, forget, retain = (torch.randn(B, C, generator=gen, dtype=torch.float64) for _ in range(3))
    y_f = torch.randint(0, C, (B,), generator=gen)
    y_r = torch.randint(0, C, (B,), generator=gen)
    lam = torch.rand(B, generator=gen, dtype=torch.float64)
    perm = torch.randperm(B, generator=gen)
    loss_fn = fastmix.MixUnlearnLoss(tau_gen=0.1, tau_mix=10.0, tau_real=5.0, omega=2.0)
    value = loss_fn(mix, forget, retain, y_f, y_r, lam, perm)
    exact = spec64.contrastive(mix, y_f, y_r, lam, 10.0, perm=perm) + 2.0 * spec64.real(retain, forget, y_r, y_f, 5.0)
    assert_close_to_exact(value, exact, torch.float64, "L_mix + omega L_real")
    gen_value = loss_fn.generator_loss(mix, y_f, y_r, lam, perm)
    assert_close_to_exact(gen_value, -spec64.contrastive(mix, y_f, y_r, lam, 0.1, perm=perm), torch.float64, "L_gen")
    targets = loss_fn.targets(mix)
    assert_close_to_exact(targets, spec64.sharpen(mix, 0.3), torch.float64, "targets")
    # omega = 0 drops L_real entirely: the real-data logits are not even needed
    no_real = fastmix.MixUnlearnLoss(0.1, 10.0, 5.0, omega=0.0)(mix, None, None, y_f, y_r, lam, perm)
    assert_close_to_exact(no_real, spec64.contrastive(mix, y_f, y_r, lam, 10.0, perm=perm), torch.float64, "L_mix")


def test_debug_checks_switch():
    assert not debug_checks_enabled()
    meta = torch.empty(3, device="meta")
    assert value_checks_wanted(torch.empty(3)) and not value_checks_wanted(meta)
    with fastmix.debug_checks(True):
        assert debug_checks_enabled() and value_checks_wanted(meta)
    assert not debug_checks_enabled()
    with pytest.raises(TypeError, match="enabled must be a bool"):
        fastmix.debug_checks("yes")


def test_backends_report():
    report = fastmix.backends()
    assert set(report) == {"torch", "triton", "cuda", "cpu"}
    assert report["torch"].usable
    for status in report.values():
        assert status.reason
    if not torch.cuda.is_available():
        assert not report["cuda"].usable
        cpu = fastmix.backends("cpu")
        assert cpu["triton"].usable == (os.environ.get("TRITON_INTERPRET") == "1")
    from fastmix.backends import cpu_backend

    assert fastmix.backends("cpu")["cpu"].usable == (cpu_backend.load_error() is None)
    assert not fastmix.backends("meta")["cpu"].usable


def test_default_backend_on_cpu_is_the_cpp_one_when_it_loads(monkeypatch):
    from fastmix.backends import cpu_backend, resolve_backend

    monkeypatch.delenv("FASTMIX_BACKEND", raising=False)
    cpu = torch.device("cpu")
    default = "cpu" if cpu_backend.load_error() is None else "torch"
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert resolve_backend(None, cpu, dtype) == default
        assert resolve_backend("auto", cpu, dtype) == default
    # the C++ kernels compute in float32: float64 data stays with the reference
    assert resolve_backend(None, cpu, torch.float64) == "torch"
    assert resolve_backend("torch", cpu) == "torch"
    monkeypatch.setenv("FASTMIX_BACKEND", "torch")  # read at every call
    assert resolve_backend(None, cpu) == "torch"
    monkeypatch.setenv("FASTMIX_BACKEND", "")
    assert resolve_backend(None, cpu) == default
    if default == "cpu":
        assert resolve_backend("cpu", cpu) == "cpu"
        assert resolve_backend("cpu", cpu, torch.float64) == "torch"
        monkeypatch.setenv("FASTMIX_BACKEND", "torch")
        assert resolve_backend("cpu", cpu) == "cpu"  # the argument over the variable


def test_default_backend_on_cpu_without_the_library_is_the_reference():
    # a process whose library is missing: the default falls back, backend='cpu' says why
    script = (
        "import torch, fastmix\n"
        "from fastmix.backends import resolve_backend\n"
        "print(resolve_backend(None, torch.device('cpu')))\n"
        "print(fastmix.sharpen(torch.randn(2, 3), 0.5).shape)\n"
        "try:\n"
        "    fastmix.sharpen(torch.randn(2, 3), 0.5, backend='cpu')\n"
        "except RuntimeError as exc:\n"
        "    print(exc)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "FASTMIX_BACKEND"}
    env["FASTMIX_CPU_LIB"] = os.path.join(os.sep, "nonexistent", "libfastmix_cpu.so")
    result = subprocess.run([sys.executable, "-c", script], env=env, check=False, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "torch"
    assert lines[1] == "torch.Size([2, 3])"
    assert "fastmix backend 'cpu' cannot run on cpu" in lines[2] and "not built" in lines[2]


def test_kernels_are_installed_as_a_subpackage():
    import fastmix.kernels

    assert callable(fastmix.kernels.contrastive_forward)
    assert fastmix.kernels.__name__ == "fastmix.kernels"


@pytest.mark.parametrize("command", [["-m", "fastmix", "info"]])
def test_fastmix_info(command):
    result = subprocess.run([sys.executable, *command], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("fastmix ") and "torch" in out and "backends:" in out
    for name in ("torch", "triton", "cuda"):
        assert f"  {name}" in out
    assert "GPUs:" in out
    if not torch.cuda.is_available():
        assert "no GPU" in out


def test_every_subpackage_is_declared_for_installation():
    # pyproject.toml lists packages by hand (kernels/ is mapped to fastmix.kernels),
    # so a new subpackage that is not listed would vanish from `pip install .`
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parents[2]
    declared = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "fastmix").rglob("__init__.py")}
    found.add("fastmix.kernels")
    assert found == declared


def test_default_backend_leaves_float64_to_the_reference(monkeypatch):
    from fastmix.backends import resolve_backend

    monkeypatch.delenv("FASTMIX_BACKEND", raising=False)
    assert resolve_backend(None, torch.device("cuda"), torch.float64) == "torch"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none is visible here")
def test_sample_lambda_runs_inside_cuda_graph_capture():
    gen = torch.Generator(device="cuda").manual_seed(0)
    fastmix.sample_lambda(64, 0.75, generator=gen)  # warm-up outside the capture
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(gen)
    with torch.cuda.graph(graph):
        lam = fastmix.sample_lambda(64, 0.75, generator=gen)
    graph.replay()
    first = lam.clone()
    graph.replay()
    assert not torch.equal(first, lam)  # each replay draws anew
    assert bool(((lam >= 0) & (lam <= 1)).all())
