"""One unlearning experiment end to end: data, split, original and retrained models
(cached), the methods, their metrics against retrain."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from fastmix.mixunlearn.augment import random_resized_crop_flip
from fastmix.mixunlearn.config import CONFIG_FIELDS, ENGINE_FIELDS, EngineOptions, MixUnlearnConfig
from fastmix.mixunlearn.distributed import barrier, world
from fastmix.mixunlearn.rows import Rows
from fastmix.settings import check_seed, command_line_defaults

from .atomic import check_writable, remove_stale_tmp
from .data import ImageDataset, load_dataset, make_split, parse_classes
from .evaluation import AttackSettings, avg_gap, check_attacks, evaluate, metric_names
from .methods import MethodContext, check_labels, get_method
from .models import build_model, default_model_name, file_digest, input_config, load_weights
from .training import Recipe, cache_key, check_cached, fingerprint, train_or_load

# Per data set: the recipe of the original/retrained models and the unlearning
# defaults. MNIST-type and 32x32 data follow the paper (SPEC 7, 8); the temperatures
# and omega for Fashion-MNIST come from the search recorded in RESULTS.md (MNIST borrows
# them; CIFAR-10 and SVHN are not tuned). digits is tiny (1347 training images), so it
# trains and unlearns with larger learning rates (tuned by hand on its test set, a demo).
# by_setting: defaults of one forgetting setting over the others; LAF's alignment
# temperature is 5 for data-level forgetting with a CNN (LAF's hyperparameter.md; its
# class-level value and the ResNets' data-level one is 20, the setting's own default).
CNN_DATA_LEVEL = {"data": dict(laf_T=5.0)}
DEFAULTS = {
    "digits": dict(train=Recipe(20, 32, 1e-3, 1e-4), lr=3e-4, epochs=20, ft_lr=1e-3, ft_epochs=2,
                   tau_gen=1.0, tau_mix=10.0, tau_real=10.0, omega=10.0, by_setting=CNN_DATA_LEVEL),
    "mnist": dict(train=Recipe(20, 32, 1e-4, 1e-4), lr=5e-5, epochs=20, ft_lr=1e-4, ft_epochs=2,
                  tau_gen=1.0, tau_mix=10.0, tau_real=5.0, omega=30.0, by_setting=CNN_DATA_LEVEL),
    "fashion-mnist": dict(train=Recipe(20, 32, 1e-4, 1e-4), lr=5e-5, epochs=20, ft_lr=1e-4, ft_epochs=2,
                          tau_gen=1.0, tau_mix=10.0, tau_real=5.0, omega=30.0, by_setting=CNN_DATA_LEVEL),
    "cifar10": dict(train=Recipe(20, 32, 1e-4, 1e-4), lr=1e-5, epochs=40, ft_lr=1e-4, ft_epochs=2,
                    tau_gen=1.0, tau_mix=10.0, tau_real=10.0, omega=10.0),
    "svhn": dict(train=Recipe(20, 32, 1e-4, 1e-4), lr=1e-5, epochs=40, ft_lr=1e-4, ft_epochs=2,
                 tau_gen=1.0, tau_mix=10.0, tau_real=10.0, omega=10.0),
    # a folder of your own images, for a model usually fine-tuned from --checkpoint: CIFAR-10's values, not tuned
    "imagefolder": dict(train=Recipe(20, 32, 1e-4, 1e-4), lr=1e-5, epochs=40, ft_lr=1e-4, ft_epochs=2,
                        tau_gen=1.0, tau_mix=10.0, tau_real=10.0, omega=10.0),
}

# Experiment fields that say where a run writes and what it prints, never what it computes.
OUTPUT_FIELDS = ("out", "models_dir", "quiet")

# Experiment fields that only an image folder, a model of your own or a protocol uses;
# results.json leaves them out while they are None.
OWN_MODEL_AND_DATA = ("checkpoint", "image_size", "normalize", "test_fraction", "protocol")

# The paper's protocols (check_protocol): its ViT experiment on an image folder, and LAF's
# protocol for CIFAR-10 and SVHN, which the paper followed there.
PROTOCOLS = ("paper-imagenet", "laf")
LAF_DATASETS = ("cifar10", "svhn")
LAF_MODEL = "resnet18-laf"
LAF_IMAGE_SIZE = 224



@dataclass
class Experiment:
    """Everything :func:`run_experiment` needs; ``options`` holds the method options
    (``None`` values fall back to :data:`DEFAULTS`). Checked as a whole by
    :func:`validate_experiment` before any work."""

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
    checkpoint: str | None = None  # initial weights of the original and retrained models (then fine-tuned)
    image_size: int | None = None  # imagefolder: the side images are scaled and cropped to
    normalize: str | None = None  # imagefolder: imagenet, dataset or none (default: the model's, else dataset)
    test_fraction: float | None = None  # imagefolder, single folder: the share kept for evaluation
    protocol: str | None = None  # one of PROTOCOLS (check_protocol); None: fastmix's own set-up
    attacks: AttackSettings = field(default_factory=AttackSettings)  # how ASR and MIA-Efficacy are run
    recipe: str | None = None  # a method recipe file (fastmix.harness.method_recipes) between options and DEFAULTS
    options: dict = field(default_factory=dict)


def dataset_defaults(dataset: str, setting: str) -> dict:
    """The unlearning defaults of ``dataset`` (:data:`DEFAULTS` without its training
    recipe) for the forgetting ``setting``, "class" or "data" (its ``by_setting`` over them)."""
    d = DEFAULTS[dataset]
    own = {k: v for k, v in d.items() if k not in ("train", "by_setting")}
    return {**own, **d.get("by_setting", {}).get(setting, {})}


def resolve_options(dataset: str, setting: str, options: dict, recipe: dict | None = None) -> dict:
    """The methods' options of a run: each setting a user left at None takes the
    ``recipe``'s value (flat, :func:`~fastmix.harness.method_recipes.recipe_options`), else
    the data set's default for the forgetting setting (:func:`dataset_defaults`), else
    MixUnlearn's own (the command-line settings of
    :class:`~fastmix.mixunlearn.config.MixUnlearnConfig`; a baseline's own defaults fill
    in later, when it reads its settings); engine options appear only when set."""
    base = {**command_line_defaults(MixUnlearnConfig), **dataset_defaults(dataset, setting)}
    return {**base, **(recipe or {}), **{k: v for k, v in options.items() if v is not None}}


def recipe_values(exp: Experiment) -> dict:
    """The flat options ``exp.recipe`` gives ``exp``'s methods (checked; {} without a recipe)."""
    from .method_recipes import check_recipe_applies, load_recipe, recipe_options

    if exp.recipe is None:
        return {}
    recipe = load_recipe(exp.recipe)
    check_recipe_applies(recipe, exp.recipe, exp.dataset, exp.setting)
    return recipe_options(recipe, exp.methods)


