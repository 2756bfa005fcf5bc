"""NegGrad+ on digits: D_f forgotten, D_r kept."""
import pytest
from harness.method_checks import same_weights

from fastmix.harness.methods import get_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# Alpha at the low end of the reference's range, 2 epochs, for a fast test.
OPTIONS = {"neggrad_alpha": 0.9, "neggrad_epochs": 2}


def test_neggrad_plus_forgets_d_f_keeps_d_r(digits_case):
    before = {k: v.clone() for k, v in digits_case.ctx.original.state_dict().items()}
    f0, r0 = digits_case.accuracies(digits_case.ctx.original)
    result = get_method("neggrad_plus")(digits_case.context(options=OPTIONS))
    f1, r1 = digits_case.accuracies(result.model)
    print(f"neggrad_plus: Train_f {f0:.1f} -> {f1:.1f}, Train_r {r0:.1f} -> {r1:.1f}")
    assert f0 > 95 and r0 > 95
    assert f1 < 10, "D_f is forgotten"
    assert r1 > r0 - 3, "D_r is kept"
    assert result.seconds > 0
    for k, v in digits_case.ctx.original.state_dict().items():
        assert v.equal(before[k]), f"{k} of the original changed"


def test_neggrad_plus_same_seed_same_model_and_refuses_label_agnostic(digits_case):
    a = get_method("neggrad_plus")(digits_case.context(options=OPTIONS)).model
    b = get_method("neggrad_plus")(digits_case.context(options=OPTIONS)).model
    assert same_weights(a, b)
    assert not same_weights(a, get_method("neggrad_plus")(digits_case.context(options=OPTIONS, seed=1)).model)
    with pytest.raises(ValueError, match="'neggrad_plus'.*label-agnostic"):
        get_method("neggrad_plus")(digits_case.context(options=OPTIONS, labels="agnostic"))
