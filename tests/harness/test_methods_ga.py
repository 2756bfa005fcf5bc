"""Gradient ascent on digits: D_f's accuracy falls faster than D_r's."""
import pytest
from harness.method_checks import run_on_digits, same_weights

from fastmix.harness.methods import get_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# The reference's lr 1e-4 barely moves digits in a few steps; its maintainers advise raising it.
OPTIONS = {"ga_lr": 0.02, "ga_epochs": 5}


def test_ga_ascent_forgets_d_f_first(digits_case):
    result, (f0, r0), (f1, r1) = run_on_digits(digits_case, "ga", OPTIONS)
    assert f1 < 10, "D_f is forgotten"
    assert r1 > f1 + 30, "D_r suffers far less than D_f (GA is known to damage it too)"


def test_ga_same_seed_same_model_and_refuses_label_agnostic(digits_case):
    a = get_method("ga")(digits_case.context(options=OPTIONS)).model
    b = get_method("ga")(digits_case.context(options=OPTIONS)).model
    assert same_weights(a, b)
    assert not same_weights(a, get_method("ga")(digits_case.context(options=OPTIONS, seed=1)).model)
    with pytest.raises(ValueError, match="'ga'.*label-agnostic"):
        get_method("ga")(digits_case.context(options=OPTIONS, labels="agnostic"))