def check_protocol(exp: Experiment) -> None:
    """``paper-imagenet``: the paper's ViT experiment. Data-level forgetting of a
    ``forget_fraction`` in [0.1, 0.4] of classes 5 to 9, on an image folder split
    40,000 / 10,000 (:mod:`fastmix.harness.data.imagefolder`), with both models
    fine-tuned from the pretrained ``checkpoint`` (the retrained one without D_f).

    ``laf``: LAF's protocol for CIFAR-10 and SVHN, the one the paper followed (fastmix's
    default there, a 32x32 CIFAR-stem ResNet-18 without augmentation, is the fast
    variant). The model is LAF's torchvision-style ResNet-18 with an ImageNet stem and a
    512 -> 256 -> classes head (``resnet18-laf``, :class:`~fastmix.harness.models.LafResNet18`;
    ``layer3`` feeds the MixBlock), which resizes each batch to ``image_size`` (default
    224, LAF's; smaller for a quick try); the original and retrained models train with
    torchvision's ``RandomResizedCrop(image_size)`` (scale (0.08, 1), its and LAF's
    default) and a horizontal flip, drawn from a seeded generator
    (:func:`~fastmix.mixunlearn.augment.random_resized_crop_flip`); evaluation and the
    methods see the images unaugmented. Unlearning takes SPEC 7's lr 1e-5 and 40 epochs
    (the CIFAR-10 and SVHN defaults, :data:`DEFAULTS`). The images stay 32x32 in memory,
    so MixUnlearn mixes them at 32x32, before the model's resize."""
    if exp.protocol is None:
        return
    if exp.protocol not in PROTOCOLS:
        raise ValueError(f"protocol (--protocol) must be one of {', '.join(PROTOCOLS)}, got {exp.protocol!r}")
    if exp.protocol == "laf":
        if exp.dataset not in LAF_DATASETS:
            raise ValueError(f"--protocol laf runs on --dataset {' or '.join(LAF_DATASETS)}, got {exp.dataset}")
        if exp.model not in (None, LAF_MODEL):
            raise ValueError(f"--protocol laf trains LAF's ResNet-18 ({LAF_MODEL}); leave --model out, got "
                             f"--model {exp.model}")
        if exp.image_size is not None and (isinstance(exp.image_size, bool) or not isinstance(exp.image_size, int)
                                           or exp.image_size < 1):
            raise ValueError(f"image_size (--image-size) must be a positive integer, got {exp.image_size!r}")
        return
    if exp.dataset != "imagefolder":
        raise ValueError(f"--protocol paper-imagenet runs on --dataset imagefolder, got {exp.dataset}")
    if exp.setting != "data" or parse_classes(exp.forget_classes) != (5, 6, 7, 8, 9):
        raise ValueError("--protocol paper-imagenet forgets data-level from classes 5-9 (setting 'data', "
                         f"forget_classes '5-9'), got setting {exp.setting!r}, forget_classes {exp.forget_classes!r}")
    if not 0.1 <= exp.forget_fraction <= 0.4:
        raise ValueError(f"--protocol paper-imagenet forgets a --forget-fraction from 0.1 to 0.4, got "
                         f"{exp.forget_fraction}")
    if exp.checkpoint is None:
        raise ValueError("--protocol paper-imagenet fine-tunes a pretrained model: pass --checkpoint PATH")


