"""Every public function rejects bad input with an error that names the argument."""
import math

import pytest
import torch

import fastmix

B, C = 4, 5


def _logits():
    return torch.randn(B, C)


def _labels(n=B):
    return torch.randint(0, C, (n,))


def _probs(n=B):
    return torch.softmax(torch.randn(n, C), 1)


def _raises(exc, match, fn, *args, **kwargs):
    with pytest.raises(exc, match=match):
        fn(*args, **kwargs)


BAD_SCALARS = [0.0, -1.0, math.nan, math.inf]


@pytest.mark.parametrize("T", BAD_SCALARS)
def test_sharpen_rejects_bad_temperature(T):
    _raises(ValueError, "T must be finite and positive", fastmix.sharpen, _logits(), T)


def test_sharpen_rejects_bad_logits():
    _raises(TypeError, "logits must be a torch.Tensor", fastmix.sharpen, [[1.0, 2.0]])
    _raises(TypeError, "logits must be a floating-point tensor", fastmix.sharpen, torch.ones(2, 3, dtype=torch.int64))
    _raises(ValueError, "logits must have at least 1 dimension", fastmix.sharpen, torch.tensor(1.0))
    _raises(TypeError, "T must be a Python float", fastmix.sharpen, _logits(), torch.tensor(0.3))


@pytest.mark.parametrize("alpha", BAD_SCALARS)
def test_sample_lambda_rejects_bad_alpha(alpha):
    _raises(ValueError, "alpha must be finite and positive", fastmix.sample_lambda, 4, alpha)


def test_sample_lambda_rejects_bad_n():
    _raises(ValueError, "n must be a non-negative int", fastmix.sample_lambda, -1, 0.5)
    _raises(ValueError, "n must be a non-negative int", fastmix.sample_lambda, 2.0, 0.5)


class TestMixup:
    def setup_method(self):
        self.x_f = torch.randn(B, 3, 6, 6)
        self.x_r = torch.randn(B + 2, 3, 6, 6)
        self.perm = torch.tensor([0, 5, 5, 1])

    def test_shapes(self):
        x_f, x_r, perm = self.x_f, self.x_r, self.perm
        _raises(ValueError, "x_retain must have the trailing shape", fastmix.mixup, x_f, torch.randn(6, 3, 6, 5),
                0.5, perm)
        _raises(ValueError, r"weight as per-sample lambdas must have shape \(4,\)", fastmix.mixup, x_f, x_r,
                torch.rand(3), perm)
        _raises(ValueError, r"weight as a mask must have shape \(4, 1, 6, 6\)", fastmix.mixup, x_f, x_r,
                torch.rand(B, 3, 6, 6), perm)
        _raises(ValueError, "weight must have 0 or 1 or 4 dimensions", fastmix.mixup, x_f, x_r, torch.rand(B, 6, 6),
                perm)
        _raises(ValueError, "a .* mask weight needs", fastmix.mixup, torch.randn(B, 36), torch.randn(B, 36),
                torch.rand(B, 1, 6, 6))
        _raises(ValueError, "without perm, x_retain must have B=4 rows", fastmix.mixup, x_f, x_r, 0.5)
        _raises(ValueError, "x_forget must have a batch dimension", fastmix.mixup, torch.tensor(1.0),
                torch.tensor(1.0), 0.5)

    def test_dtypes_and_devices(self):
        x_f, x_r, perm = self.x_f, self.x_r, self.perm
        _raises(TypeError, "x_forget must be a floating-point tensor", fastmix.mixup, x_f.long(), x_r.long(), 0.5, perm)
        _raises(TypeError, "must share one dtype", fastmix.mixup, x_f, x_r.double(), 0.5, perm)
        _raises(ValueError, "one device", fastmix.mixup, x_f, x_r.to("meta"), 0.5, perm)
        _raises(ValueError, "one device", fastmix.mixup, x_f, x_r, torch.rand(B, device="meta"), perm)
        _raises(TypeError, "weight must be a float", fastmix.mixup, x_f, x_r, "0.5", perm)

    def test_perm(self):
        x_f, x_r = self.x_f, self.x_r
        _raises(TypeError, "perm must be an int64 tensor", fastmix.mixup, x_f, x_r, 0.5, torch.tensor([0, 1, 2, 3],
                                                                                                      dtype=torch.int32))
        _raises(ValueError, r"perm must have shape \(4,\)", fastmix.mixup, x_f, x_r, 0.5, torch.tensor([0, 1]))
        outside = r"perm holds indices outside \[0, 6\)"
        _raises(ValueError, outside, fastmix.mixup, x_f, x_r, 0.5, torch.tensor([0, 1, 6, 2]))
        _raises(ValueError, outside, fastmix.mixup, x_f, x_r, 0.5, torch.tensor([0, -1, 2, 2]))

    def test_weight_values(self):
        x_f, x_r, perm = self.x_f, self.x_r, self.perm
        _raises(ValueError, r"weight must lie in \[0, 1\]", fastmix.mixup, x_f, x_r, 1.5, perm)
        _raises(ValueError, r"weight must lie in \[0, 1\]", fastmix.mixup, x_f, x_r, torch.tensor([0.1, 0.2, -0.1,
                                                                                                   0.5]), perm)
        _raises(ValueError, "weight holds NaN", fastmix.mixup, x_f, x_r, torch.full((B, 1, 6, 6), math.nan), perm)


