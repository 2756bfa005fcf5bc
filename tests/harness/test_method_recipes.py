"""Method recipes: the shipped files hold today's defaults (nothing claimed as tuned), a
bad file is refused naming the file and the key, and a flag wins over the recipe, which
wins over the defaults."""
import json

import pytest

from fastmix.cli import build_parser
from fastmix.cli.args import experiment_from_args
from fastmix.cli.unlearn import options_from_args
from fastmix.harness.experiment import DEFAULTS, validate_experiment
from fastmix.harness.method_recipes import (
    RECIPES_DIR,
    REFERENCE_SOURCE,
    TUNED_SOURCE,
    load_recipe,
    packaged_recipe,
    reference_recipe,
    write_recipe,
)
from fastmix.harness.methods import SEARCH_SPACES, expand_method_names, recipe_settings


@pytest.mark.parametrize("path", sorted(RECIPES_DIR.glob("*.json")), ids=lambda p: p.name)
def test_shipped_recipes_hold_reference_defaults_or_tuned_values_with_their_source(path):
    recipe = load_recipe(path)
    dataset, setting = path.stem.rsplit("-", 1)
    assert (recipe["dataset"], recipe["setting"]) == (dataset, setting) and packaged_recipe(dataset, setting) == path
    reference = reference_recipe(dataset, setting)["methods"]
    # every searched setting of every method, none missing (a search space grew: the file too)
    assert {m: set(e) for m, e in recipe["methods"].items()} == {m: set(e) for m, e in reference.items()}
    for method, entries in recipe["methods"].items():
        for name, entry in entries.items():
            assert entry["source"].startswith((REFERENCE_SOURCE, TUNED_SOURCE)), (method, name)
            if entry["source"].startswith(REFERENCE_SOURCE):  # today's default, not a made-up number
                assert entry == reference[method][name], (method, name)


def test_fashion_mnist_recipes_are_shipped_for_both_settings():
    assert packaged_recipe("fashion-mnist", "class") and packaged_recipe("fashion-mnist", "data")
    assert packaged_recipe("digits", "class") is None


def test_every_search_space_names_settings_of_its_method_with_valid_values():
    from fastmix.settings import Grid, LogRange

    for method in expand_method_names("all"):
        fields = recipe_settings(method)
        for name, dim in SEARCH_SPACES[method].items():
            assert name in fields, (method, name)
            check = fields[name].metadata["check"]
            values = dim.values if isinstance(dim, Grid) else (dim.low, dim.high)
            assert isinstance(dim, (Grid, LogRange)) and all(check(name, v) == v for v in values)
    assert set(SEARCH_SPACES["mixunlearn"]) == {"omega", "tau_real", "tau_mix", "tau_gen"}
    assert all(SEARCH_SPACES[m] for m in expand_method_names("all"))


def write(tmp_path, methods, **top):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"dataset": "digits", "setting": "class", **top, "methods": methods}))
    return path


SOURCE = "reference default: a test"


@pytest.mark.parametrize("methods, key, message", [
    ({"sgd": {}}, "methods.sgd", "unknown method"),
    ({"scrub": {"ga_lr": {"value": 1e-3, "source": SOURCE}}}, "methods.scrub.ga_lr", "not a setting of scrub"),
    ({"scrub": {"scrub_lr": {"value": "fast", "source": SOURCE}}}, "methods.scrub.scrub_lr.value", "finite number"),
    ({"scrub": {"scrub_epochs": {"value": 2.5, "source": SOURCE}}}, "methods.scrub.scrub_epochs.value", "int >= 1"),
    ({"scrub": {"scrub_lr": {"value": -1.0, "source": SOURCE}}}, "methods.scrub.scrub_lr.value", "positive"),
    ({"scrub": {"scrub_lr": 0.1}}, "methods.scrub.scrub_lr", "source"),
    ({"scrub": {"scrub_lr": {"value": 0.1, "source": ""}}}, "methods.scrub.scrub_lr.source", "non-empty"),
    ({"mixunlearn": {"cache": {"value": False, "source": SOURCE}}}, "methods.mixunlearn.cache", "not a setting"),
])
def test_bad_recipes_are_refused_naming_the_file_and_key(tmp_path, methods, key, message):
    path = write(tmp_path, methods)
    with pytest.raises(ValueError, match=rf"{path}: {key}: .*{message}"):
        load_recipe(path)


def test_unreadable_recipes_are_refused_naming_the_file(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    for path, message in ((tmp_path / "bad.json", "not JSON"), (tmp_path / "missing.json", "cannot read")):
        with pytest.raises(ValueError, match=f"{path}: {message}"):
            load_recipe(path)
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match='list.json: expected a JSON object with "methods"'):
        load_recipe(tmp_path / "list.json")


