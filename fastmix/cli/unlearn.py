"""`fastmix unlearn`: run MixUnlearn and the baselines, compare them with retrain."""
from __future__ import annotations

import sys
from pathlib import Path

from fastmix.harness.experiment import DEFAULTS, OUTPUT_FIELDS
from fastmix.harness.methods import METHOD_SETTINGS, METHODS
from fastmix.mixunlearn.config import EngineOptions, MixUnlearnConfig

from .args import (
    add_attack_args,
    add_data_args,
    add_recipe_arg,
    add_setting_flags,
    apply_threads,
    check_args,
    experiment_from_args,
    method_names,
    seed_list,
    setting_values,
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "unlearn", help="unlearn with MixUnlearn and baselines; table, results.json, PNG",
        description="Forget D_f with each method, then print a table of the metrics of each method beside "
        "the original and the retrained model, and write OUT/results.json and OUT/results.png. "
        "Options left out take the data set's defaults (fastmix/harness/experiment.py), else the method's own. "
        "Under `torchrun --nproc_per_node=N -m fastmix unlearn ...` MixUnlearn runs data-parallel at the same "
        "global --batch-size (nccl on GPUs, gloo on the CPU); rank 0 trains the models and writes the results.",
    )
    add_data_args(p)
    add_attack_args(p)
    add_recipe_arg(p)
    add_method_args(p, method_help=f"comma-separated, from: {', '.join(METHODS)}; 'all' runs every one (default "
                    "mixunlearn,finetune)")
    p.add_argument("--seeds", type=seed_list, metavar="S,S,...",
                   help="run everything once per seed (OUT/seed-N/) and report each metric's mean ± std; "
                   "replaces --seed")
    p.add_argument("--no-png", action="store_true", help="skip the PNG")
    p.set_defaults(run=run)


def add_method_args(p, method_help: str, method_default: str | None = "mixunlearn,finetune") -> None:
    """--labels, --method and every method's settings (shared by `fastmix unlearn` and `fastmix tune`)."""
    p.add_argument("--labels", default="aware", choices=("aware", "agnostic"),
                   help="targets: true labels, or sharpened outputs of the original model")
    p.add_argument("--method", default=method_default, required=method_default is None, help=method_help)
    h = p.add_argument_group("MixUnlearn (SPEC 6, 7)")
    add_setting_flags(h, MixUnlearnConfig, DEFAULTS)
    h.add_argument("--feature-layer", help="module feeding the MixBlock (default: the model's)")
    e = p.add_argument_group("MixUnlearn engine (how the steps run, not what they compute)")
    add_setting_flags(e, EngineOptions)
    add_method_flags(p)


def add_method_flags(p) -> None:
    """The flags of every method's settings but MixUnlearn's (its own groups, with the engine's)."""
    for name, settings in METHOD_SETTINGS.items():
        if settings is not None and name != "mixunlearn":
            add_setting_flags(p.add_argument_group(f"{name} (baseline)"), settings, DEFAULTS)


def options_from_args(args) -> dict:
    """The methods' options given on the command line (None: not given)."""
    baselines = {}
    for name, settings in METHOD_SETTINGS.items():
        if settings is not None and name != "mixunlearn":
            baselines.update(setting_values(args, settings))
    return {**setting_values(args, MixUnlearnConfig), **setting_values(args, EngineOptions),
            "feature_layer": args.feature_layer, **baselines}


def run_settings(exp, options: dict) -> dict:
    """What results.json's ``settings`` record of a run before its data are loaded: the
    Experiment's fields and the resolved ``options``."""
    from dataclasses import asdict

    from fastmix.harness.experiment import OWN_MODEL_AND_DATA

    settings = {k: v for k, v in asdict(exp).items()
                if k not in ("options", "quiet") and not ((k in OWN_MODEL_AND_DATA or k == "recipe") and v is None)}
    settings["options"] = options
    return settings


def results_settings(exp, result) -> dict:
    """The ``settings`` record of results.json."""
    settings = run_settings(exp, result["options"])
    settings.update(n_forget=int(result["split"].forget.numel()), n_retain=int(result["split"].retain.numel()),
                    n_eval=int(result["dataset"].x_test.shape[0]))
    return settings


# Settings that do not change what a run computes (where it writes) or follow from the others (the sizes).
NOT_COMPARED = (*OUTPUT_FIELDS, "n_forget", "n_retain", "n_eval")
# Keys of results.json that are not rows.
NOT_ROWS = ("pending", "diagnostics", "settings", "versions")