def dataset_options(exp: Experiment, log) -> dict:
    """The image folder loader's options (the built-in data sets take none); the model's
    own input size and normalisation (a timm model's) fill what the flags leave out."""
    given = {k: getattr(exp, k) for k in ("image_size", "normalize", "test_fraction") if getattr(exp, k) is not None}
    if exp.dataset != "imagefolder":
        if exp.protocol == "laf":
            given.pop("image_size", None)  # the size LAF's model resizes batches to
        if given:
            also = " (--image-size also under --protocol laf)" if "image_size" in given else ""
            raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in given)}: only for --dataset "
                             f"imagefolder{also}, not {exp.dataset}")
        return {}
    model_input = {}
    if exp.model and exp.model.startswith("timm:") and (exp.image_size is None or exp.normalize is None):
        model_input = input_config(build_model(exp.model, 2, 3, exp.seed))  # its pretrained_cfg only
    return dict(image_size=exp.image_size, normalize=exp.normalize, test_fraction=exp.test_fraction,
                protocol=exp.protocol, seed=exp.seed, model_input=model_input, log=log)


def check_device(name: str) -> torch.device:
    """``name`` as a device this machine has: ``cpu``, ``cuda``/``cuda:N`` with a GPU
    present, ``mps`` where available; anything else is refused with the reason."""
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device (--device) {name!r} is not a device name; expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device (--device) {name!r}: no CUDA GPU is visible here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device (--device) {name!r}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device (--device) {name!r}: MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise ValueError(f"device (--device) {name!r}: fastmix runs on cpu, cuda or mps, not {dev.type}")
    return dev


