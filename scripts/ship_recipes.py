"""Copy `fastmix tune`'s winners into the recipes fastmix ships (fastmix/harness/recipes/).

Usage: python scripts/ship_recipes.py [--into DIR] OUT/tune-class/fashion-mnist-class.json ...

Each file is a recipe that `fastmix tune` wrote. Every method it holds replaces that
method's entries in the shipped recipe of the same data set and setting; the other
methods keep theirs. A file with an entry that `fastmix tune` did not write (its source
does not say "tuned") is refused before anything is written.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from fastmix.harness.method_recipes import RECIPES_DIR, TUNED_SOURCE, load_recipe, write_recipe


def ship(paths, into: Path = RECIPES_DIR) -> list[Path]:
    recipes = [load_recipe(p) for p in paths]
    for path, recipe in zip(paths, recipes):
        for method, entries in recipe["methods"].items():
            for name, entry in entries.items():
                if not entry["source"].startswith(TUNED_SOURCE):
                    raise SystemExit(f"{path}: {method}.{name} was not tuned (source {entry['source']!r})")
    written = []
    for recipe in recipes:
        target = Path(into) / f"{recipe['dataset']}-{recipe['setting']}.json"
        write_recipe(target, recipe["dataset"], recipe["setting"], recipe["methods"])
        written.append(target)
    return written


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipes", nargs="+", help="recipes written by fastmix tune")
    p.add_argument("--into", default=str(RECIPES_DIR), help="the folder of shipped recipes (default: fastmix's)")
    args = p.parse_args()
    for target in ship(args.recipes, Path(args.into)):
        print(f"wrote {target}")
