"""The metrics of SPEC section 8: accuracies, two membership-inference attacks, Avg. Gap."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fastmix.mixunlearn.rows import Rows
from fastmix.settings import choice, setting

# Upper bounds on the attack sets: the SVC is quadratic in its training size.
ASR_MAX_TRAIN = 5000
MIA_MAX_TRAIN = 2000


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor | Rows, batch_size: int = 1024) -> torch.Tensor:
    """Softmax outputs of ``model`` on ``x`` (a tensor or :class:`Rows`; batches are moved
    to the model's device), as a CPU float64 tensor."""
    model.eval()
    device = next(model.parameters()).device
    out = [torch.softmax(model(x[i : i + batch_size].to(device)).double(), dim=1).cpu()
           for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out) if out else torch.empty(0, 0, dtype=torch.float64)


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent (NaN on an empty set)."""
    if labels.numel() == 0:
        return float("nan")
    return 100.0 * (probs.argmax(1) == labels.cpu()).double().mean().item()


def _sample(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(n, size=min(n, k), replace=False)


def _sklearn_threads():
    """Limit scikit-learn's OpenMP pool to torch's thread count: on a busy machine
    an unlimited pool spins on cores that other processes hold."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=torch.get_num_threads())


ASR_MODELS = ("hgb", "xgboost")
MIA_SAMPLINGS = ("fastmix", "salun")
XGBOOST_TREES = 100  # LAF's attacker


@dataclass
class AttackSettings:
    """How the two membership-inference attacks are run (SPEC 8); recorded in
    results.json's settings. The defaults are fastmix's own attacks; the other choices
    reproduce the reference codes' attacks, for tables that sit beside their papers'."""

    asr_model: str = setting(
        "hgb", "ASR's attacker: scikit-learn's HistGradientBoostingClassifier (hgb, fastmix) or XGBoost with "
        f"{XGBOOST_TREES} trees (xgboost, LAF's attacker; pip install \"fastmix[xgboost]\")",
        choice(*ASR_MODELS), flag="--asr-model")
    mia_sampling: str = setting(
        "fastmix", "MIA-Efficacy's SVC training sets: equal random draws of D_r and the evaluation set, at most "
        f"{MIA_MAX_TRAIN} each (fastmix), or SalUn's: the first |eval| samples of D_r as members and the whole "
        "evaluation set as non-members (salun)", choice(*MIA_SAMPLINGS), flag="--mia-sampling")


def _xgboost_classifier(seed: int):
    try:
        from xgboost import XGBClassifier
    except ImportError:
        raise ValueError('asr_model "xgboost" (--asr-model xgboost) needs XGBoost: pip install "fastmix[xgboost]"') \
            from None
    return XGBClassifier(n_estimators=XGBOOST_TREES, random_state=seed, n_jobs=torch.get_num_threads())


def check_attacks(attacks: AttackSettings) -> AttackSettings:
    """Check the attack settings (and that XGBoost is installed when asked for) before any work."""
    from fastmix.settings import validate

    validate(attacks)
    if attacks.asr_model == "xgboost":
        _xgboost_classifier(0)
    return attacks


def attack_asr(p_retain, p_forget, p_test, seed: int, model: str = "hgb") -> float:
    """ASR (MixUnlearn, LAF): gradient-boosted trees on the descending-sorted softmax.

    The test set is halved: one half are the non-members the attack trains on (as many
    members are drawn from D_r), the other half the held-out non-members it is judged on,
    together with as many D_f samples as members. Returns its accuracy in percent
    (about 50 when D_f looks like unseen data).

    ``model``: ``"hgb"`` (fastmix's default) is scikit-learn's HistGradientBoostingClassifier;
    ``"xgboost"`` is XGBoost's XGBClassifier with 100 trees, LAF's attacker (its other
    parameters XGBoost's defaults). Both get the same sets and the seed.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    if model not in ASR_MODELS:
        raise ValueError(f"asr_model must be one of {ASR_MODELS}, got {model!r}")
    rng = np.random.default_rng(seed)
    feat = lambda p: np.sort(p.numpy(), axis=1)[:, ::-1]  # noqa: E731
    order = rng.permutation(p_test.shape[0])
    half = p_test.shape[0] // 2
    test_train, test_eval = order[:half], order[half:]
    n_train = min(half, p_retain.shape[0], ASR_MAX_TRAIN)
    members = feat(p_retain)[_sample(p_retain.shape[0], n_train, rng)]
    nonmembers = feat(p_test)[test_train[:n_train]]
    n_eval = min(p_forget.shape[0], len(test_eval))
    x_eval = np.concatenate([feat(p_forget)[_sample(p_forget.shape[0], n_eval, rng)], feat(p_test)[test_eval[:n_eval]]])
    y_eval = np.r_[np.ones(n_eval), np.zeros(n_eval)]
    with _sklearn_threads():
        clf = HistGradientBoostingClassifier(random_state=seed) if model == "hgb" else _xgboost_classifier(seed)
        clf.fit(np.concatenate([members, nonmembers]), np.r_[np.ones(len(members)), np.zeros(len(nonmembers))])
        return 100.0 * float((clf.predict(x_eval) == y_eval).mean())


def attack_mia_efficacy(p_retain, y_retain, p_forget, y_forget, p_test, y_test, seed: int,
                        sampling: str = "fastmix") -> float:
    """MIA-Efficacy (SalUn, l1-sparse): an RBF SVC (C=3, gamma='auto') on the
    probability of the true label, trained on members from D_r and non-members from
    the test set; the share of D_f it calls non-members, in percent.

    ``sampling``: ``"fastmix"`` (default) draws equal seeded random sets of D_r and the
    test set, at most ``MIA_MAX_TRAIN`` each. ``"salun"`` is OPTML-Group/Unlearn-Saliency's
    ``SVC_MIA`` (its ``shadow_train = Subset(retain, range(len(test)))``): the first
    |test| samples of D_r in the data's order (all of D_r when it is smaller) as members
    and the whole test set as non-members, with no cap (the SVC's time grows
    quadratically with the test set)."""
    from sklearn.svm import SVC

    if sampling not in MIA_SAMPLINGS:
        raise ValueError(f"mia_sampling must be one of {MIA_SAMPLINGS}, got {sampling!r}")
    rng = np.random.default_rng(seed)
    true_p = lambda p, y: p.numpy()[np.arange(p.shape[0]), y.cpu().numpy()][:, None]  # noqa: E731
    if sampling == "salun":
        members = true_p(p_retain, y_retain)[: p_test.shape[0]]
        nonmembers = true_p(p_test, y_test)
    else:
        n = min(p_retain.shape[0], p_test.shape[0], MIA_MAX_TRAIN)
        members = true_p(p_retain, y_retain)[_sample(p_retain.shape[0], n, rng)]
        nonmembers = true_p(p_test, y_test)[_sample(p_test.shape[0], n, rng)]
    clf = SVC(C=3, gamma="auto", kernel="rbf")
    clf.fit(np.concatenate([members, nonmembers]), np.r_[np.ones(len(members)), np.zeros(len(nonmembers))])
    return 100.0 * float((clf.predict(true_p(p_forget, y_forget)) == 0).mean())


def metric_names(setting: str) -> tuple[str, ...]:
    """The reported metrics of a setting, in table order (all in percent)."""
    tests = ("Test_r", "Test_f") if setting == "class" else ("Test",)
    return ("Train_r", "Train_f", *tests, "ASR", "MIA_efficacy")


def evaluate(model, dataset, split, seed: int = 0, attacks: AttackSettings | None = None) -> dict[str, float]:
    """Every metric of SPEC 8 for ``model`` on ``dataset`` under ``split`` (percent).

    Class-level: Test_r on test samples of the kept classes, Test_f on those of the
    forgotten classes. Data-level: Test on the whole evaluation set. ``attacks``: how the
    attacks run (default :class:`AttackSettings`'s defaults).

    A model whose outputs are not all finite (a method that diverged, e.g. gradient ascent
    with too large a step) gets NaN for every metric, and so a NaN Avg. Gap: an argmax
    over NaN would report a made-up accuracy, and the attacks cannot train on NaN.
    """
    attacks = attacks or AttackSettings()
    x_tr, y_tr = dataset.x_train, dataset.y_train
    p_r = predict_proba(model, Rows(x_tr, split.retain))  # batches gathered from the one training tensor
    p_f = predict_proba(model, Rows(x_tr, split.forget))
    p_t = predict_proba(model, dataset.x_test)
    if not all(bool(torch.isfinite(p).all()) for p in (p_r, p_f, p_t)):
        return {name: float("nan") for name in metric_names(split.setting)}
    y_r, y_f, y_t = y_tr[split.retain], y_tr[split.forget], dataset.y_test
    out = {"Train_r": accuracy(p_r, y_r), "Train_f": accuracy(p_f, y_f)}
    if split.setting == "class":
        forgotten = torch.isin(y_t, torch.tensor(split.forget_classes))
        out["Test_r"] = accuracy(p_t[~forgotten], y_t[~forgotten])
        out["Test_f"] = accuracy(p_t[forgotten], y_t[forgotten])
    else:
        out["Test"] = accuracy(p_t, y_t)
    out["ASR"] = attack_asr(p_r, p_f, p_t, seed, model=attacks.asr_model)
    out["MIA_efficacy"] = attack_mia_efficacy(p_r, y_r, p_f, y_f, p_t, y_t, seed, sampling=attacks.mia_sampling)
    return out


def avg_gap(metrics: dict[str, float], retrain: dict[str, float], names) -> float:
    """Mean absolute difference to the reference (retrain) over ``names``."""
    return float(np.mean([abs(metrics[k] - retrain[k]) for k in names]))
