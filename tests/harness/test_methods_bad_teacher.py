"""Bad teaching on digits: D_f forgotten, D_r kept; no label is read."""
import pytest
from harness.method_checks import run_on_digits, same_weights

from fastmix.harness.methods import get_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# 3 epochs with lr 1e-3 and batch 64, for a fast test.
OPTIONS = {"bad_teacher_epochs": 3, "bad_teacher_lr": 0.001, "bad_teacher_batch_size": 64}


def test_bad_teacher_forgets_d_f_keeps_d_r(digits_case):
    result, (f0, r0), (f1, r1) = run_on_digits(digits_case, "bad_teacher", OPTIONS)
    assert f1 < 10, "D_f is forgotten"
    assert r1 > r0 - 3, "D_r is kept"


def test_bad_teacher_same_seed_same_model_and_reads_no_label(digits_case):
    a = get_method("bad_teacher")(digits_case.context(options=OPTIONS)).model
    c = digits_case.ctx
    wrong = digits_case.context(options=OPTIONS, labels="agnostic", y_forget=(c.y_forget + 3) % 10,
                                y_retain=(c.y_retain + 7) % 10)
    b = get_method("bad_teacher")(wrong).model
    assert same_weights(a, b)
    assert not same_weights(a, get_method("bad_teacher")(digits_case.context(options=OPTIONS, seed=1)).model)
