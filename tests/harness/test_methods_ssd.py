"""Selective Synaptic Dampening on digits: D_f's accuracy falls, D_r's stays."""
import copy

import pytest
import torch
from harness.method_checks import run_on_digits, same_weights

from fastmix.harness.methods import get_method
from fastmix.harness.methods.ssd import diagonal_fisher

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# The reference's defaults.
OPTIONS = {}


def test_ssd_dampens_d_f(digits_case):
    result, (f0, r0), (f1, r1) = run_on_digits(digits_case, "ssd", OPTIONS)
    assert f1 < f0 - 40, "D_f is largely forgotten"
    assert r1 > r0 - 5, "D_r is kept"
    assert result.extras["dampened_weights"] > 0


def test_ssd_same_seed_same_model_and_refuses_label_agnostic(digits_case):
    a = get_method("ssd")(digits_case.context(options=OPTIONS)).model
    b = get_method("ssd")(digits_case.context(options=OPTIONS)).model
    assert same_weights(a, b)
    with pytest.raises(ValueError, match="'ssd'.*label-agnostic"):
        get_method("ssd")(digits_case.context(options=OPTIONS, labels="agnostic"))


def test_ssd_scales_exactly_the_selected_weights(digits_case):
    c = digits_case.ctx
    model = copy.deepcopy(c.original).requires_grad_(True).eval()
    i_d = diagonal_fisher(model, torch.cat([c.x_retain, c.x_forget]), torch.cat([c.y_retain, c.y_forget]), 64)
    i_f = diagonal_fisher(model, c.x_forget, c.y_forget, 64)
    out = get_method("ssd")(digits_case.context(options={"ssd_alpha": 10.0, "ssd_lambda": 1.0})).model
    for p0, p1, d, f in zip(c.original.parameters(), out.parameters(), i_d, i_f):
        selected = f > 10 * d
        assert torch.equal(p1[~selected], p0[~selected])
        torch.testing.assert_close(p1[selected], p0[selected] * (d[selected] / f[selected]).clamp(max=1))
