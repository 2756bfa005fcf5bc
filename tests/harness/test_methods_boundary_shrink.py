"""Boundary Shrink on digits: D_f moves to its neighbouring classes, D_r is kept."""
import pytest
from harness.method_checks import run_on_digits, same_weights

from fastmix.harness.methods import get_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# A larger lr than the reference's 1e-5, 3 epochs, for a fast test.
OPTIONS = {"boundary_lr": 0.001, "boundary_epochs": 3}


def test_boundary_shrink_moves_d_f_to_wrong_classes(digits_case):
    result, (f0, r0), (f1, r1) = run_on_digits(digits_case, "boundary_shrink", OPTIONS)
    assert f1 < 10, "D_f is forgotten"
    assert r1 > r0 - 8, "D_r is kept"


def test_boundary_shrink_same_seed_same_model_and_refuses_label_agnostic(digits_case):
    a = get_method("boundary_shrink")(digits_case.context(options=OPTIONS)).model
    b = get_method("boundary_shrink")(digits_case.context(options=OPTIONS)).model
    assert same_weights(a, b)
    assert not same_weights(a, get_method("boundary_shrink")(digits_case.context(options=OPTIONS, seed=1)).model)
    with pytest.raises(ValueError, match="'boundary_shrink'.*label-agnostic"):
        get_method("boundary_shrink")(digits_case.context(options=OPTIONS, labels="agnostic"))