def options_of(*argv):
    args = build_parser().parse_args(["unlearn", *argv])
    exp = experiment_from_args(args, expand_method_names(args.method), options_from_args(args))
    return exp, validate_experiment(exp)


def test_a_flag_wins_over_the_recipe_which_wins_over_the_defaults(tmp_path):
    path = write(tmp_path, {"mixunlearn": {"omega": {"value": 3, "source": SOURCE},
                                           "tau_mix": {"value": 7.0, "source": SOURCE}},
                            "scrub": {"scrub_lr": {"value": 0.02, "source": SOURCE}}})
    exp, options = options_of("--recipe", str(path), "--omega", "5", "--method", "mixunlearn,scrub")
    assert exp.recipe == str(path)
    assert options["omega"] == 5.0  # flag
    assert options["tau_mix"] == 7.0 and options["scrub_lr"] == 0.02  # recipe
    assert options["tau_real"] == DEFAULTS["digits"]["tau_real"]  # data set default
    assert "scrub_epochs" not in options  # the method's own default, read by the method
    _, without_scrub = options_of("--recipe", str(path), "--method", "mixunlearn")
    assert "scrub_lr" not in without_scrub and without_scrub["omega"] == 3.0  # the run's methods only
    _, defaults = options_of("--method", "mixunlearn")
    assert defaults["omega"] == DEFAULTS["digits"]["omega"] and defaults["tau_mix"] == DEFAULTS["digits"]["tau_mix"]


def test_the_shipped_recipe_is_the_default_and_none_turns_it_off():
    exp, _ = options_of("--dataset", "fashion-mnist", "--setting", "data")
    assert exp.recipe == str(packaged_recipe("fashion-mnist", "data"))
    assert options_of("--dataset", "fashion-mnist", "--recipe", "none")[0].recipe is None
    assert options_of()[0].recipe is None  # digits ships none


def test_a_recipe_for_another_data_set_or_setting_is_refused(tmp_path):
    path = write(tmp_path, {}, dataset="mnist")
    with pytest.raises(ValueError, match="is for dataset 'mnist', this run's is 'digits'"):
        options_of("--recipe", str(path))
    path = write(tmp_path, {}, setting="data")
    with pytest.raises(ValueError, match="is for setting 'data'"):
        options_of("--recipe", str(path))


def test_write_recipe_replaces_one_methods_entries_and_keeps_the_others(tmp_path):
    path = tmp_path / "r.json"
    write_recipe(path, "digits", "class", {"ga": {"ga_lr": {"value": 1e-3, "source": SOURCE}}})
    write_recipe(path, "digits", "class", {"rl": {"rl_lr": {"value": 0.02, "source": SOURCE}}})
    write_recipe(path, "digits", "class", {"ga": {"ga_epochs": {"value": 3, "source": SOURCE}}})
    assert load_recipe(path)["methods"] == {"ga": {"ga_epochs": {"value": 3, "source": SOURCE}},
                                            "rl": {"rl_lr": {"value": 0.02, "source": SOURCE}}}


def test_ship_recipes_script_puts_tuned_winners_over_the_shipped_recipe(tmp_path):
    """scripts/ship_recipes.py: the tuned methods' entries replace the shipped ones, the
    other methods keep theirs; a file holding an entry that was not tuned is refused."""
    import shutil

    from repo_files import load

    ship = load("scripts/ship_recipes.py")
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    shutil.copy(packaged_recipe("fashion-mnist", "data"), shipped)
    before = load_recipe(shipped / "fashion-mnist-data.json")["methods"]
    def tuned(lr):
        return {"rl": {"rl_lr": {"value": lr, "source": TUNED_SOURCE + ", budget 6, ..."},
                       "rl_epochs": {"value": 2, "source": TUNED_SOURCE + ", budget 6, ..."}}}

    write_recipe(tmp_path / "t.json", "fashion-mnist", "data", tuned(0.005))
    target = shipped / "fashion-mnist-data.json"
    assert ship.ship([tmp_path / "t.json"], shipped) == [target]
    after = load_recipe(target)["methods"]
    assert after["rl"] == tuned(0.005)["rl"] and {m: e for m, e in after.items() if m != "rl"} == \
        {m: e for m, e in before.items() if m != "rl"}
    # a tuned file beside one holding a default: nothing is written, not even the tuned one
    write_recipe(tmp_path / "t2.json", "fashion-mnist", "data", tuned(0.007))
    untuned = {"ga": {"ga_lr": {"value": 1e-3, "source": REFERENCE_SOURCE + "x"}}}
    write_recipe(tmp_path / "mixed.json", "fashion-mnist", "data", untuned)
    written = target.read_bytes()
    with pytest.raises(SystemExit, match="ga.ga_lr was not tuned"):
        ship.ship([tmp_path / "t2.json", tmp_path / "mixed.json"], shipped)
    assert target.read_bytes() == written