def validate_experiment(exp: Experiment) -> dict:
    """Check every setting of ``exp`` that needs no data, before any work: data set,
    device, seed, evaluation split, methods and their options (MixUnlearn's
    :class:`MixUnlearnConfig` and :class:`EngineOptions` are built and validated here,
    not after the models are trained). Returns the resolved options."""
    if exp.dataset not in DEFAULTS:
        raise ValueError(f"dataset must be one of {', '.join(DEFAULTS)}, got {exp.dataset!r}")
    check_seed("seed (--seed)", exp.seed)
    if exp.eval_split not in ("test", "val"):
        raise ValueError(f"eval_split must be 'test' or 'val', got {exp.eval_split!r}")
    if isinstance(exp.val_size, bool) or not isinstance(exp.val_size, int) or exp.val_size < 0:
        raise ValueError(f"val_size (--val-size) must be an integer >= 0, got {exp.val_size!r}")
    if exp.eval_split == "val" and exp.val_size <= 0:
        raise ValueError("eval_split 'val' (--eval-split val) needs val_size > 0 (--val-size: a validation split "
                         "carved from the training data)")
    if exp.labels not in ("aware", "agnostic"):
        raise ValueError(f"labels must be 'aware' or 'agnostic', got {exp.labels!r}")
    device = check_device(exp.device)
    if not isinstance(exp.attacks, AttackSettings):
        raise ValueError(f"attacks must be an AttackSettings, got {type(exp.attacks).__name__}")
    check_attacks(exp.attacks)
    for name in exp.methods:
        get_method(name)  # an unknown name fails here, before any training
    options = resolve_options(exp.dataset, exp.setting, exp.options, recipe_values(exp))
    for name in exp.methods:
        check_labels(name, exp.labels, options)  # not after hours of training the models
    if "mixunlearn" in exp.methods:
        config = MixUnlearnConfig(**{k: v for k, v in options.items() if k in CONFIG_FIELDS and k != "labels"},
                                  labels=exp.labels).validate()
        EngineOptions(**{k: v for k, v in options.items() if k in ENGINE_FIELDS}).validate(device, config)
    return options


def prepare_outputs(exp: Experiment, results: bool) -> None:
    """Before any work: the models folder (and ``out`` when ``results`` are written)
    must be writable (a probe file is created and removed), and the temporary files of
    interrupted writes there are removed."""
    folders = [(models_dir_of(exp), "models folder (--models-dir)")]
    if results:
        folders.insert(0, (Path(exp.out), "output folder (--out)"))
    for folder, what in folders:
        check_writable(folder, what)
        remove_stale_tmp(folder)


def models_dir_of(exp: Experiment) -> Path:
    return Path(exp.models_dir) if exp.models_dir else Path(exp.out) / "models"


def prepare_data(exp: Experiment, log=lambda *a: None) -> tuple[ImageDataset, object]:
    """The data set (evaluated on its test set or a carved validation set) and the split."""
    validate_experiment(exp)
    check_protocol(exp)
    ds = load_dataset(exp.dataset, exp.data_root, **dataset_options(exp, log))
    if exp.val_size > 0:
        with_test, with_val = ds.carve_validation(exp.val_size, seed=exp.seed, in_place=True)
        ds = with_val if exp.eval_split == "val" else with_test
    split = make_split(
        ds.y_train, ds.num_classes, exp.setting, forget_class=exp.forget_class,
        forget_classes=exp.forget_classes, forget_fraction=exp.forget_fraction, seed=exp.seed,
    )
    return ds, split


