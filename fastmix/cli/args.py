"""Arguments shared by `fastmix train` and `fastmix unlearn`."""
from __future__ import annotations

import argparse
import sys

from fastmix.harness.data import DATASETS
from fastmix.harness.data.imagefolder import DEFAULT_TEST_FRACTION, NORMALIZATIONS
from fastmix.harness.evaluation import AttackSettings
from fastmix.harness.experiment import LAF_DATASETS, LAF_IMAGE_SIZE, PROTOCOLS, Experiment
from fastmix.harness.method_recipes import NO_RECIPE, load_recipe, packaged_recipe, recipe_options
from fastmix.harness.models import MODELS, check_model_name
from fastmix.settings import SEED_LIMIT


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
nonneg_int = _checked_number(int, lambda v: v >= 0, "an integer >= 0")
seed_int = _checked_number(int, lambda v: 0 <= v < SEED_LIMIT, "an integer seed in 0..2**63-1")
open_fraction = _checked_number(float, lambda v: 0 < v < 1, "a fraction strictly between 0 and 1")



def model_name(text: str) -> str:
    try:
        return check_model_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def seed_list(text: str) -> list[int]:
    """``--seeds 0,1,2``: distinct seeds, each as ``--seed`` takes it."""
    seeds = [seed_int(part.strip()) for part in text.split(",") if part.strip()]
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated seeds, got {text!r}")
    return seeds


# The split flags of each --setting (default values: Experiment's); a flag of the other setting is refused.
SPLIT_FLAGS = {"class": ("forget_class",), "data": ("forget_classes", "forget_fraction")}


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and split")
    g.add_argument("--dataset", default="digits", choices=DATASETS, help="default: digits (embedded in scikit-learn)")
    g.add_argument("--data-root", help="folder with the data set's files (never downloaded)")
    g.add_argument("--setting", default="class", choices=("class", "data"), help="class-level or data-level forgetting")
    g.add_argument("--forget-class", help="class-level: the class(es) to forget, e.g. 0 or 1,3 (default 0)")
    g.add_argument("--forget-classes", help="data-level: the classes to draw D_f from (default 5-9)")
    g.add_argument("--forget-fraction", type=open_fraction,
                   help="data-level: share of those samples to forget (default 0.4)")
    g.add_argument("--val-size", type=nonneg_int, default=0,
                   help="carve this many training samples out as a validation split (models never train on it)")
    g.add_argument("--eval-split", default="test", choices=("test", "val"),
                   help="score on the test set or the validation split")
    i = p.add_argument_group("your own images (--dataset imagefolder)")
    i.add_argument("--image-size", type=positive_int,
                   help="side in pixels the images are scaled and centre-cropped to (required unless a timm model "
                   f"gives its own); under --protocol laf, the side each batch is resized to "
                   f"(default {LAF_IMAGE_SIZE})")
    i.add_argument("--normalize", choices=NORMALIZATIONS,
                   help="imagenet (ImageNet's mean and std), dataset (the training images') or none "
                   "(default: a timm model's own, else dataset)")
    i.add_argument("--test-fraction", type=open_fraction,
                   help=f"a single folder of class folders: the seeded, stratified share held out for evaluation "
                   f"(default {DEFAULT_TEST_FRACTION})")
    i.add_argument("--protocol", choices=PROTOCOLS,
                   help="paper-imagenet: the paper's ViT experiment; splits the folder 40,000 / 10,000 (smaller "
                   "folders 4:1), forgets --forget-fraction (0.1 to 0.4) of classes 5-9 (implies --setting data), "
                   f"fine-tunes both models from --checkpoint. laf ({', '.join(LAF_DATASETS)}): LAF's protocol, "
                   "the paper's: an ImageNet-stem ResNet-18 with a 512-256-classes head on images resized to "
                   f"--image-size ({LAF_IMAGE_SIZE}), trained with RandomResizedCrop and flips; without it, "
                   "fastmix's fast 32x32 CIFAR-stem ResNet-18, unaugmented")
    m = p.add_argument_group("models")
    m.add_argument("--model", type=model_name, metavar="NAME",
                   help=f"{', '.join(sorted(MODELS))}, timm:NAME or torchvision:NAME (pip install "
                   f"\"fastmix[models]\"); default: by image size (SPEC 8)")
    m.add_argument("--checkpoint", metavar="PATH",
                   help="initial weights of the original and retrained models, which are then fine-tuned: "
                   "safetensors, or a torch file (read with weights_only=True)")
    m.add_argument("--train-epochs", type=positive_int, help="epochs of the original/retrained models (default: 20)")
    m.add_argument("--train-lr", type=positive_float, help="their learning rate (default: 1e-4, digits 1e-3)")
    r = p.add_argument_group("run")
    r.add_argument("--seed", type=seed_int, default=0)
    r.add_argument("--out", default="fastmix-out", help="output folder (default fastmix-out)")
    r.add_argument("--models-dir", help="where trained original/retrained models are cached (default OUT/models)")
    r.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    r.add_argument("--threads", type=positive_int,
                   help="CPU threads for torch (default: 1 for digits, whose tiny model gains nothing from more; "
                   "else torch's choice)")
    r.add_argument("--quiet", action="store_true", help="no progress bars or log lines")


