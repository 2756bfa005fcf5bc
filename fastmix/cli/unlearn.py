"""`fastmix unlearn`: run MixUnlearn and the baselines, compare them with retrain."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .args import add_data_args, apply_threads, experiment_from_args, nonneg_float, positive_float, positive_int


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "unlearn", help="unlearn with MixUnlearn and baselines; table, results.json, PNG",
        description="Forget D_f with each method, then print a table of the metrics of each method beside "
        "the original and the retrained model, and write OUT/results.json and OUT/results.png. "
        "Options left out take the data set's defaults (see fastmix/experiment.py). "
        "Under `torchrun --nproc_per_node=N -m fastmix unlearn ...` MixUnlearn runs data-parallel at the same "
        "global --batch-size (nccl on GPUs, gloo on the CPU); rank 0 trains the models and writes the results.",
    )
    add_data_args(p)
    p.add_argument("--labels", default="aware", choices=("aware", "agnostic"),
                   help="targets: true labels, or sharpened outputs of the original model")
    p.add_argument("--method", default="mixunlearn,finetune", help="comma-separated: mixunlearn, finetune (default both)")
    h = p.add_argument_group("MixUnlearn (SPEC 6, 7)")
    h.add_argument("--alpha", type=positive_float, help="Beta(alpha, alpha) of lambda (0.75)")
    h.add_argument("--tau-gen", type=positive_float)
    h.add_argument("--tau-mix", type=positive_float)
    h.add_argument("--tau-real", type=positive_float)
    h.add_argument("--omega", type=nonneg_float, help="weight of L_real; 0 drops it")
    h.add_argument("--sharpen-T", type=positive_float, help="label-agnostic sharpening (0.3; 1 turns it off)")
    h.add_argument("--gen-interval", type=positive_int, help="generator step every N iterations (4)")
    h.add_argument("--gen-lr", type=positive_float, help="the MixBlock's Adam learning rate (1e-3)")
    h.add_argument("--lr", type=positive_float, help="the unlearner's Adam learning rate")
    h.add_argument("--unlearn-epochs", type=positive_int, help="passes over D_f")
    h.add_argument("--batch-size", type=positive_int, help="B (32)")
    h.add_argument("--mask", choices=("mixblock", "beta"), help="beta: plain Beta-mixup ablation")
    h.add_argument("--no-mix", action="store_true", help="ablation without L_mix")
    h.add_argument("--feature-layer", help="module feeding the MixBlock (default: the model's)")
    e = p.add_argument_group("MixUnlearn engine (how the steps run, not what they compute)")
    e.add_argument("--reference-step", action="store_true",
                   help="the eager paper-style step: f_D recomputed every batch, host-side sampling, plain-torch "
                   "losses through autograd (what the benchmarks compare against)")
    e.add_argument("--no-cache", action="store_true",
                   help="run f_D on every batch instead of caching its outputs once per sample")
    e.add_argument("--cache-limit-mb", type=nonneg_float,
                   help="refuse a teacher cache larger than this (default: half the device's free memory)")
    e.add_argument("--augment", choices=("none", "crop-flip"),
                   help="on-device augmentation of both batches (crop-flip: 4-pixel shifts and flips); turns the cache off")
    e.add_argument("--amp", choices=("off", "bf16", "fp16"),
                   help="mixed precision of the unlearner's forward (fp32 weights and losses; default off)")
    e.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last models and images (default: on for convolutional models)")
    e.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="capture the steps in CUDA graphs (needs a GPU; not yet verified on one, so off by default)")
    e.add_argument("--flush-subnormals", action=argparse.BooleanOptionalAction, default=None,
                   help="zero the models' subnormal weights before each epoch, which x86 CPUs compute with "
                   "in microcode (default: on for the CPU)")
    f = p.add_argument_group("fine-tuning baseline")
    f.add_argument("--ft-epochs", type=positive_int)
    f.add_argument("--ft-lr", type=positive_float)
    p.add_argument("--no-png", action="store_true", help="skip the PNG")
    p.set_defaults(run=run)


def options_from_args(args) -> dict:
    return dict(
        alpha=args.alpha, tau_gen=args.tau_gen, tau_mix=args.tau_mix, tau_real=args.tau_real, omega=args.omega,
        sharpen_T=args.sharpen_T, gen_interval=args.gen_interval, gen_lr=args.gen_lr, lr=args.lr,
        epochs=args.unlearn_epochs, batch_size=args.batch_size, mask=args.mask,
        use_mix=False if args.no_mix else None, feature_layer=args.feature_layer,
        ft_epochs=args.ft_epochs, ft_lr=args.ft_lr,
        step="reference" if args.reference_step else None, cache=False if args.no_cache else None,
        cache_limit_mb=args.cache_limit_mb, augment=args.augment, amp=args.amp,
        channels_last=args.channels_last, cuda_graphs=args.cuda_graphs, flush_subnormals=args.flush_subnormals,
    )


def run(args) -> int:
    from dataclasses import asdict

    from fastmix.harness.data import DataError
    from fastmix.mixunlearn.distributed import init_from_env, launched_by_torchrun, world
    from fastmix.harness.experiment import run_experiment
    from fastmix.harness.report import format_table, write_png, write_results

    apply_threads(args)
    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    if not methods:
        print("fastmix unlearn: error: --method needs at least one method name")
        return 2
    exp = experiment_from_args(args, methods, options_from_args(args))
    if launched_by_torchrun():  # data-parallel: one process per device, results from rank 0
        exp.device = str(init_from_env(exp.device))
        exp.quiet = exp.quiet or world()[0] != 0
    log = (lambda *a: None) if exp.quiet else (lambda *a: print(*a, file=sys.stderr))
    try:
        result = run_experiment(exp, log=log)
    except (DataError, ValueError) as e:
        print(f"fastmix unlearn: error: {e}")
        return 2
    finally:
        if launched_by_torchrun():
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    if result is None:  # a rank other than 0 under torchrun
        return 0
    rows, metrics = result["rows"], result["metrics"]
    print(format_table(rows, metrics))
    out = Path(args.out)
    settings = {k: v for k, v in asdict(exp).items() if k not in ("options", "quiet")}
    settings.update(options=result["options"], n_forget=int(result["split"].forget.numel()),
                    n_retain=int(result["split"].retain.numel()), n_eval=int(result["dataset"].x_test.shape[0]))
    write_results(out / "results.json", rows, settings)
    if not args.no_png:
        mu = result["extras"].get("mixunlearn", {}).get("mixunlearn")
        preview = mu.preview(seed=exp.seed) if mu is not None else None
        title = f"{exp.dataset}, {exp.setting}-level, label-{exp.labels}, seed {exp.seed}"
        write_png(out / "results.png", rows, metrics, preview, title)
    if not args.quiet:
        print(f"wrote {out / 'results.json'}" + ("" if args.no_png else f" and {out / 'results.png'}"))
    return 0
