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
