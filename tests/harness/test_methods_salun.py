"""SalUn on digits: D_f forgotten, D_r kept, and only the salient half of the weights moves."""
import pytest
from harness.method_checks import same_weights

from fastmix.harness.methods import get_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# 1 epoch, for a fast test.
OPTIONS = {"salun_epochs": 1}


def test_salun_forgets_d_f_with_half_the_weights(digits_case):
    before = {k: v.clone() for k, v in digits_case.ctx.original.state_dict().items()}
    f0, r0 = digits_case.accuracies(digits_case.ctx.original)
    result = get_method("salun")(digits_case.context(options=OPTIONS))
    f1, r1 = digits_case.accuracies(result.model)
    print(f"salun: Train_f {f0:.1f} -> {f1:.1f}, Train_r {r0:.1f} -> {r1:.1f}")
    assert f0 > 95 and r0 > 95
    assert f1 < 10, "D_f is forgotten"
    assert r1 > r0 - 5, "D_r is kept"
    assert result.seconds > 0
    for k, v in digits_case.ctx.original.state_dict().items():
        assert v.equal(before[k]), f"{k} of the original changed"
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
