"""l1-sparse on digits: D_f forgotten, D_r kept, the weights shrink."""
import pytest
from harness.method_checks import run_on_digits, same_weights

from fastmix.harness.methods import get_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# A larger alpha and lr than the reference, 5 epochs, so digits forgets quickly.
OPTIONS = {"l1_epochs": 5, "l1_alpha": 0.005, "l1_lr": 0.05}


def test_l1_sparse_forgets_d_f_keeps_d_r(digits_case):
    result, (f0, r0), (f1, r1) = run_on_digits(digits_case, "l1_sparse", OPTIONS)
    assert f1 < 10, "D_f is forgotten"
    assert r1 > r0 - 5, "D_r is kept"
    l1 = lambda m: sum(float(p.abs().sum()) for p in m.parameters())  # noqa: E731
    assert l1(result.model) < l1(digits_case.ctx.original)


def test_l1_sparse_same_seed_same_model_and_refuses_label_agnostic(digits_case):
    a = get_method("l1_sparse")(digits_case.context(options=OPTIONS)).model
    b = get_method("l1_sparse")(digits_case.context(options=OPTIONS)).model
    assert same_weights(a, b)
    assert not same_weights(a, get_method("l1_sparse")(digits_case.context(options=OPTIONS, seed=1)).model)
    with pytest.raises(ValueError, match="'l1_sparse'.*label-agnostic"):
        get_method("l1_sparse")(digits_case.context(options=OPTIONS, labels="agnostic"))
