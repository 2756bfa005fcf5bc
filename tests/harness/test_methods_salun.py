"""SalUn on digits: D_f forgotten, D_r kept, and only the salient half of the weights moves."""
import pytest
from harness.method_checks import run_on_digits, same_weights

from fastmix.harness.methods import get_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# 1 epoch, for a fast test.
OPTIONS = {"salun_epochs": 1}


def test_salun_forgets_d_f_with_half_the_weights(digits_case):
    result, (f0, r0), (f1, r1) = run_on_digits(digits_case, "salun", OPTIONS)
    assert f1 < 10, "D_f is forgotten"
    assert r1 > r0 - 5, "D_r is kept"
    changed = sum(int((p != q).sum()) for p, q in zip(result.model.parameters(), digits_case.ctx.original.parameters()))
    total = sum(p.numel() for p in result.model.parameters())
    assert result.extras["updated_weights"] == int(0.5 * total)
    assert 0 < changed <= result.extras["updated_weights"], "the mask is a hard constraint"


def test_salun_same_seed_same_model_and_refuses_label_agnostic(digits_case):
    a = get_method("salun")(digits_case.context(options=OPTIONS)).model
    b = get_method("salun")(digits_case.context(options=OPTIONS)).model
    assert same_weights(a, b)
    assert not same_weights(a, get_method("salun")(digits_case.context(options=OPTIONS, seed=1)).model)
    with pytest.raises(ValueError, match="'salun'.*label-agnostic"):
        get_method("salun")(digits_case.context(options=OPTIONS, labels="agnostic"))