def recorded_results(path: Path, exp) -> dict | None:
    """``{"rows", "settings", "pending", "diagnostics", "sources"}`` of ``path`` (a results.json) when it
    holds a run, complete or stopped, with ``exp``'s settings apart from
    :data:`NOT_COMPARED`, else None (missing, unreadable or other settings). An image
    folder's files are not compared, only its path and sizes (as for the cached models)."""
    import json

    from fastmix.harness.experiment import validate_experiment
    from fastmix.harness.report import recorded_sources

    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("settings"), dict):
        return None
    expected = json.loads(json.dumps(run_settings(exp, validate_experiment(exp)), default=str))
    same = lambda d: {k: v for k, v in d.items() if k not in NOT_COMPARED}  # noqa: E731
    if same(doc["settings"]) != same(expected):
        return None
    rows = {k: v for k, v in doc.items() if k not in NOT_ROWS}
    return {"rows": rows, "settings": doc["settings"], "pending": list(doc.get("pending") or ()),
            "diagnostics": doc.get("diagnostics"), "sources": recorded_sources(doc)}


def finished_results(path: Path, exp) -> dict | None:
    """The rows, settings and sources of ``path`` when it holds a complete run (no ``pending``) with
    ``exp``'s settings (:func:`recorded_results`), else None: the run is done again."""
    doc = recorded_results(path, exp)
    if doc is None or doc["pending"]:
        return None
    return {"rows": doc["rows"], "settings": doc["settings"], "sources": doc["sources"]}


def stopped_run(path: Path, exp) -> dict | None:
    """What a stopped run with ``exp``'s settings left in ``path``: ``{"rows", "diagnostics", "sources"}``
    with the rows of the original, retrain and every method it finished, or None (no such
    run, or nothing finished that another run would reuse)."""
    doc = recorded_results(path, exp)
    if doc is None or not doc["pending"]:
        return None
    rows = {name: row for name, row in doc["rows"].items()
            if name in ("original", "retrain") or (name in exp.methods and name not in doc["pending"])}
    if not {"original", "retrain"} <= rows.keys():
        return None
    return {"rows": rows, "diagnostics": doc["diagnostics"], "sources": doc["sources"]}


def diagnostics(result) -> dict | None:
    """What results.json records beside the metrics: the MixBlock's mean mask per lambda
    bin (``MixUnlearn.mask_stats``: whether the mask follows lambda; on Fashion-MNIST RESULTS.md
    found it nearly flat, 0.59 to 0.68 across the bins)."""
    mu = result["extras"].get("mixunlearn", {}).get("mixunlearn")
    if mu is None or getattr(mu, "mask_stats", None) is None:
        return None
    return {"mixunlearn": {"mask_stats": mu.mask_stats}}


def run(args) -> int:
    if args.seeds:
        return run_seeds(args)
    rc, _, _ = run_one(args)
    return rc


