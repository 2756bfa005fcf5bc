"""`fastmix tune`: search each method's settings on a validation split (fastmix.harness.tuning)."""
from __future__ import annotations

import sys
from pathlib import Path

from fastmix.harness.methods import METHODS, SEARCH_SPACES

from .args import (
    add_attack_args,
    add_data_args,
    add_recipe_arg,
    apply_threads,
    check_args,
    experiment_from_args,
    method_names,
    positive_int,
)
from .unlearn import add_method_args, options_from_args

# --val-size left out: this share of the training set is carved out as the validation split.
DEFAULT_VAL_SHARE = 0.1


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "tune", help="search a method's settings on a validation split; search log and recipe",
        description="Search each method's settings (its search space, SEARCH_SPACE beside its settings) for the "
        "smallest Avg. Gap to the retrained model on a validation split carved from the training data (never the "
        "test set), with the same --budget of trials for every method. The trials are kept in OUT/"
        "optuna-journal.log: a stopped search resumes where it stopped. Writes OUT/search-log.json (every trial) and "
        "OUT/DATASET-SETTING.json, a recipe of the winners for `fastmix unlearn --recipe`. Settings given as flags "
        "stay fixed and are not searched; the others not searched take the recipe's values, else the defaults.",
    )
    add_data_args(p)
    add_attack_args(p)
    add_recipe_arg(p)
    add_method_args(p, method_help=f"the method(s) to tune, comma-separated, from: {', '.join(METHODS)}; 'all' "
                    "tunes every one in turn", method_default=None)
    p.add_argument("--budget", type=positive_int, required=True,
                   help="finished trials per method (a resumed search counts the trials it already finished)")
    p.add_argument("--restart", action="store_true",
                   help="forget the trials OUT holds of the methods named by --method and search them again from the "
                        "first trial (e.g. after a method's search space changed); other methods' trials stay")
    p.set_defaults(run=run, eval_split="val", val_size=None, out="fastmix-tune")
    helps = {"val_size": f"training samples carved out as the validation split the trials are scored on (default "
                         f"{DEFAULT_VAL_SHARE:.0%}% of the training set)",
             "eval_split": "val (the default; test is refused: a search never sees the test set)",
             "out": "output folder: the search's journal, search log, recipe and cached models (default fastmix-tune)"}
    for action in p._actions:
        action.help = helps.get(action.dest, action.help)


def default_val_size(exp) -> int:
    """:data:`DEFAULT_VAL_SHARE` of the data set's training samples."""
    from fastmix.harness.data import load_dataset
    from fastmix.harness.experiment import dataset_options

    ds = load_dataset(exp.dataset, exp.data_root, **dataset_options(exp, lambda *a: None))
    return max(1, int(DEFAULT_VAL_SHARE * ds.x_train.shape[0]))


def run(args) -> int:
    import fcntl

    from fastmix.harness.atomic import check_writable
    from fastmix.harness.data import DataError
    from fastmix.harness.method_recipes import write_recipe
    from fastmix.harness.tuning import LOCK, Tuner, check_search, tuned_entries

    apply_threads(args)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    out = Path(args.out)
    try:
        if args.eval_split != "val":
            raise ValueError("fastmix tune scores on the validation split (--eval-split val), never on the test set")
        options = options_from_args(args)
        methods = method_names(args, options)
        check_args(args)
        given_val = args.val_size
        args.val_size = args.val_size or 0
        exp = experiment_from_args(args, methods, options)
        fixed = {k for k, v in exp.options.items() if v is not None}
        spaces = {m: {k: d for k, d in SEARCH_SPACES[m].items() if k not in fixed} for m in methods}
        for m, space in spaces.items():
            if not space:
                raise ValueError(f"method {m} has nothing left to search (its search space: "
                                 f"{', '.join(SEARCH_SPACES[m]) or 'empty'}; fixed by flags: "
                                 f"{', '.join(sorted(fixed))})")
        if given_val is None:
            exp.val_size = default_val_size(exp)
        for m in methods:
            check_search(exp, m)
        check_writable(out, "output folder (--out)")
        tuner = Tuner(out, log)
    except (DataError, ValueError) as e:
        print(f"fastmix tune: error: {e}")
        return 2
    with open(out / LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            print(f"fastmix tune: error: another fastmix tune is running in {out}; wait for it or use another --out")
            return 2
        log(f"tuning {', '.join(methods)} on {exp.dataset}, {exp.setting}-level, label-{exp.labels}: "
            f"{exp.val_size} validation samples, budget {args.budget} each")
        winners = {}
        if args.restart:
            for m in methods:
                if tuner.forget(m):
                    log(f"{m}: its earlier trials in {out} are forgotten (--restart)")
        try:
            for m in methods:  # a search held with other settings is refused before any trial runs
                tuner.study(exp, m, spaces[m])
            for m in methods:
                log(f"{m}: searching {', '.join(spaces[m])}")
                best = tuner.search(exp, m, spaces[m], args.budget)
                if best is None:
                    print(f"{m}: no trial completed with a finite gap; see {out / 'search-log.json'}")
                    continue
                winners[m] = tuned_entries(best, args.budget, exp)
                print(f"{m}: best val Avg. Gap {best.value:.2f} with {best.params} (trial {best.number})")
        except (DataError, ValueError) as e:
            print(f"fastmix tune: error: {e}")
            return 2
    if winners:
        recipe = out / f"{exp.dataset}-{exp.setting}.json"
        try:
            write_recipe(recipe, exp.dataset, exp.setting, winners)
        except ValueError as e:  # the folder's recipe is not one: leave it, say so
            print(f"fastmix tune: error: cannot add the winners to {recipe}: {e}")
            return 2
        print(f"wrote {recipe} and {out / 'search-log.json'}")
    return 0 if len(winners) == len(methods) else 1
