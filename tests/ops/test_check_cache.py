"""The cache of metadata checks that passed (``_checks.Passed``): a call with the metadata of a
call that passed skips the metadata checks; any change of type, dtype, shape or device after
it is checked again and gets the same clear error as a first call."""
import pytest
import torch

import fastmix
from fastmix.ops import _checks, loss, mixup
from fastmix.ops.debug import debug_checks, trusted_inputs

B, C = 4, 5
CHECKED = {"checked": lambda: debug_checks(False), "trusted": trusted_inputs}


def _loss_args():
    gen = torch.Generator().manual_seed(0)
    logits = [torch.randn(B, C, generator=gen).requires_grad_() for _ in range(3)]
    targets = [torch.randint(0, C, (B,), generator=gen) for _ in range(2)]
    return [*logits, *targets, torch.rand(B, generator=gen), torch.randperm(B, generator=gen)]


def _mixup_args():
    gen = torch.Generator().manual_seed(1)
    x_f, x_r = torch.randn(B, 2, 3, 3, generator=gen), torch.randn(B + 1, 2, 3, 3, generator=gen)
    return [x_f, x_r, torch.rand(B, 1, 3, 3, generator=gen).requires_grad_(), torch.tensor([4, 0, 4, 1])]


@pytest.fixture(autouse=True)
def empty_caches():
    loss._PASSED.clear()
    mixup._PASSED.clear()
    yield
    loss._PASSED.clear()
    mixup._PASSED.clear()


