"""The metrics of SPEC 8 on synthetic softmax outputs whose answer is known."""
import numpy as np
import pytest
import torch

from fastmix.harness.evaluation import accuracy, attack_asr, attack_mia_efficacy, avg_gap, metric_names

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def probs(n, confident, labels, seed):
    """Softmax rows putting ``confident`` (or a uniform-ish share) on the label."""
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(n, 10, generator=g, dtype=torch.float64) * (1 - confident) / 5
    p[torch.arange(n), labels] = confident + 0.05 * torch.rand(n, generator=g, dtype=torch.float64)
    return p / p.sum(1, keepdim=True)


def test_accuracy_and_gap():
    p = torch.eye(3, dtype=torch.float64)
    assert abs(accuracy(p, torch.tensor([0, 1, 0])) - 100 * 2 / 3) < 1e-9
    assert np.isnan(accuracy(p[:0], torch.tensor([], dtype=torch.long)))
    names = metric_names("class")
    assert names == ("Train_r", "Train_f", "Test_r", "Test_f", "ASR", "MIA_efficacy")
    assert metric_names("data") == ("Train_r", "Train_f", "Test", "ASR", "MIA_efficacy")
    a = dict.fromkeys(names, 50.0)
    b = {**a, "Train_f": 56.0}
    assert avg_gap(b, a, names) == 1.0


def test_attacks_tell_members_from_non_members():
    y = torch.arange(600) % 10
    members = probs(600, 0.95, y, 0)  # training data: confident
    test = probs(600, 0.4, y, 1)  # unseen data: unsure
    still_known = probs(300, 0.95, y[:300], 2)  # D_f not forgotten
    forgotten = probs(300, 0.4, y[:300], 3)  # D_f looks unseen
    assert attack_asr(members, still_known, test, seed=0) > 90
    assert abs(attack_asr(members, forgotten, test, seed=0) - 50) < 10
    assert attack_mia_efficacy(members, y, still_known, y[:300], test, y, seed=0) < 10
    assert attack_mia_efficacy(members, y, forgotten, y[:300], test, y, seed=0) > 90


def test_xgboost_attacker_tells_members_from_non_members():
    y = torch.arange(600) % 10
    members, test = probs(600, 0.95, y, 0), probs(600, 0.4, y, 1)
    assert attack_asr(members, probs(300, 0.95, y[:300], 2), test, seed=0, model="xgboost") > 90
    assert abs(attack_asr(members, probs(300, 0.4, y[:300], 3), test, seed=0, model="xgboost") - 50) < 10
    with pytest.raises(ValueError, match="asr_model"):
        attack_asr(members, members, test, seed=0, model="svm")


def test_missing_xgboost_is_named_with_its_extra(monkeypatch):
    import sys

    from fastmix.harness.evaluation import AttackSettings, check_attacks

    monkeypatch.setitem(sys.modules, "xgboost", None)  # import xgboost now raises ImportError
    with pytest.raises(ValueError, match=r'--asr-model xgboost.*pip install "fastmix\[xgboost\]"'):
        check_attacks(AttackSettings(asr_model="xgboost"))
    check_attacks(AttackSettings())  # hgb needs no XGBoost


class RecordingSVC:
    """Stands in for scikit-learn's SVC: keeps what it was trained on, calls everything a member."""

    seen = None

    def __init__(self, **kwargs):
        RecordingSVC.kwargs = kwargs

    def fit(self, x, y):
        RecordingSVC.seen = (x[:, 0].copy(), y.copy())

    def predict(self, x):
        return np.ones(len(x))


@pytest.mark.parametrize("sampling", ["fastmix", "salun"])
def test_mia_sampling_trains_the_svc_on_the_documented_sets(sampling, monkeypatch):
    import sklearn.svm

    monkeypatch.setattr(sklearn.svm, "SVC", RecordingSVC)
    y_r, y_t = torch.arange(900) % 10, torch.arange(300) % 10
    p_r, p_t = probs(900, 0.95, y_r, 0), probs(300, 0.4, y_t, 1)
    true_r, true_t = p_r[torch.arange(900), y_r].numpy(), p_t[torch.arange(300), y_t].numpy()
    assert attack_mia_efficacy(p_r, y_r, p_r[:50], y_r[:50], p_t, y_t, seed=0, sampling=sampling) == 0.0
    x, labels = RecordingSVC.seen
    assert RecordingSVC.kwargs == dict(C=3, gamma="auto", kernel="rbf")
    assert labels.tolist() == [1.0] * 300 + [0.0] * 300
    if sampling == "salun":  # the first |test| samples of D_r, the whole test set in order
        assert np.array_equal(x[:300], true_r[:300]) and np.array_equal(x[300:], true_t)
    else:  # seeded random draws of equal size
        assert set(x[:300]) <= set(true_r) and not np.array_equal(x[:300], true_r[:300])
        assert sorted(x[300:]) == sorted(true_t)
    with pytest.raises(ValueError, match="mia_sampling"):
        attack_mia_efficacy(p_r, y_r, p_r, y_r, p_t, y_t, seed=0, sampling="laf")


def test_a_model_with_non_finite_outputs_gets_nan_metrics_and_the_run_goes_on(tmp_path):
    """Gradient ascent with a huge step diverges to NaN outputs: its row is NaN (no accuracy
    from an argmax over NaN, no attack trained on NaN), and the next method still runs."""
    import json

    from fastmix.cli import main

    out = tmp_path / "run"
    assert main(["unlearn", "--method", "ga,finetune", "--ga-lr", "10", "--ft-epochs", "1", "--train-epochs", "1",
                 "--quiet", "--no-png", "--threads", "1", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert all(np.isnan(rows["ga"][m]) for m in (*metric_names("class"), "avg_gap"))
    assert all(np.isfinite(rows["finetune"][m]) for m in (*metric_names("class"), "avg_gap"))
