"""The methods registry as a whole: settings, documentation, refusals, --method all."""
import argparse
import dataclasses
import sys

import pytest
import torch
from torch import nn

from fastmix.cli.args import add_setting_flags
from fastmix.harness.methods import (
    METHOD_SETTINGS,
    METHODS,
    SEARCH_SPACES,
    MethodContext,
    expand_method_names,
    get_method,
    method_settings,
    register,
)
from fastmix.harness.methods.common import read_settings
from fastmix.mixunlearn.config import SETTING_NAMES
from fastmix.settings import setting_fields

BASELINES = ("ga", "neggrad_plus", "rl", "salun", "l1_sparse", "scrub", "bad_teacher", "ssd", "laf",
             "boundary_shrink")
NEED_LABELS = ("ga", "neggrad_plus", "rl", "salun", "l1_sparse", "scrub", "ssd", "boundary_shrink")


def module_of(name):
    return sys.modules[METHODS[name].__module__]


@pytest.mark.parametrize("name", BASELINES)
def test_every_baseline_declares_its_settings_and_names_its_paper(name):
    cls = module_of(name).SETTINGS
    assert method_settings(name) is cls and dataclasses.is_dataclass(cls)
    fields = setting_fields(cls)
    assert fields and all(f.metadata["flag"] is not None for f in fields)
    doc = module_of(name).__doc__
    assert "Paper:" in doc and "Reference code:" in doc and METHODS[name].__doc__
    assert read_settings(cls, {}) == cls()  # every field has a default that passes its check


def test_setting_names_and_flags_are_unique_across_methods_and_mixunlearn():
    names = [f.name for n in BASELINES for f in setting_fields(method_settings(n))]
    assert len(names) == len(set(names)) and not set(names) & set(SETTING_NAMES)
    assert not set(names) & {"ft_lr", "ft_epochs", "batch_size", "feature_layer"}
    parser = argparse.ArgumentParser()
    for n in BASELINES:  # the lead generates the CLI flags this way: no clash, every flag parses
        add_setting_flags(parser.add_argument_group(n), method_settings(n))
    args = parser.parse_args(["--ga-lr", "5e-4", "--salun-ratio", "0.3", "--scrub-epochs", "4"])
    assert (args.ga_lr, args.salun_ratio, args.scrub_epochs, args.laf_T) == (5e-4, 0.3, 4, None)


def test_settings_read_flat_options_and_refuse_bad_values():
    cls = method_settings("ga")
    assert read_settings(cls, {"ga_lr": 1e-3, "ga_epochs": None, "lr": 9.0}).ga_lr == 1e-3
    assert read_settings(cls, {}).ga_epochs == 5
    with pytest.raises(ValueError, match="ga_lr"):
        read_settings(cls, {"ga_lr": -1.0})
    with pytest.raises(ValueError, match="ga_epochs"):
        read_settings(cls, {"ga_epochs": 0})


class Untouchable(nn.Module):
    """An original model that fails if a method starts work before refusing."""

    def forward(self, x):
        raise AssertionError("the method ran the model before checking its setting")


def context(labels="agnostic", options=None):
    x, y = torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    return MethodContext(original=Untouchable(), x_forget=x, y_forget=y, x_retain=x, y_retain=y, labels=labels,
                         options=options or {}, seed=0)


@pytest.mark.parametrize("name", NEED_LABELS)
def test_methods_that_need_labels_refuse_the_label_agnostic_setting_before_any_work(name):
    with pytest.raises(ValueError, match=f"'{name}'.*label-agnostic"):
        get_method(name)(context())


@pytest.mark.parametrize("name, options, match", [
    ("ga", {"ga_lr": 0.0}, "ga_lr"),
    ("neggrad_plus", {"neggrad_alpha": 1.5}, "neggrad_alpha"),
    ("salun", {"salun_ratio": 1.5}, "salun_ratio"),
    ("scrub", {"scrub_msteps": 1.5}, "scrub_msteps"),
    ("bad_teacher", {"bad_teacher_retain_share": 2.0}, "bad_teacher_retain_share"),
    ("laf", {"laf_T": float("nan")}, "laf_T"),
])
def test_bad_settings_are_refused_by_name_before_any_work(name, options, match):
    with pytest.raises(ValueError, match=match):
        get_method(name)(context("aware", options))


