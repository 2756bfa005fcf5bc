"""l1-sparse on digits: D_f forgotten, D_r kept, the weights shrink."""
import pytest
from harness.method_checks import same_weights

from fastmix.harness.methods import get_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# A larger alpha and lr than the reference, 5 epochs, so digits forgets quickly.
OPTIONS = {"l1_epochs": 5, "l1_alpha": 0.005, "l1_lr": 0.05}


def test_l1_sparse_forgets_d_f_keeps_d_r(digits_case):
    before = {k: v.clone() for k, v in digits_case.ctx.original.state_dict().items()}
    f0, r0 = digits_case.accuracies(digits_case.ctx.original)
    result = get_method("l1_sparse")(digits_case.context(options=OPTIONS))
    f1, r1 = digits_case.accuracies(result.model)
    print(f"l1_sparse: Train_f {f0:.1f} -> {f1:.1f}, Train_r {r0:.1f} -> {r1:.1f}")
    assert f0 > 95 and r0 > 95
    assert f1 < 10, "D_f is forgotten"
    assert r1 > r0 - 5, "D_r is kept"
    assert result.seconds > 0
    for k, v in digits_case.ctx.original.state_dict().items():
        assert v.equal(before[k]), f"{k} of the original changed"
    l1 = lambda m: sum(float(p.abs().sum()) for p in m.parameters())  # noqa: E731
    assert l1(result.model) < l1(digits_case.ctx.original)


def test_l1_sparse_same_seed_same_model_and_refuses_label_agnostic(digits_case):
    a = get_method("l1_sparse")(digits_case.context(options=OPTIONS)).model
    b = get_method("l1_sparse")(digits_case.context(options=OPTIONS)).model
    assert same_weights(a, b)
    assert not same_weights(a, get_method("l1_sparse")(digits_case.context(options=OPTIONS, seed=1)).model)
    with pytest.raises(ValueError, match="'l1_sparse'.*label-agnostic"):
        get_method("l1_sparse")(digits_case.context(options=OPTIONS, labels="agnostic"))