class TestContrastiveLoss:
    def test_shapes(self):
        z, y = _logits(), _labels()
        loss = fastmix.contrastive_loss
        _raises(ValueError, "logits must have 2 dimensions", loss, z[0], y, y, 0.5, 1.0)
        _raises(ValueError, "logits must have 2 dimensions", loss, z[None], y, y, 0.5, 1.0)
        _raises(ValueError, "logits must have at least one row", loss, z[:0], y[:0], y[:0], 0.5, 1.0)
        _raises(ValueError, "forget_target must have 4 rows", loss, z, _labels(3), y, 0.5, 1.0)
        _raises(ValueError, r"forget_target as probabilities must have shape \(N, 5\)", loss, z, torch.rand(B, 6),
                _probs(), 0.5, 1.0)
        _raises(ValueError, "retain_target must have 4 rows", loss, z, y, _labels(7), 0.5, 1.0)
        _raises(ValueError, "forget_target as labels must be a 1-d int64", loss, z, y[:, None], y, 0.5, 1.0)
        _raises(ValueError, r"lam must be 0-d or have shape \(4,\)", loss, z, y, y, torch.rand(3), 1.0)

    def test_dtypes_and_devices(self):
        z, y = _logits(), _labels()
        loss = fastmix.contrastive_loss
        _raises(TypeError, "logits must be a floating-point tensor", loss, z.long(), y, y, 0.5, 1.0)
        _raises(TypeError, "forget_target must be int64 labels or floating-point", loss, z, y.int(), y, 0.5, 1.0)
        _raises(TypeError, "targets must all be int64 labels or all be probabilities", loss, z, y, _probs(), 0.5, 1.0)
        _raises(ValueError, "one device", loss, z, y, y.to("meta"), 0.5, 1.0)
        _raises(ValueError, "lam must be on cpu", loss, z, y, y, torch.rand(B, device="meta"), 1.0)
        _raises(TypeError, "lam must be a float or", loss, z, y, y, None, 1.0)

    def test_values(self):
        z, y = _logits(), _labels()
        loss = fastmix.contrastive_loss
        _raises(ValueError, r"forget_target holds labels outside \[0, 5\)", loss, z, torch.tensor([0, 5, 1, 1]), y,
                0.5, 1.0)
        _raises(ValueError, r"retain_target holds labels outside \[0, 5\)", loss, z, y, torch.tensor([0, -2, 1, 1]),
                0.5, 1.0)
        q = _probs()
        q[1, 2] = math.nan
        _raises(ValueError, "forget_target holds NaN", loss, z, q, _probs(), 0.5, 1.0)
        _raises(ValueError, "retain_target holds negative", loss, z, _probs(), -_probs(), 0.5, 1.0)
        _raises(ValueError, r"lam must lie in \[0, 1\]", loss, z, y, y, torch.tensor([0.5, 1.2, 0.1, 0.0]), 1.0)
        _raises(ValueError, "lam holds NaN", loss, z, y, y, torch.tensor(math.nan), 1.0)
        _raises(ValueError, r"lam must lie in \[0, 1\]", loss, z, y, y, -0.5, 1.0)

    def test_perm(self):
        z, y = _logits(), _labels()
        pool = _labels(9)
        loss = fastmix.contrastive_loss
        _raises(TypeError, "perm must be an int64 tensor", loss, z, y, pool, 0.5, 1.0, perm=torch.zeros(B,
                                                                                                        dtype=torch.int32))
        _raises(ValueError, r"perm must have shape \(4,\)", loss, z, y, pool, 0.5, 1.0, perm=torch.zeros(5,
                                                                                                         dtype=torch.int64))
        _raises(ValueError, r"perm holds indices outside \[0, 9\)", loss, z, y, pool, 0.5, 1.0,
                perm=torch.tensor([0, 9, 1, 2]))

    @pytest.mark.parametrize("tau", BAD_SCALARS)
    def test_tau(self, tau):
        y = _labels()
        _raises(ValueError, "tau must be finite and positive", fastmix.contrastive_loss, _logits(), y, y, 0.5, tau)
        _raises(ValueError, "tau must be finite and positive", fastmix.real_loss, _logits(), _logits(), y, y, tau)

    def test_reduction(self):
        y = _labels()
        _raises(ValueError, "reduction must be one of", fastmix.contrastive_loss, _logits(), y, y, 0.5, 1.0,
                reduction="none")
        _raises(ValueError, "reduction must be one of", fastmix.real_loss, _logits(), _logits(), y, y, 1.0,
                reduction="avg")


