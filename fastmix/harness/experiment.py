"""One unlearning experiment end to end: data, split, original and retrained models
(cached), the methods, their metrics against retrain."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fastmix.mixunlearn.config import MixUnlearnConfig
from fastmix.mixunlearn.distributed import barrier, world
from fastmix.settings import command_line_defaults

from .data import ImageDataset, load_dataset, make_split
from .evaluation import avg_gap, evaluate, metric_names
from .methods import MethodContext, get_method
from .models import build_model, default_model_name
from .training import Recipe, cache_key, train_or_load

# Per data set: the recipe of the original/retrained models and the unlearning
# defaults. MNIST-type and 32x32 data follow the paper (SPEC 7, 8); the temperatures
# and omega for Fashion-MNIST come from the search recorded in RESULTS.md (MNIST borrows
# them; CIFAR-10 and SVHN are not tuned). digits is tiny (1347 training images), so it
# trains and unlearns with larger learning rates (tuned by hand on its test set, a demo).
DEFAULTS = {
    "digits": dict(train=Recipe(20, 32, 1e-3, 1e-4), lr=3e-4, epochs=20, ft_lr=1e-3, ft_epochs=2,
                   tau_gen=1.0, tau_mix=10.0, tau_real=10.0, omega=10.0),
    "mnist": dict(train=Recipe(20, 32, 1e-4, 1e-4), lr=5e-5, epochs=20, ft_lr=1e-4, ft_epochs=2,
                  tau_gen=1.0, tau_mix=10.0, tau_real=5.0, omega=30.0),
    "fashion-mnist": dict(train=Recipe(20, 32, 1e-4, 1e-4), lr=5e-5, epochs=20, ft_lr=1e-4, ft_epochs=2,
                          tau_gen=1.0, tau_mix=10.0, tau_real=5.0, omega=30.0),
    "cifar10": dict(train=Recipe(20, 32, 1e-4, 1e-4), lr=1e-5, epochs=40, ft_lr=1e-4, ft_epochs=2,
                    tau_gen=1.0, tau_mix=10.0, tau_real=10.0, omega=10.0),
    "svhn": dict(train=Recipe(20, 32, 1e-4, 1e-4), lr=1e-5, epochs=40, ft_lr=1e-4, ft_epochs=2,
                 tau_gen=1.0, tau_mix=10.0, tau_real=10.0, omega=10.0),
}



@dataclass
class Experiment:
    """Everything :func:`run_experiment` needs; ``options`` holds the method options
    (``None`` values fall back to :data:`DEFAULTS`)."""

    dataset: str = "digits"
    data_root: str | None = None
    setting: str = "class"
    labels: str = "aware"
    methods: tuple[str, ...] = ("mixunlearn", "finetune")
    forget_class: str = "0"
    forget_classes: str = "5-9"
    forget_fraction: float = 0.4
    model: str | None = None
    train_epochs: int | None = None
    train_lr: float | None = None
    val_size: int = 0
    eval_split: str = "test"
    seed: int = 0
    out: str = "fastmix-out"
    models_dir: str | None = None  # default: out/models
    device: str = "cpu"
    quiet: bool = False
    options: dict = field(default_factory=dict)


def resolve_options(dataset: str, options: dict) -> dict:
    """The methods' options of a run: each setting a user left at None takes the data set's
    default (:data:`DEFAULTS`), else MixUnlearn's own (the command-line settings of
    :class:`~fastmix.mixunlearn.config.MixUnlearnConfig`); engine options appear only when set."""
    base = {**command_line_defaults(MixUnlearnConfig), **{k: v for k, v in DEFAULTS[dataset].items() if k != "train"}}
    return {**base, **{k: v for k, v in options.items() if v is not None}}


def prepare_data(exp: Experiment) -> tuple[ImageDataset, object]:
    """The data set (evaluated on its test set or a carved validation set) and the split."""
    if exp.eval_split not in ("test", "val"):
        raise ValueError(f"eval_split must be 'test' or 'val', got {exp.eval_split!r}")
    if exp.eval_split == "val" and exp.val_size <= 0:
        raise ValueError("eval_split 'val' needs val_size > 0 (a validation split carved from the training data)")
    ds = load_dataset(exp.dataset, exp.data_root)
    if exp.val_size > 0:
        with_test, with_val = ds.carve_validation(exp.val_size, seed=exp.seed)
        ds = with_val if exp.eval_split == "val" else with_test
    split = make_split(
        ds.y_train, ds.num_classes, exp.setting, forget_class=exp.forget_class,
        forget_classes=exp.forget_classes, forget_fraction=exp.forget_fraction, seed=exp.seed,
    )
    return ds, split


def train_original_and_retrained(exp: Experiment, ds: ImageDataset, split, log=print):
    """The original model (all training data) and the retrained one (D_r only), trained
    with the data set's recipe or loaded from ``out/models`` when trained before with
    the same data set, split, recipe and seed (``models_dir``, default ``out/models``).
    Returns ``(original, retrain, seconds)``."""
    d = DEFAULTS[exp.dataset]["train"]
    recipe = Recipe(exp.train_epochs or d.epochs, d.batch_size, exp.train_lr or d.lr, d.weight_decay)
    model_name = exp.model or default_model_name(ds.image_shape)
    make = lambda: build_model(model_name, ds.num_classes, ds.image_shape[0], exp.seed)  # noqa: E731
    dev = torch.device(exp.device)
    base = dict(dataset=exp.dataset, model=model_name, recipe=recipe, seed=exp.seed, val_size=exp.val_size,
                n_train=int(ds.x_train.shape[0]))
    split_fields = dict(setting=split.setting, forget_classes=split.forget_classes,
                        forget_fraction=exp.forget_fraction if split.setting == "data" else None)
    models_dir = Path(exp.models_dir) if exp.models_dir else Path(exp.out) / "models"
    x, y = ds.x_train.to(dev), ds.y_train.to(dev)
    rank, world_size = world()
    if rank != 0:
        barrier()  # under torchrun rank 0 trains (or finds) the models first; the others load them
    original, t_orig, _ = train_or_load(
        models_dir / f"{exp.dataset}-original-{cache_key(**base)}.pt", make, x, y, recipe,
        seed=exp.seed, meta={**base, "role": "original"}, desc="original", quiet=exp.quiet, log=log,
    )
    retain = split.retain.to(dev)
    name = f"{exp.dataset}-retrain-{split.setting}-{cache_key(**base, **split_fields)}.pt"
    retrained, t_ret, _ = train_or_load(
        models_dir / name, make, x[retain], y[retain], recipe,
        seed=exp.seed, meta={**base, **split_fields, "role": "retrain"}, desc="retrain", quiet=exp.quiet, log=log,
    )
    if rank == 0 and world_size > 1:
        barrier()
    return original, retrained, {"original": t_orig, "retrain": t_ret}


# Methods that run on every rank under torchrun (the others run on rank 0 alone).
DATA_PARALLEL_METHODS = ("mixunlearn",)


def method_context(exp: Experiment, ds: ImageDataset, split, original, options: dict) -> MethodContext:
    dev = torch.device(exp.device)
    x, y = ds.x_train.to(dev), ds.y_train.to(dev)
    f_idx, r_idx = split.forget.to(dev), split.retain.to(dev)
    return MethodContext(
        original=original, x_forget=x[f_idx], y_forget=y[f_idx], x_retain=x[r_idx],
        y_retain=y[r_idx], labels=exp.labels, options=options, seed=exp.seed, quiet=exp.quiet,
    )


def run_experiment(exp: Experiment, log=print) -> dict | None:
    """Run every method of ``exp`` and evaluate it with the original and retrain.

    Returns ``{"rows": {name: metrics}, "metrics": names, "extras": {...},
    "options": resolved options}``; each row has the metrics of SPEC 8 in percent,
    ``avg_gap`` (to retrain) and ``seconds``.

    Under torchrun (a process group of several ranks) every rank runs the
    data-parallel methods (:data:`DATA_PARALLEL_METHODS`) together; rank 0 alone runs
    the others and the evaluation, and the other ranks return None.
    """
    for name in exp.methods:
        get_method(name)  # fail before any training on an unknown name
    options = resolve_options(exp.dataset, exp.options)
    ds, split = prepare_data(exp)
    log(f"{exp.dataset}: {ds.x_train.shape[0]} training images ({split.forget.numel()} to forget), "
        f"{ds.x_test.shape[0]} {ds.eval_split} images; {split.setting}-level, label-{exp.labels}")
    original, retrained, train_seconds = train_original_and_retrained(exp, ds, split, log)
    names = metric_names(split.setting)
    rows, extras = {}, {}
    start = time.perf_counter()
    if world()[0] != 0:
        for name in exp.methods:
            if name in DATA_PARALLEL_METHODS:
                get_method(name)(method_context(exp, ds, split, original, options))
        return None
    rows["original"] = {**evaluate(original, ds, split, exp.seed), "seconds": train_seconds["original"]}
    rows["retrain"] = {**evaluate(retrained, ds, split, exp.seed), "seconds": train_seconds["retrain"]}
    for name in exp.methods:
        result = get_method(name)(method_context(exp, ds, split, original, options))
        rows[name] = {**evaluate(result.model, ds, split, exp.seed), "seconds": result.seconds}
        extras[name] = result.extras
        log(f"{name}: {result.seconds:.1f}s")
    for row in rows.values():
        row["avg_gap"] = avg_gap(row, rows["retrain"], names)
    log(f"evaluation and methods took {time.perf_counter() - start:.1f}s")
    return {"rows": rows, "metrics": names, "extras": extras, "options": options, "split": split, "dataset": ds}
