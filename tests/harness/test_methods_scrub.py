"""SCRUB on digits: D_f forgotten, D_r kept."""
import pytest
from harness.method_checks import run_on_digits, same_weights

from fastmix.harness.methods import get_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# 2 epochs, both with a max step, and a larger lr, for a fast test.
OPTIONS = {"scrub_epochs": 2, "scrub_msteps": 2, "scrub_lr": 0.01}


def test_scrub_forgets_d_f_keeps_d_r(digits_case):
    result, (f0, r0), (f1, r1) = run_on_digits(digits_case, "scrub", OPTIONS)
    assert f1 < 10, "D_f is forgotten"
    assert r1 > r0 - 5, "D_r is kept"
    # Without the CE term (gamma 0) SCRUB reads no label, so it runs label-agnostic.
    c = digits_case.ctx
    agnostic = digits_case.context(options={**OPTIONS, "scrub_gamma": 0.0}, labels="agnostic",
                                   y_retain=(c.y_retain + 1) % 10)
    aware = digits_case.context(options={**OPTIONS, "scrub_gamma": 0.0})
    assert same_weights(get_method("scrub")(agnostic).model, get_method("scrub")(aware).model)


def test_scrub_same_seed_same_model_and_refuses_label_agnostic(digits_case):
    a = get_method("scrub")(digits_case.context(options=OPTIONS)).model
    b = get_method("scrub")(digits_case.context(options=OPTIONS)).model
    assert same_weights(a, b)
    assert not same_weights(a, get_method("scrub")(digits_case.context(options=OPTIONS, seed=1)).model)
    with pytest.raises(ValueError, match="'scrub'.*label-agnostic"):
        get_method("scrub")(digits_case.context(options=OPTIONS, labels="agnostic"))


def test_scrub_max_passes_take_their_own_batch_size(digits_case, monkeypatch):
    # the reference's del_batch_size: fewer ascent steps a max pass over D_f, D_r's batches unchanged
    from fastmix.harness.methods import scrub

    seen = {}

    def count(opt, loss_of, batches_of, **kw):
        for forget, idx in batches_of(0):
            seen.setdefault(forget, []).append(len(idx))

    monkeypatch.setattr(scrub, "fit", count)
    get_method("scrub")(digits_case.context(options={**OPTIONS, "scrub_forget_batch_size": 100}))
    n_f, n_r = digits_case.ctx.x_forget.shape[0], digits_case.ctx.x_retain.shape[0]
    assert seen[True] == [100] * (n_f // 100) + ([n_f % 100] if n_f % 100 else [])
    assert len(seen[False]) == -(-n_r // 64) and sum(seen[False]) == n_r
