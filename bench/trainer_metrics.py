"""Do the fast step and ``--paper-step`` unlearn equally well? Final metrics of
MixUnlearn with each step over several unlearning seeds, on one original model.

Usage: python bench/trainer_metrics.py --models-dir DIR [--step fast,paper] [--seeds 0,1,2]
       [--dataset fashion-mnist] [--setting class] [--labels aware] [--val-size 5000]
       [--train-epochs 5] [--unlearn-epochs 10] [--threads 1]

The original and retrained models are those `fastmix unlearn` trains (or finds in
``--models-dir``) for the same data set, split, recipe and seed 0; only the unlearning
seed varies (batches, lambdas, pairings, the MixBlock's initialisation). The spread
over seeds of one step is the run-to-run noise that the difference between the steps
is measured against. Prints a markdown table: each run's metrics of SPEC 8, Avg. Gap
to retrain and wall time, then each step's mean and standard deviation.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import statistics

import torch

from fastmix.harness.evaluation import avg_gap, evaluate, metric_names
from fastmix.harness.experiment import (
    Experiment,
    method_context,
    prepare_data,
    resolve_options,
    train_original_and_retrained,
)
from fastmix.harness.methods import get_method


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models-dir", required=True)
    p.add_argument("--data-root")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--setting", default="class", choices=("class", "data"))
    p.add_argument("--labels", default="aware", choices=("aware", "agnostic"))
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--train-epochs", type=int, default=5)
    p.add_argument("--unlearn-epochs", type=int, default=10)
    p.add_argument("--step", default="fast,paper")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    steps, seeds = args.step.split(","), [int(s) for s in args.seeds.split(",")]
    exp = Experiment(dataset=args.dataset, data_root=args.data_root, setting=args.setting, labels=args.labels,
                     val_size=args.val_size, train_epochs=args.train_epochs, seed=0, models_dir=args.models_dir,
                     quiet=True, options={"epochs": args.unlearn_epochs})
    options = resolve_options(exp.dataset, exp.setting, exp.options)
    ds, split = prepare_data(exp)
    original, retrained, _ = train_original_and_retrained(exp, ds, split, log=lambda *a: None)
    names = metric_names(split.setting)
    retrain = evaluate(retrained, ds, split, exp.seed)
    mixunlearn = get_method("mixunlearn")
    print(f"{args.dataset}, {args.setting}-level, label-{args.labels}: {split.forget.numel()} to forget; "
          f"{args.unlearn_epochs} unlearning epochs; {args.threads} thread(s), torch {torch.__version__}, "
          f"{datetime.date.today()}\n")
    print(f"| step | seed | {' | '.join(names)} | avg gap | seconds |")
    print("|---|---|" + "---|" * (len(names) + 2))
    print(f"| retrain | | {' | '.join(f'{retrain[k]:.2f}' for k in names)} | 0 | |", flush=True)
    rows = {s: [] for s in steps}
    for step in steps:
        for seed in seeds:
            ctx = dataclasses.replace(method_context(exp, ds, split, original, {**options, "step": step}), seed=seed)
            result = mixunlearn(ctx)
            m = evaluate(result.model, ds, split, exp.seed)
            m["avg_gap"], m["seconds"] = avg_gap(m, retrain, names), result.seconds
            rows[step].append(m)
            print(f"| {step} | {seed} | {' | '.join(f'{m[k]:.2f}' for k in (*names, 'avg_gap'))} "
                  f"| {m['seconds']:.1f} |", flush=True)
    for step, runs in rows.items():
        cells = []
        for k in (*names, "avg_gap", "seconds"):
            vals = [r[k] for r in runs]
            sd = statistics.stdev(vals) if len(vals) > 1 else float("nan")
            cells.append(f"{statistics.mean(vals):.2f} ± {sd:.2f}")
        print(f"| {step}: mean ± sd | | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
