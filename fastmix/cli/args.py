"""Arguments shared by `fastmix train` and `fastmix unlearn`."""
from __future__ import annotations

import argparse

from fastmix.harness.data import DATASETS
from fastmix.harness.experiment import Experiment
from fastmix.harness.models import MODELS


def _checked_number(convert, accept, what: str):
    """An argparse type: ``convert`` the text, then refuse values ``accept`` rejects."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = _checked_number(int, lambda v: v >= 1, "a positive integer")
positive_float = _checked_number(float, lambda v: 0 < v < float("inf"), "a finite positive number")
nonneg_float = _checked_number(float, lambda v: 0 <= v < float("inf"), "a finite number >= 0")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and split")
    g.add_argument("--dataset", default="digits", choices=DATASETS, help="default: digits (embedded in scikit-learn)")
    g.add_argument("--data-root", help="folder with the data set's files (never downloaded)")
    g.add_argument("--setting", default="class", choices=("class", "data"), help="class-level or data-level forgetting")
    g.add_argument("--forget-class", default="0", help="class-level: the class(es) to forget, e.g. 0 or 1,3 (default 0)")
    g.add_argument("--forget-classes", default="5-9", help="data-level: the classes to draw D_f from (default 5-9)")
    g.add_argument("--forget-fraction", type=float, default=0.4, help="data-level: share of those samples to forget")
    g.add_argument("--val-size", type=int, default=0,
                   help="carve this many training samples out as a validation split (models never train on it)")
    g.add_argument("--eval-split", default="test", choices=("test", "val"), help="score on the test set or the validation split")
    m = p.add_argument_group("models")
    m.add_argument("--model", choices=sorted(MODELS), help="default: by image size (SPEC 8)")
    m.add_argument("--train-epochs", type=positive_int, help="epochs of the original/retrained models (default: 20)")
    m.add_argument("--train-lr", type=positive_float, help="their learning rate (default: 1e-4, digits 1e-3)")
    r = p.add_argument_group("run")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", default="fastmix-out", help="output folder (default fastmix-out)")
    r.add_argument("--models-dir", help="where trained original/retrained models are cached (default OUT/models)")
    r.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    r.add_argument("--threads", type=positive_int,
                   help="CPU threads for torch (default: 1 for digits, whose tiny model gains nothing from more; "
                   "else torch's choice)")
    r.add_argument("--quiet", action="store_true", help="no progress bars or log lines")


def experiment_from_args(args, methods=(), options=None) -> Experiment:
    return Experiment(
        dataset=args.dataset, data_root=args.data_root, setting=args.setting,
        labels=getattr(args, "labels", "aware"), methods=tuple(methods),
        forget_class=args.forget_class, forget_classes=args.forget_classes, forget_fraction=args.forget_fraction,
        model=args.model, train_epochs=args.train_epochs, train_lr=args.train_lr,
        val_size=args.val_size, eval_split=args.eval_split, seed=args.seed, out=args.out, models_dir=args.models_dir,
        device=args.device or default_device(), quiet=args.quiet, options=options or {},
    )


def apply_threads(args) -> None:
    threads = args.threads or (1 if args.dataset == "digits" else None)
    if threads:
        import torch

        torch.set_num_threads(threads)