def check_model(model, ds: ImageDataset, model_name: str) -> None:
    """One forward pass on two training images before any training: a model that cannot
    take the data set's images is found now."""
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(ds.x_train[:2].to(next(model.parameters()).device))
    except Exception as e:
        raise ValueError(f"model (--model) {model_name} cannot take {ds.name}'s images of shape "
                         f"{tuple(ds.image_shape)}: {e}") from None
    finally:
        model.train(was_training)
    if out.shape[-1] != ds.num_classes:
        raise ValueError(f"model (--model) {model_name} gives {out.shape[-1]} outputs, {ds.name} has "
                         f"{ds.num_classes} classes")


def model_meta(exp: Experiment, ds: ImageDataset, split, model_name: str, recipe: Recipe) -> tuple[dict, dict]:
    """What determines the original and the retrained model, as stored with each and
    hashed into its file name: the training data's content (a fingerprint of its
    tensors), the split (the retained indices), seed, model, recipe and fastmix version."""
    from fastmix import __version__

    base = dict(dataset=exp.dataset, model=model_name, recipe=asdict(recipe), seed=exp.seed, val_size=exp.val_size,
                n_train=int(ds.x_train.shape[0]), data=fingerprint(ds.x_train, ds.y_train), fastmix=__version__,
                **own_model_and_data_key(exp, ds))
    split_fields = dict(setting=split.setting, forget_classes=split.forget_classes,
                        forget_fraction=exp.forget_fraction if split.setting == "data" else None,
                        retain=fingerprint(split.retain))
    return {**base, "role": "original"}, {**base, **split_fields, "role": "retrain"}


def train_original_and_retrained(exp: Experiment, ds: ImageDataset, split, log=print, retrain: bool = True):
    """The original model (all training data) and the retrained one (D_r only), trained
    with the data set's recipe or loaded from ``out/models`` when trained before with
    the same data, split, recipe, model, seed and fastmix version (``models_dir``,
    default ``out/models``; :func:`model_meta`). A cached file whose stored metadata
    differ is refused before anything is trained. With a ``checkpoint`` both start from
    its weights (fine-tuning); else from the seed's. Returns ``(original, retrain, seconds)``;
    with ``retrain`` False (its row is known) the retrained model is neither trained nor
    loaded: None, and no seconds."""
    d = DEFAULTS[exp.dataset]["train"]
    recipe = Recipe(exp.train_epochs or d.epochs, d.batch_size, exp.train_lr or d.lr, d.weight_decay)
    laf = exp.protocol == "laf"
    model_name = exp.model or (LAF_MODEL if laf else default_model_name(ds.image_shape))
    size = exp.image_size or LAF_IMAGE_SIZE
    augment = (lambda xb, gen: random_resized_crop_flip(xb, gen, size)) if laf else None

    def make():
        model = build_model(model_name, ds.num_classes, ds.image_shape[0], exp.seed)
        if laf:
            model.input_size = size
        return load_weights(model, exp.checkpoint) if exp.checkpoint else model

    first = make()  # a bad checkpoint or feature layer fails here, before any training
    dev = torch.device(exp.device)
    rank, world_size = world()
    if rank == 0:
        prepare_outputs(exp, results=False)
    check_feature_layer(first, model_name, exp)
    check_model(first.to(dev), ds, model_name)
    meta_orig, meta_ret = model_meta(exp, ds, split, model_name, recipe)
    models_dir = models_dir_of(exp)
    path_orig = models_dir / f"{exp.dataset}-original-{cache_key(**meta_orig)}.pt"
    path_ret = models_dir / f"{exp.dataset}-retrain-{split.setting}-{cache_key(**meta_ret)}.pt"
    if rank == 0:
        check_cached(path_orig, meta_orig)
        check_cached(path_ret, meta_ret)
    x, y = ds.x_train.to(dev), ds.y_train.to(dev)
    if rank != 0:
        barrier()  # under torchrun rank 0 trains (or finds) the models first; the others load them
    original, t_orig, _ = train_or_load(
        path_orig, lambda: first, x, y, recipe, seed=exp.seed, meta=meta_orig, desc="original", quiet=exp.quiet,
        log=log, augment=augment,
    )
    seconds = {"original": t_orig}
    retrained = None
    if retrain:
        retain = split.retain.to(dev)
        retrained, seconds["retrain"], _ = train_or_load(
            path_ret, make, Rows(x, retain), y[retain], recipe, seed=exp.seed, meta=meta_ret, desc="retrain",
            quiet=exp.quiet, log=log, augment=augment,
        )
    if rank == 0 and world_size > 1:
        barrier()
    return original, retrained, seconds