def effective_setting(args) -> str:
    """``--setting``, or ``data`` under ``--protocol paper-imagenet`` (a data-level protocol)."""
    return "data" if getattr(args, "protocol", None) == "paper-imagenet" else args.setting


def check_args(args) -> None:
    """Refuse flags that do not apply to the run (rather than ignore them), before any work:
    a split flag of the other ``--setting``, ``--data-root`` for the embedded digits."""
    setting = effective_setting(args)
    given = [name for name in SPLIT_FLAGS["class" if setting == "data" else "data"]
             if getattr(args, name) is not None]
    if given:
        flag = lambda name: "--" + name.replace("_", "-")  # noqa: E731
        raise ValueError(f"{', '.join(map(flag, given))} applies to --setting "
                         f"{'class' if setting == 'data' else 'data'}, not to --setting {setting}; "
                         f"use {' and '.join(map(flag, SPLIT_FLAGS[setting]))}")
    if args.dataset == "digits" and args.data_root is not None:
        raise ValueError("--data-root does not apply to --dataset digits (embedded in scikit-learn); leave it out")


def experiment_from_args(args, methods=(), options=None) -> Experiment:
    defaults = Experiment()
    split = {name: getattr(defaults, name) if getattr(args, name) is None else getattr(args, name)
             for names in SPLIT_FLAGS.values() for name in names}
    return Experiment(
        dataset=args.dataset, data_root=args.data_root, setting=effective_setting(args),
        labels=getattr(args, "labels", "aware"), methods=tuple(methods), **split,
        checkpoint=args.checkpoint, image_size=args.image_size, normalize=args.normalize,
        test_fraction=args.test_fraction, protocol=args.protocol,
        model=args.model, train_epochs=args.train_epochs, train_lr=args.train_lr,
        val_size=args.val_size, eval_split=args.eval_split, seed=args.seed, out=args.out, models_dir=args.models_dir,
        device=args.device or default_device(), quiet=args.quiet, attacks=attacks_from_args(args),
        recipe=recipe_of(args), options=options or {},
    )


def add_recipe_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", metavar="PATH",
                   help="the methods' settings for this data set and setting, each with its source (JSON, see "
                   "fastmix/harness/method_recipes.py); default: the one fastmix ships for the data set and "
                   f"--setting, if any; '{NO_RECIPE}': none. Flags given win over it, it wins over the defaults")


def recipe_of(args) -> str | None:
    """``--recipe``, else the packaged recipe of the data set and setting (None: no recipe;
    a subcommand without ``--recipe`` runs no method and takes none)."""
    if not hasattr(args, "recipe") or args.recipe == NO_RECIPE:
        return None
    if args.recipe:
        return args.recipe
    found = packaged_recipe(args.dataset, effective_setting(args))
    return str(found) if found else None