class TestRealLoss:
    def test_shapes_and_kinds(self):
        loss = fastmix.real_loss
        z_r, z_f = torch.randn(6, C), torch.randn(3, C)
        _raises(ValueError, "same number of classes", loss, z_r, torch.randn(3, C + 1), _labels(6), _labels(3), 1.0)
        _raises(TypeError, "must share one dtype", loss, z_r, z_f.double(), _labels(6), _labels(3), 1.0)
        _raises(ValueError, "retain_target must have 6 rows", loss, z_r, z_f, _labels(3), _labels(3), 1.0)
        _raises(ValueError, "forget_target must have 3 rows", loss, z_r, z_f, _labels(6), _labels(6), 1.0)
        _raises(TypeError, "targets must all be", loss, z_r, z_f, _labels(6), _probs(3), 1.0)
        _raises(ValueError, "forget_logits must have at least one row", loss, z_r, z_f[:0], _labels(6), _labels(0), 1.0)
        _raises(ValueError, r"forget_target holds labels outside \[0, 5\)", loss, z_r, z_f, _labels(6),
                torch.tensor([1, 2, 99]), 1.0)
        _raises(ValueError, "one device", loss, z_r, z_f.to("meta"), _labels(6), _labels(3), 1.0)


class TestMixUnlearnLoss:
    @pytest.mark.parametrize("name", ["tau_gen", "tau_mix", "tau_real", "sharpen_T"])
    def test_temperatures(self, name):
        kwargs = {"tau_gen": 0.1, "tau_mix": 10.0, "tau_real": 5.0, "omega": 1.0, "sharpen_T": 0.3}
        kwargs[name] = -1.0
        _raises(ValueError, f"{name} must be finite and positive", fastmix.MixUnlearnLoss, **kwargs)

    def test_omega_and_reduction(self):
        _raises(ValueError, "omega must be a finite float >= 0", fastmix.MixUnlearnLoss, 0.1, 10.0, 5.0, -1.0)
        _raises(ValueError, "omega must be a finite float >= 0", fastmix.MixUnlearnLoss, 0.1, 10.0, 5.0, math.nan)
        _raises(ValueError, "reduction must be one of", fastmix.MixUnlearnLoss, 0.1, 10.0, 5.0, 1.0, reduction="x")


class TestBackendChoice:
    def test_unknown_backend(self):
        _raises(ValueError, "backend must be one of", fastmix.sharpen, _logits(), 0.3, backend="cudnn")

    def test_cuda_backend_on_cpu_says_why(self):
        _raises(RuntimeError, "fastmix backend 'cuda' cannot run on cpu: ", fastmix.sharpen, _logits(), 0.3,
                backend="cuda")

    def test_triton_on_cpu_needs_the_interpreter(self, monkeypatch):
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        _raises(RuntimeError, "TRITON_INTERPRET=1", fastmix.sharpen, _logits(), 0.3, backend="triton")

    def test_environment_variable_chooses(self, monkeypatch):
        monkeypatch.setenv("FASTMIX_BACKEND", "cuda")
        _raises(RuntimeError, "fastmix backend 'cuda' cannot run", fastmix.sharpen, _logits(), 0.3)
        monkeypatch.setenv("FASTMIX_BACKEND", "bogus")
        _raises(ValueError, "backend must be one of", fastmix.sharpen, _logits(), 0.3)
        monkeypatch.setenv("FASTMIX_BACKEND", "torch")
        assert fastmix.sharpen(_logits(), 0.3).shape == (B, C)


# --- issue 12: arguments that used to give silent garbage ---------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sample_lambda_refuses_an_alpha_whose_draws_overflow(dtype):
    largest = torch.finfo(dtype).max / 4
    _raises(ValueError, "alpha must be at most", fastmix.sample_lambda, 4, largest * 1.5, dtype=dtype)
    lam = fastmix.sample_lambda(4, largest, dtype=dtype, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(lam, torch.full_like(lam, 0.5))  # was all zeros at 2e38 in float32


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("T", [1e-40, 1e-300, 5e-324, 1e-4])
def test_sharpen_at_a_tiny_temperature_is_the_argmax(backend, T):
    if not fastmix.backends("cpu")[backend].usable:
        pytest.skip(f"backend {backend} is not usable here")
    z = torch.tensor([[0.5, 2.0, -1.0], [3.0, 3.0, 1.0], [-1e30, 0.0, 1e30]])
    out = fastmix.sharpen(z, T, backend=backend)
    expected = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(out, expected)  # was NaN (z / T overflowed)