def check_feature_layer(model, model_name: str, exp: Experiment) -> None:
    """Before any training: a ``--feature-layer`` given must name a module of the model,
    and MixUnlearn's MixBlock needs one (given, or the model's default)."""
    modules = [n for n, _ in model.named_modules() if n]
    given = exp.options.get("feature_layer")
    if given and given not in modules:
        raise ValueError(f"feature layer (--feature-layer) {given!r} is not a module of {model_name}; "
                         f"its modules: {', '.join(modules)}")
    if "mixunlearn" not in exp.methods or exp.options.get("mask") == "beta":
        return
    name = given or getattr(model, "feature_layer", None)
    if not name:
        raise ValueError(f"{model_name} has no default feature layer: pass --feature-layer NAME, the module "
                         f"whose output feeds the MixBlock; some names: {modules[:12]}")
    if name not in modules:
        raise ValueError(f"{model_name}'s default feature layer {name!r} is not one of its modules; pass "
                         f"--feature-layer NAME; some names: {modules[:12]}")


def own_model_and_data_key(exp: Experiment, ds: ImageDataset) -> dict:
    """What else determines a trained model: the image folder and its preparation, the
    protocol (LAF's: its input size and training augmentation), the checkpoint's bytes.
    Empty for a built-in data set without a protocol or checkpoint, so that their cached
    models keep their names. (A folder is known by its path and image counts, not by its
    contents: after changing its files, pass another --models-dir or clear it.)"""
    key = {}
    if exp.protocol == "laf":
        key.update(protocol="laf", image_size=exp.image_size or LAF_IMAGE_SIZE,
                   augment="random-resized-crop(0.08-1)+flip")
    if exp.dataset == "imagefolder":
        key.update(data_root=str(Path(exp.data_root).resolve()), image_shape=list(ds.image_shape),
                   n_eval=int(ds.x_test.shape[0]), normalize=exp.normalize, test_fraction=exp.test_fraction,
                   protocol=exp.protocol)
    if exp.checkpoint:
        key["checkpoint"] = file_digest(exp.checkpoint)
    return key


def rte(retrain_seconds: float, seconds: float) -> float:
    """Run-time efficiency: retrain's seconds over a method's (NaN for a zero time)."""
    return retrain_seconds / seconds if seconds > 0 else float("nan")


# Methods that run on every rank under torchrun (the others run on rank 0 alone).
DATA_PARALLEL_METHODS = ("mixunlearn",)


def method_context(exp: Experiment, ds: ImageDataset, split, original, options: dict) -> MethodContext:
    """D_f and D_r as :class:`Rows` of the one training tensor: the images are not copied
    (their labels are)."""
    dev = torch.device(exp.device)
    x, y = ds.x_train.to(dev), ds.y_train.to(dev)
    f_idx, r_idx = split.forget.to(dev), split.retain.to(dev)
    return MethodContext(
        original=original, x_forget=Rows(x, f_idx), y_forget=y[f_idx], x_retain=Rows(x, r_idx),
        y_retain=y[r_idx], labels=exp.labels, options=options, seed=exp.seed, quiet=exp.quiet,
    )