def run_one(args):
    """One run of every method at ``args.seed``: ``(exit code, result or None, Experiment or None)``."""
    from fastmix.harness.data import DataError
    from fastmix.harness.experiment import run_experiment
    from fastmix.harness.report import code_hash, format_table, write_png, write_results
    from fastmix.mixunlearn.distributed import init_from_env, launched_by_torchrun, world

    apply_threads(args)
    code_hash()  # the code this run starts with, whatever is edited while it runs
    try:
        options = options_from_args(args)
        methods = method_names(args, options)
        check_args(args)
        exp = experiment_from_args(args, methods, options)
    except ValueError as e:
        print(f"fastmix unlearn: error: {e}")
        return 2, None, None
    if launched_by_torchrun():  # data-parallel: one process per device, results from rank 0
        exp.device = str(init_from_env(exp.device))
        exp.quiet = exp.quiet or world()[0] != 0
    log = (lambda *a: None) if exp.quiet else (lambda *a: print(*a, file=sys.stderr))
    out = Path(args.out)

    # a stopped run with these settings: its finished methods are kept, not run again
    # (never under torchrun, whose ranks must all run the same methods)
    try:
        stopped = None if launched_by_torchrun() else stopped_run(out / "results.json", exp)
    except ValueError:  # settings the run itself rejects, with its own message
        stopped = None
    kept = stopped["diagnostics"] if stopped is not None else None
    if stopped is not None and not args.quiet:
        done = [name for name in exp.methods if name in stopped["rows"]]
        print(f"{out / 'results.json'} holds a stopped run with these settings: "
              f"{', '.join(done) if done else 'no method'} finished; running the rest")

    written = {}

    def write(result):  # results.json after each method: a stopped run keeps what it finished
        written.update(write_results(out / "results.json", result["rows"], results_settings(exp, result),
                                     pending=result["pending"], diagnostics=diagnostics(result) or kept,
                                     sources=stopped["sources"] if stopped else ()))

    try:
        result = run_experiment(exp, log=log, write=write, references=stopped and stopped["rows"])
    except (DataError, ValueError) as e:
        print(f"fastmix unlearn: error: {e}")
        return 2, None, None
    finally:
        if launched_by_torchrun():
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    if result is None:  # a rank other than 0 under torchrun
        return 0, None, exp
    rows, metrics = result["rows"], result["metrics"]
    result["sources"] = written["versions"]["fastmix_sources"]
    print(format_table(rows, metrics))
    if not args.no_png:
        mu = result["extras"].get("mixunlearn", {}).get("mixunlearn")
        preview = mu.preview(seed=exp.seed) if mu is not None else None
        title = f"{exp.dataset}, {exp.setting}-level, label-{exp.labels}, seed {exp.seed}"
        mask_stats = mu.mask_stats if mu is not None else ((kept or {}).get("mixunlearn") or {}).get("mask_stats")
        write_png(out / "results.png", rows, metrics, preview, title, mask_stats=mask_stats)
    if not args.quiet:
        print(f"wrote {out / 'results.json'}" + ("" if args.no_png else f" and {out / 'results.png'}"))
    return 0, result, exp


def run_seeds(args) -> int:
    """``--seeds``: one run per seed in ``OUT/seed-N/`` (its own results.json, PNG and
    cached models), then ``OUT/results.json``, the table and the PNG with each metric's
    mean and sample standard deviation over the seeds (``METRIC_std``).

    A seed whose results.json is complete and has this run's settings (apart from where
    it is written) is not run again: a stopped ``--seeds`` run resumes with the seeds it
    had left, a seed whose run was stopped keeps the methods it finished (as any run of
    :func:`run_one` does), and a seed with other settings is run again."""
    import copy

    from fastmix.harness.evaluation import metric_names
    from fastmix.harness.report import aggregate, format_table, write_png, write_results
    from fastmix.mixunlearn.distributed import launched_by_torchrun

    if launched_by_torchrun():
        print("fastmix unlearn: error: --seeds runs in one process; give torchrun one --seed at a time")
        return 2
    out = Path(args.out)
    per_seed = []
    for seed in args.seeds:
        one = copy.copy(args)
        one.seed, one.seeds, one.out = seed, None, str(out / f"seed-{seed}")
        done = reusable_run(one)
        if done is not None:
            if not args.quiet:
                print(f"seed {seed}: {Path(one.out) / 'results.json'} is complete with these settings; not run again")
            per_seed.append(done)
            continue
        if not args.quiet:
            print(f"seed {seed}:")
        rc, result, exp = run_one(one)
        if rc != 0:
            return rc
        per_seed.append({"rows": result["rows"], "settings": results_settings(exp, result),
                         "sources": result["sources"]})
    settings = dict(per_seed[-1]["settings"])
    rows, metrics = aggregate([run["rows"] for run in per_seed]), metric_names(settings["setting"])
    print(f"mean ± std over seeds {', '.join(map(str, args.seeds))}:")
    print(format_table(rows, metrics))
    settings.pop("seed", None)
    settings.update(seeds=list(args.seeds), out=str(out))
    write_results(out / "results.json", rows, settings, sources=[h for run in per_seed for h in run["sources"]],
                  made_here=False)
    if not args.no_png:
        title = (f"{settings['dataset']}, {settings['setting']}-level, label-{settings['labels']}, "
                 f"seeds {', '.join(map(str, args.seeds))}")
        write_png(out / "results.png", rows, metrics, None, title)
    return 0


def reusable_run(args) -> dict | None:
    """``{"rows", "settings", "sources"}`` of ``OUT/results.json`` when it holds this run, finished
    (:func:`finished_results`), else None (also for bad arguments, which the run reports)."""
    try:
        options = options_from_args(args)
        exp = experiment_from_args(args, method_names(args, options), options)
        check_args(args)
    except ValueError:
        return None
    try:
        return finished_results(Path(args.out) / "results.json", exp)
    except ValueError:
        return None
