"""Boundary Shrink on digits: D_f moves to its neighbouring classes, D_r is kept."""
import pytest
from harness.method_checks import same_weights

from fastmix.harness.methods import get_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# A larger lr than the reference's 1e-5, 3 epochs, for a fast test.
OPTIONS = {"boundary_lr": 0.001, "boundary_epochs": 3}


def test_boundary_shrink_moves_d_f_to_wrong_classes(digits_case):
    before = {k: v.clone() for k, v in digits_case.ctx.original.state_dict().items()}
    f0, r0 = digits_case.accuracies(digits_case.ctx.original)
    result = get_method("boundary_shrink")(digits_case.context(options=OPTIONS))
    f1, r1 = digits_case.accuracies(result.model)
    print(f"boundary_shrink: Train_f {f0:.1f} -> {f1:.1f}, Train_r {r0:.1f} -> {r1:.1f}")
    assert f0 > 95 and r0 > 95
    assert f1 < 10, "D_f is forgotten"
    assert r1 > r0 - 8, "D_r is kept"
    assert result.seconds > 0
    for k, v in digits_case.ctx.original.state_dict().items():
        assert v.equal(before[k]), f"{k} of the original changed"


def test_boundary_shrink_same_seed_same_model_and_refuses_label_agnostic(digits_case):
    a = get_method("boundary_shrink")(digits_case.context(options=OPTIONS)).model
    b = get_method("boundary_shrink")(digits_case.context(options=OPTIONS)).model
    assert same_weights(a, b)
    assert not same_weights(a, get_method("boundary_shrink")(digits_case.context(options=OPTIONS, seed=1)).model)
    with pytest.raises(ValueError, match="'boundary_shrink'.*label-agnostic"):
        get_method("boundary_shrink")(digits_case.context(options=OPTIONS, labels="agnostic"))
