"""NegGrad+ on digits: D_f forgotten, D_r kept."""
import pytest
from harness.method_checks import run_on_digits, same_weights

from fastmix.harness.methods import get_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# Alpha at the low end of the reference's range, 2 epochs, for a fast test.
OPTIONS = {"neggrad_alpha": 0.9, "neggrad_epochs": 2}


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