def _counting(monkeypatch, module, name):
    """Counts the calls of ``module.name`` (the op's metadata checks)."""
    calls = []
    real = getattr(module, name)

    def counted(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.parametrize("mode", CHECKED)
def test_loss_skips_the_metadata_checks_only_for_metadata_seen(monkeypatch, mode):
    fn = fastmix.MixUnlearnLoss(0.1, 10.0, 5.0, 1.0, backend="torch")
    calls = _counting(monkeypatch, loss, "_check_logits")
    args = _loss_args()
    with CHECKED[mode]():
        first = fn(*args)
        fresh = [t.detach().clone().requires_grad_(t.requires_grad) for t in args]  # new tensors, same metadata
        second = fn(*fresh)
        assert len(calls) == 1 and len(loss._PASSED) == 1
        torch.testing.assert_close(second, first)
        fresh[3] = fresh[3][:3]  # another shape: checked
        with pytest.raises(ValueError, match="forget_target must have 4 rows"):
            fn(*fresh)
        assert len(calls) == 2


@pytest.mark.parametrize("mode", CHECKED)
def test_loss_after_a_cached_call_still_rejects_bad_metadata(mode):
    fn = fastmix.MixUnlearnLoss(0.1, 10.0, 5.0, 1.0, backend="torch")
    args = _loss_args()
    mix, forget, retain, y_f, y_r, lam, perm = args

    def bad(i, value):
        return [value if j == i else a for j, a in enumerate(args)]

    with CHECKED[mode]():
        fn(*args)
        cases = [
            (TypeError, "must share one dtype", bad(2, retain.double())),
            (TypeError, "mix_logits must be a floating-point tensor", bad(0, mix.long())),
            (TypeError, "mix_logits must be a torch.Tensor", bad(0, mix.tolist())),
            (ValueError, "forget_logits must have C=5 classes", bad(1, torch.randn(B, C + 1))),
            (ValueError, "one device", bad(4, y_r.to("meta"))),
            (ValueError, "one device", bad(1, forget.to("meta"))),
            (ValueError, "lam must be on cpu", bad(5, lam.to("meta"))),
            (ValueError, r"lam must be 0-d or have shape \(4,\)", bad(5, torch.rand(3))),
            (TypeError, "perm must be an int64 tensor", bad(6, perm.int())),
            (ValueError, r"perm must have shape \(4,\)", bad(6, perm[:2])),
            (ValueError, "retain_target must have 4 rows", bad(4, y_r[:3])[:6] + [None]),
            (TypeError, "targets must all be int64 labels or all be probabilities", bad(4, torch.rand(B, C))),
            (ValueError, r"lam must lie in \[0, 1\]", bad(5, 1.5)),  # a float lam: checked on every call
        ]
        for exc, match, call in cases:
            fn(*args)  # the good metadata again, from the cache
            with pytest.raises(exc, match=match):
                fn(*call)


def test_loss_value_checks_still_run_on_a_cached_call():
    fn = fastmix.MixUnlearnLoss(0.1, 10.0, 5.0, 1.0, backend="torch")
    args = _loss_args()
    fn(*args)
    assert len(loss._PASSED) == 1
    bad = list(args)
    bad[3] = torch.tensor([0, C, 1, 1])  # same metadata, a label out of range
    with pytest.raises(ValueError, match=r"forget_target holds labels outside \[0, 5\)"):
        fn(*bad)
    bad = list(args)
    bad[5] = torch.tensor([0.5, 1.2, 0.1, 0.0])
    with pytest.raises(ValueError, match=r"lam must lie in \[0, 1\]"):
        fn(*bad)


def test_loss_cache_follows_the_backend_choice(monkeypatch):
    fn = fastmix.MixUnlearnLoss(0.1, 10.0, 5.0, 1.0)
    args = _loss_args()
    with trusted_inputs():
        fn(*args)
        monkeypatch.setenv("FASTMIX_BACKEND", "cuda")
        with pytest.raises(RuntimeError, match="fastmix backend 'cuda' cannot run"):
            fn(*args)
        monkeypatch.setenv("FASTMIX_BACKEND", "bogus")
        with pytest.raises(ValueError, match="backend must be one of"):
            fn(*args)


def test_loss_with_omega_zero_ignores_the_real_logits_in_its_key():
    fn = fastmix.MixUnlearnLoss(0.1, 10.0, 5.0, 0.0, backend="torch")
    args = _loss_args()
    expected = fn(*args)
    torch.testing.assert_close(fn(args[0], None, None, *args[3:]), expected)
    assert len(loss._PASSED) == 1


@pytest.mark.parametrize("mode", CHECKED)
def test_mixup_after_a_cached_call_still_rejects_bad_metadata(monkeypatch, mode):
    calls = _counting(monkeypatch, mixup, "_check_metadata")
    args = _mixup_args()
    x_f, x_r, mask, perm = args

    def bad(i, value):
        return [value if j == i else a for j, a in enumerate(args)]

    with CHECKED[mode]():
        first = fastmix.mixup(*args, backend="torch")
        again = fastmix.mixup(x_f.clone(), x_r.clone(), mask.detach().clone().requires_grad_(), perm.clone(),
                              backend="torch")
        assert len(calls) == 1 and len(mixup._PASSED) == 1
        torch.testing.assert_close(again, first)
        cases = [
            (TypeError, "must share one dtype", bad(1, x_r.double())),
            (TypeError, "x_forget must be a floating-point tensor", bad(0, x_f.long())),
            (ValueError, "x_retain must have the trailing shape", bad(1, torch.randn(B + 1, 2, 3, 4))),
            (ValueError, r"weight as a mask must have shape \(4, 1, 3, 3\)", bad(2, torch.rand(B, 2, 3, 3))),
            (ValueError, r"weight as per-sample lambdas must have shape \(4,\)", bad(2, torch.rand(3))),
            (ValueError, "one device", bad(2, mask.detach().to("meta"))),
            (ValueError, "one device", bad(3, perm.to("meta"))),
            (TypeError, "perm must be an int64 tensor", bad(3, perm.int())),
            (ValueError, "without perm, x_retain must have B=4 rows", bad(3, None)),
            (ValueError, r"weight must lie in \[0, 1\]", bad(2, 1.5)),  # a float weight: checked every call
        ]
        for exc, match, call in cases:
            fastmix.mixup(*args, backend="torch")
            with pytest.raises(exc, match=match):
                fastmix.mixup(*call, backend="torch")
    assert len(calls) == 1 + len(cases)


def test_mixup_value_checks_still_run_on_a_cached_call():
    args = _mixup_args()
    fastmix.mixup(*args, backend="torch")
    with pytest.raises(ValueError, match=r"perm holds indices outside \[0, 5\)"):
        fastmix.mixup(*args[:3], torch.tensor([0, 5, 1, 1]), backend="torch")
    with pytest.raises(ValueError, match="weight holds NaN"):
        fastmix.mixup(*args[:2], torch.full((B, 1, 3, 3), float("nan")), args[3], backend="torch")


def test_the_cache_is_bounded_and_starts_again():
    passed = _checks.Passed()
    for i in range(passed.LIMIT):
        passed.add((i,), i)
    assert len(passed) == passed.LIMIT
    passed.add(("new",), 0)
    assert list(passed.items()) == [(("new",), 0)]


def test_meta_tells_apart_what_the_checks_tell_apart():
    t = torch.zeros(2, 3)
    keys = [_checks.meta(x) for x in (t, t.double(), t[:1], t.to("meta"), torch.nn.Parameter(t), t.numpy(),
                                      t.tolist(), None, 0.5)]
    assert len(set(keys)) == len(keys)
    assert _checks.meta(t.clone()) == _checks.meta(t)
