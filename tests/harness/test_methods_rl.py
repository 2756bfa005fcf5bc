"""Random labelling on digits: D_f forgotten, D_r kept."""
import pytest
from harness.method_checks import run_on_digits, same_weights

from fastmix.harness.methods import get_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# 1 epoch, for a fast test.
OPTIONS = {"rl_epochs": 1}


def test_rl_forgets_d_f_keeps_d_r(digits_case):
    result, (f0, r0), (f1, r1) = run_on_digits(digits_case, "rl", OPTIONS)
    assert f1 < 10, "D_f is forgotten"
    assert r1 > r0 - 5, "D_r is kept"


def test_rl_same_seed_same_model_and_refuses_label_agnostic(digits_case):
    a = get_method("rl")(digits_case.context(options=OPTIONS)).model
    b = get_method("rl")(digits_case.context(options=OPTIONS)).model
    assert same_weights(a, b)
    assert not same_weights(a, get_method("rl")(digits_case.context(options=OPTIONS, seed=1)).model)
    with pytest.raises(ValueError, match="'rl'.*label-agnostic"):
        get_method("rl")(digits_case.context(options=OPTIONS, labels="agnostic"))