def method_names(args, options: dict) -> list[str]:
    """``--method`` expanded; ``all`` in the label-agnostic setting keeps the methods that run
    without labels with the settings the run will use (:func:`~fastmix.harness.experiment.resolve_options`:
    a recipe may, e.g., drop SCRUB's cross-entropy term, scrub_gamma 0)."""
    from fastmix.harness.experiment import resolve_options
    from fastmix.harness.methods import METHODS, expand_method_names

    recipe = recipe_of(args)
    held = recipe_options(load_recipe(recipe), METHODS) if recipe else {}
    return expand_method_names(args.method, args.labels, resolve_options(args.dataset, args.setting, options, held))


def add_attack_args(p: argparse.ArgumentParser) -> None:
    add_setting_flags(p.add_argument_group("membership-inference attacks (SPEC 8)"), AttackSettings)


def attacks_from_args(args) -> AttackSettings:
    """The attack settings given on the command line (a subcommand without those flags: the defaults)."""
    from fastmix.settings import setting_fields

    given = {f.name: getattr(args, f.name, None) for f in setting_fields(AttackSettings)}
    return AttackSettings(**{k: v for k, v in given.items() if v is not None})


def apply_threads(args) -> None:
    threads = args.threads or (1 if args.dataset == "digits" else None)
    if threads:
        import torch

        torch.set_num_threads(threads)


def _deprecated_const(new: str):
    """An argparse action for an old flag name: stores the new flag's value, says so on stderr."""

    class DeprecatedConst(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            print(f"fastmix: {option_string} is deprecated; use {new}", file=sys.stderr)
            setattr(namespace, self.dest, self.const)

    return DeprecatedConst


def _flag_type(check):
    """The argparse type of a value flag, from the setting's check."""
    from fastmix import settings

    return {settings.POSITIVE: positive_float, settings.NONNEG: nonneg_float,
            settings.OPTIONAL_NONNEG: nonneg_float, settings.COUNT: positive_int}.get(check)


def add_setting_flags(group, cls, defaults_by_dataset: dict | None = None) -> None:
    """One flag per setting of ``cls`` that has one (:mod:`fastmix.settings`). Every flag
    defaults to None ("not given"): the run then takes the data set's default, else the
    setting's own; the help text says which."""
    from fastmix.settings import default_of, setting_fields

    for f in setting_fields(cls):
        flag = f.metadata["flag"]
        if flag is None:
            continue
        check = f.metadata["check"]
        default = default_of(f)
        by_dataset = {name: d[f.name] for name, d in (defaults_by_dataset or {}).items() if f.name in d}
        if flag.help is not None:
            help_text = flag.help
        elif len(set(by_dataset.values())) > 1:
            help_text = f"{f.metadata['help']} (default by data set: " + \
                ", ".join(f"{name} {value:g}" for name, value in by_dataset.items()) + ")"
        elif by_dataset:
            help_text = f"{f.metadata['help']} (default {next(iter(by_dataset.values())):g})"
        elif default is None:
            help_text = f.metadata["help"]
        else:
            help_text = f"{f.metadata['help']} (default {default})"
        if flag.form == "const":
            group.add_argument(flag.name, dest=f.name, action="store_const", const=flag.const, default=None,
                               help=help_text)
            for old in flag.deprecated:
                group.add_argument(old, dest=f.name, action=_deprecated_const(flag.name), const=flag.const,
                                   default=None, nargs=0, help=argparse.SUPPRESS)
        elif flag.form == "switch":
            group.add_argument(flag.name, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        elif check.kind == "choice":
            choices = flag.cli_choices or check.choices
            group.add_argument(flag.name, dest=f.name, choices=choices, default=None, help=help_text)
        else:
            group.add_argument(flag.name, dest=f.name, type=_flag_type(check), default=None, help=help_text)


def setting_values(args, cls) -> dict:
    """The values of ``cls``'s command-line settings in parsed ``args`` (None: not given)."""
    from fastmix.settings import setting_fields

    return {f.name: getattr(args, f.name) for f in setting_fields(cls) if f.metadata["flag"] is not None}
