"""NegGrad+ on digits: D_f forgotten, D_r kept."""
import pytest
import torch
from harness.method_checks import run_on_digits, same_weights

from fastmix.harness.methods import get_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# Plain SGD as the reference's: on digits a few epochs either forget nothing or, at a
# larger lr or smaller alpha, collapse D_r too; this point forgets and keeps D_r.
OPTIONS = {"neggrad_alpha": 0.97, "neggrad_lr": 0.05, "neggrad_epochs": 6}


def test_neggrad_plus_forgets_d_f_keeps_d_r(digits_case):
    result, (f0, r0), (f1, r1) = run_on_digits(digits_case, "neggrad_plus", OPTIONS)
    assert f1 < 10, "D_f is forgotten"
    assert r1 > r0 - 3, "D_r is kept"


def test_neggrad_plus_same_seed_same_model_and_refuses_label_agnostic(digits_case):
    a = get_method("neggrad_plus")(digits_case.context(options=OPTIONS)).model
    b = get_method("neggrad_plus")(digits_case.context(options=OPTIONS)).model
    assert same_weights(a, b)
    assert not same_weights(a, get_method("neggrad_plus")(digits_case.context(options=OPTIONS, seed=1)).model)
    with pytest.raises(ValueError, match="'neggrad_plus'.*label-agnostic"):
        get_method("neggrad_plus")(digits_case.context(options=OPTIONS, labels="agnostic"))


def test_neggrad_plus_steps_with_plain_sgd_as_its_reference(digits_case, monkeypatch):
    # SCRUB's notebooks build SGD(lr, weight_decay=0.0) for train_negrad: momentum 0.9
    # would make every step about ten times larger than the reference's at the same lr
    from fastmix.harness.methods import neggrad_plus

    made = []
    monkeypatch.setattr(neggrad_plus, "fit", lambda opt, *args, **kw: made.append(opt))
    get_method("neggrad_plus")(digits_case.context(options=OPTIONS))
    (opt,) = made
    assert type(opt) is torch.optim.SGD
    assert {k: opt.defaults[k] for k in ("lr", "momentum", "weight_decay", "nesterov")} == \
        {"lr": 0.05, "momentum": 0.0, "weight_decay": 0.0, "nesterov": False}