def test_laf_refuses_a_model_without_a_linear_layer():
    with pytest.raises(ValueError, match="'laf'.*nn.Linear"):
        get_method("laf")(context("agnostic"))


def test_all_expands_to_every_registered_method_once():
    assert expand_method_names("all") == list(METHODS)
    assert set(BASELINES) | {"mixunlearn", "finetune"} <= set(METHODS)
    assert expand_method_names(" ga, mixunlearn ,ga") == ["ga", "mixunlearn"]
    assert expand_method_names("ssd,all")[0] == "ssd" and len(expand_method_names("ssd,all")) == len(METHODS)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        expand_method_names("ga,nope")
    with pytest.raises(ValueError, match="at least one"):
        expand_method_names(" , ")


def test_register_stays_open_and_get_method_returns_the_callable():
    @register("test_registry_probe")
    def probe(ctx):
        return ctx

    try:
        assert get_method("test_registry_probe") is probe and method_settings("test_registry_probe") is None
        assert SEARCH_SPACES["test_registry_probe"] == {}
    finally:
        del METHODS["test_registry_probe"], METHOD_SETTINGS["test_registry_probe"], SEARCH_SPACES["test_registry_probe"]


def test_all_in_the_label_agnostic_setting_is_every_method_that_runs_there():
    # before, --method all --labels agnostic stopped at the third method, after the models were trained
    agnostic = expand_method_names("all", "agnostic")
    assert agnostic == [m for m in METHODS if m not in NEED_LABELS]
    assert "scrub" in expand_method_names("all", "agnostic", {"scrub_gamma": 0.0})  # without its CE term
    assert expand_method_names("ga", "agnostic") == ["ga"]  # named explicitly: refused by the run, not dropped


@pytest.mark.parametrize("name", NEED_LABELS)
def test_the_experiment_refuses_a_method_that_needs_labels_before_training(name, monkeypatch, tmp_path):
    from fastmix.harness import experiment

    def no_training(*args, **kwargs):
        raise AssertionError("trained before refusing")

    monkeypatch.setattr(experiment, "train_original_and_retrained", no_training)
    exp = experiment.Experiment(labels="agnostic", methods=("mixunlearn", name), out=str(tmp_path))
    with pytest.raises(ValueError, match=f"'{name}'.*label-agnostic"):
        experiment.run_experiment(exp, log=lambda *a: None)


@pytest.mark.parametrize("name, options", [("salun", {"salun_epochs": 1}), ("ssd", {}), ("rl", {"rl_epochs": 1}),
                                           ("scrub", {"scrub_epochs": 2, "scrub_msteps": 1, "scrub_lr": 0.01})])
def test_the_baselines_layout_changes_their_result_by_rounding_only(digits_case, monkeypatch, name, options):
    """The baselines train a convolutional model in channels_last (as the trainer and
    MixUnlearn do) and hand it back in the default layout; the default layout gives the
    same model up to rounding. SalUn (a weight mask from gradients), SSD (Fisher
    products), RL and SCRUB (a teacher beside the student) cover the layout-sensitive steps."""
    from fastmix.harness import training

    fast = get_method(name)(digits_case.context(options=options)).model
    convs = [m.weight for m in fast.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(w.is_contiguous() for w in convs), "handed back in the default layout"
    monkeypatch.setattr(training, "trainer_layout", lambda model, sample_dim: False)
    plain = get_method(name)(digits_case.context(options=options)).model
    assert not all(torch.equal(a, b) for a, b in zip(fast.state_dict().values(), plain.state_dict().values())), \
        "the layouts took different arithmetic paths (else this test shows nothing)"
    for (key, a), b in zip(fast.state_dict().items(), plain.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")
