"""`fastmix train`: train (or reuse) the original and the retrained model."""
from __future__ import annotations

from .args import add_data_args, apply_threads, check_args, experiment_from_args


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train and cache the original and retrained models",
        description="Train the original model (all training data) and the retrained model (D_r only) with "
        "the paper's recipe and save them under OUT/models; later runs with the same data set, split and "
        "seed reuse them.",
    )
    add_data_args(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from fastmix.harness.data import DataError
    from fastmix.harness.experiment import prepare_data, train_original_and_retrained

    apply_threads(args)
    log = (lambda *a: None) if args.quiet else print
    try:
        check_args(args)
        exp = experiment_from_args(args)
        ds, split = prepare_data(exp, log)
        train_original_and_retrained(exp, ds, split, log=log)
    except (DataError, ValueError) as e:
        print(f"fastmix train: error: {e}")
        return 2
    return 0
