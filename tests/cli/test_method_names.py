"""`--method all` in the label-agnostic setting keeps the methods that run without labels
with the settings the run will use: the flags over the recipe."""
import json

from fastmix.cli import build_parser
from fastmix.cli.args import method_names
from fastmix.cli.unlearn import options_from_args


def names(argv):
    args = build_parser().parse_args(["unlearn", "--labels", "agnostic", "--method", "all", *argv])
    return method_names(args, options_from_args(args))


def test_all_follows_the_recipe_and_a_flag_over_it(tmp_path):
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"dataset": "digits", "setting": "class", "methods": {
        "scrub": {"scrub_gamma": {"value": 0.0, "source": "test: SCRUB without its CE term"}}}}))
    assert "scrub" not in names(["--recipe", "none"])  # its CE on D_r needs labels by default
    assert "scrub" in names(["--recipe", str(recipe)])  # the recipe drops that term
    assert "scrub" not in names(["--recipe", str(recipe), "--scrub-gamma", "1"])  # the flag wins
    assert "mixunlearn" in names(["--recipe", str(recipe)]) and "ga" not in names(["--recipe", str(recipe)])