def run_experiment(exp: Experiment, log=print, write=None, references: dict | None = None) -> dict | None:
    """Run every method of ``exp`` and evaluate it with the original and retrain.

    Returns ``{"rows": {name: metrics}, "metrics": names, "extras": {...},
    "options": resolved options}``; each row has the metrics of SPEC 8 in percent,
    ``avg_gap`` (to retrain), ``seconds`` and ``RTE`` (retrain's seconds over the row's: how
    many times faster than retraining; a reused cached model reports the seconds its
    training took).

    Under torchrun (a process group of several ranks) every rank runs the
    data-parallel methods (:data:`DATA_PARALLEL_METHODS`) together; rank 0 alone runs
    the others and the evaluation, and the other ranks return None.

    Every setting is checked before any work (:func:`validate_experiment`, then the
    data, the split and the output folders). ``write``, when given, is called on rank 0
    with the result so far as soon as the original and retrain are evaluated and again
    after each method, so a run stopped half-way keeps what it finished;
    ``result["pending"]`` lists the methods not yet run (empty in the last call). With
    ``write``, ``exp.out`` must be writable before anything is trained.

    ``references``: rows of an earlier run of the same experiment (same data, split, seed,
    models and attacks), reused instead of evaluating the two models again
    (``"original"``, ``"retrain"``; a known retrain row also spares loading, or training,
    the retrained model) or running a method again (its name; its ``extras`` are then
    absent). The caller vouches for the match: :class:`fastmix.harness.tuning.Tuner`
    passes its first trial's original and retrain rows to the later trials of one search,
    where evaluating them each time cost about a third of a short trial, and ``fastmix
    unlearn`` passes the rows of a stopped run with the same settings, whose finished
    methods are not run again. A method's result does not depend on the others: each
    draws from generators seeded with ``exp.seed`` and works on its own copy of the
    original.
    """
    options = validate_experiment(exp)
    ds, split = prepare_data(exp, log)
    if write is not None and world()[0] == 0:
        prepare_outputs(exp, results=True)
    log(f"{exp.dataset}: {ds.x_train.shape[0]} training images ({split.forget.numel()} to forget), "
        f"{ds.x_test.shape[0]} {ds.eval_split} images; {split.setting}-level, label-{exp.labels}")
    known = references or {}
    original, retrained, train_seconds = train_original_and_retrained(exp, ds, split, log,
                                                                      retrain="retrain" not in known)
    names = metric_names(split.setting)
    rows, extras = {}, {}
    start = time.perf_counter()
    if world()[0] != 0:
        for name in exp.methods:
            if name in DATA_PARALLEL_METHODS:
                get_method(name)(method_context(exp, ds, split, original, options))
        return None
    result = {"rows": rows, "metrics": names, "extras": extras, "options": options, "split": split, "dataset": ds}

    def finished(pending):
        ordered = {n: rows[n] for n in ("original", "retrain", *exp.methods) if n in rows}  # kept rows in place
        rows.clear()
        rows.update(ordered)
        for row in rows.values():
            row["avg_gap"] = avg_gap(row, rows["retrain"], names)
            row["RTE"] = rte(rows["retrain"]["seconds"], row["seconds"])
        if write is not None:
            write({**result, "pending": list(pending)})

    for name, model in (("original", original), ("retrain", retrained)):
        rows[name] = dict(known[name]) if name in known else \
            {**evaluate(model, ds, split, exp.seed, exp.attacks), "seconds": train_seconds[name]}
    for name in exp.methods:  # in the first write already: a stop before the loop loses none of them
        if name in known:
            rows[name] = dict(known[name])
            log(f"{name}: its row is reused, not run again")
    pending = [name for name in exp.methods if name not in rows]
    finished(pending)
    for i, name in enumerate(pending):
        method_result = get_method(name)(method_context(exp, ds, split, original, options))
        rows[name] = {**evaluate(method_result.model, ds, split, exp.seed, exp.attacks),
                      "seconds": method_result.seconds}
        extras[name] = method_result.extras
        log(f"{name}: {method_result.seconds:.1f}s")
        finished(pending[i + 1:])
    log(f"evaluation and methods took {time.perf_counter() - start:.1f}s")
    return result
