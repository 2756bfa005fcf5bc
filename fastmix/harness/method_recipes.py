"""Method recipes: the methods' settings for one data set and forgetting setting, each
value with where it came from. (Not :class:`fastmix.harness.training.Recipe`, how the
original and retrained models are trained.)

A recipe is a JSON file::

    {"dataset": "fashion-mnist", "setting": "class",
     "methods": {"mixunlearn": {"omega": {"value": 30.0, "source": "tuned: fastmix tune, ..."}},
                 "scrub": {"scrub_lr": {"value": 0.0005, "source": "reference default: meghdadk/SCRUB"}}}}

A method's entries are settings of that method that have a command-line flag
(:func:`fastmix.harness.methods.recipe_settings`); every value passes the setting's check
and every entry names its source. ``fastmix unlearn`` uses the recipe shipped for its data
set and setting (``recipes/DATASET-SETTING.json`` in this package) unless ``--recipe`` names
another (or ``none``); the precedence is: a command-line flag, then the recipe, then the
data set's defaults (:data:`fastmix.harness.experiment.DEFAULTS`), then the method's own.
A recipe's values apply only to the methods of the run that it names.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

RECIPES_DIR = Path(__file__).parent / "recipes"
NO_RECIPE = "none"  # --recipe none: the defaults alone
# How an entry's source begins: today's default of the reference code, or a search's winner.
REFERENCE_SOURCE, TUNED_SOURCE = "reference default: ", "tuned: fastmix tune"


def packaged_recipe(dataset: str, setting: str) -> Path | None:
    """The recipe shipped with fastmix for ``dataset`` and ``setting`` ('class' or 'data'), if any."""
    path = RECIPES_DIR / f"{dataset}-{setting}.json"
    return path if path.is_file() else None


def _check_value(where: str, field, value):
    check = field.metadata["check"]
    default = field.default
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # JSON writes 30.0 as 30 in some hands; the setting is a float
    try:
        return check(field.name, value)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def load_recipe(path) -> dict:
    """Read and check the recipe at ``path``; returns ``{"dataset", "setting", "methods":
    {method: {name: {"value", "source"}}}}``. Raises ValueError naming the file and the key
    of the first problem: not JSON, an unknown method, a name that is not a setting of its
    method, a value its setting refuses, an entry without its source."""
    from .methods import METHODS, recipe_settings

    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise ValueError(f"recipe (--recipe) {path}: cannot read it ({e.strerror or e})") from None
    except ValueError as e:
        raise ValueError(f"recipe (--recipe) {path}: not JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("methods"), dict):
        raise ValueError(f'recipe {path}: expected a JSON object with "methods": {{method: {{setting: '
                         '{"value": ..., "source": "..."}}}}')
    for key in ("dataset", "setting"):
        if key in doc and not isinstance(doc[key], str):
            raise ValueError(f"recipe {path}: {key}: expected a string, got {doc[key]!r}")
    methods = {}
    for method, entries in doc["methods"].items():
        if method not in METHODS:
            raise ValueError(f"recipe {path}: methods.{method}: unknown method; known: {', '.join(METHODS)}")
        known = recipe_settings(method)
        if not isinstance(entries, dict):
            raise ValueError(f"recipe {path}: methods.{method}: expected an object of settings, got {entries!r}")
        methods[method] = {}
        for name, entry in entries.items():
            where = f"recipe {path}: methods.{method}.{name}"
            if name not in known:
                raise ValueError(f"{where}: not a setting of {method}; its settings: {', '.join(known) or 'none'}")
            if not isinstance(entry, dict) or set(entry) != {"value", "source"}:
                raise ValueError(f'{where}: expected {{"value": ..., "source": "where it came from"}}, got {entry!r}')
            if not isinstance(entry["source"], str) or not entry["source"].strip():
                raise ValueError(f"{where}.source: expected a non-empty string, got {entry['source']!r}")
            methods[method][name] = {"value": _check_value(f"{where}.value", known[name], entry["value"]),
                                     "source": entry["source"]}
    return {"dataset": doc.get("dataset"), "setting": doc.get("setting"), "methods": methods}


def recipe_options(recipe: dict, methods) -> dict:
    """The flat options a recipe gives the run's ``methods``."""
    return {name: entry["value"] for method in methods for name, entry in recipe["methods"].get(method, {}).items()}


def check_recipe_applies(recipe: dict, path, dataset: str, setting: str) -> None:
    """A recipe that names another data set or setting than the run's is refused."""
    for key, run in (("dataset", dataset), ("setting", setting)):
        if recipe.get(key) not in (None, run):
            raise ValueError(f"recipe (--recipe) {path} is for {key} {recipe[key]!r}, this run's is {run!r}; pass "
                             f"--recipe {NO_RECIPE} or a recipe for {dataset}, {setting}-level forgetting")


def write_recipe(path, dataset: str, setting: str, methods: dict) -> dict:
    """Write (atomically) the recipe at ``path`` with ``methods`` ({method: {name: {"value",
    "source"}}}); a method's entries replace those the file held, other methods' stay."""
    from .atomic import atomic_write

    path = Path(path)
    held = load_recipe(path)["methods"] if path.exists() else {}
    doc = {"dataset": dataset, "setting": setting, "methods": {**held, **methods}}

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")

    atomic_write(path, write)
    return doc


def reference_source(method: str) -> str:
    """Where a method's default values come from: the reference code its module's docstring names."""
    from .methods import METHODS

    if method == "mixunlearn":
        return "MixUnlearn paper (ICLR 2025, SPEC 7)"
    if method == "finetune":
        return "fastmix's fine-tuning baseline"
    doc = sys.modules[METHODS[method].__module__].__doc__ or ""
    found = re.search(r"Reference code:\s*(\S+)", doc)
    return found.group(1).rstrip(".,:") if found else f"fastmix.harness.methods.{method}"


def reference_recipe(dataset: str, setting: str) -> dict:
    """A recipe of today's defaults for every method's searched settings, each labelled
    ``reference default`` with its source (what the shipped recipes hold until tuned values
    replace them)."""
    from fastmix.settings import default_of

    from .experiment import dataset_defaults
    from .methods import METHODS, SEARCH_SPACES, recipe_settings

    defaults = dataset_defaults(dataset, setting)
    methods = {}
    for method in METHODS:
        fields = recipe_settings(method)
        entries = {}
        for name in SEARCH_SPACES[method]:
            if name in defaults:
                value = defaults[name]
                where = f"fastmix.harness.experiment.DEFAULTS['{dataset}'] (its comment says where they come from)"
            else:
                value, where = default_of(fields[name]), reference_source(method)
            entries[name] = {"value": value, "source": REFERENCE_SOURCE + where}
        if entries:
            methods[method] = entries
    return {"dataset": dataset, "setting": setting, "methods": methods}
