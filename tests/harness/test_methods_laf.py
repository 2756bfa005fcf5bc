"""Label-Agnostic Forgetting on digits: D_f forgotten, D_r kept; no label is read."""
import pytest
from harness.method_checks import run_on_digits, same_weights

from fastmix.harness.methods import get_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# Few epochs with larger learning rates, for a fast test.
OPTIONS = {"laf_vae_epochs": 3, "laf_epochs": 5, "laf_ue_lr": 0.001, "laf_ra_lr": 0.01, "laf_T": 5.0}


def test_laf_forgets_d_f_keeps_d_r(digits_case):
    result, (f0, r0), (f1, r1) = run_on_digits(digits_case, "laf", OPTIONS)
    assert f1 < 10, "D_f is forgotten"
    assert r1 > r0 - 5, "D_r is kept"


def test_laf_same_seed_same_model_and_reads_no_label(digits_case):
    a = get_method("laf")(digits_case.context(options=OPTIONS)).model
    c = digits_case.ctx
    wrong = digits_case.context(options=OPTIONS, labels="agnostic", y_forget=(c.y_forget + 3) % 10,
                                y_retain=(c.y_retain + 7) % 10)
    b = get_method("laf")(wrong).model
    assert same_weights(a, b)
    assert not same_weights(a, get_method("laf")(digits_case.context(options=OPTIONS, seed=1)).model)
