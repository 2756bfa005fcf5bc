"""Issue-13 study: fastmix's four departures from the authors' code, measured.

For Fashion-MNIST class-level and data-level (label-aware), seeds 0, 1, 2, scored on a
5000-image validation split carved from the training data (never the test set), this
runs MixUnlearn with fastmix's defaults and with each option switched to the authors'
choice, one at a time:

  lambda_per=batch, generator_opponent=lagged, mixblock_init=paper, mask_upsample=nearest

The original and retrained models are the paper's 20-epoch ones (one set per seed,
cached in OUT/models and shared with the other studies that use the same OUT).

Usage:
  python scripts/fashion_mnist_options.py OUT [--workers 2] [--unlearn-epochs 10]
  python scripts/fashion_mnist_options.py OUT --table   # the RESULTS.md table from what exists
In the table, "seconds" is the unlearning's wall time, and for the retrain row its training's.
Resumable: finished runs (OUT/runs/*.json) are skipped. ``--workers 2`` starts two
processes of one thread each.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
from pathlib import Path

from runqueue import Run, load_results, work

from fastmix.harness.experiment import Experiment

SEEDS = (0, 1, 2)
SETTINGS = ("class", "data")
VARIANTS = {  # name -> the options it changes from fastmix's defaults
    "fastmix defaults": {},
    "lambda_per=batch": {"lambda_per": "batch"},
    "generator_opponent=lagged": {"generator_opponent": "lagged"},
    "mixblock_init=paper": {"mixblock_init": "paper"},
    "mask_upsample=nearest": {"mask_upsample": "nearest"},
}


def runs(args) -> list[Run]:
    out = []
    for seed in SEEDS:
        for setting in SETTINGS:
            for name, change in VARIANTS.items():
                slug = name.replace(" ", "-").replace("=", "-")
                exp = Experiment(dataset="fashion-mnist", data_root=args.data_root, setting=setting, labels="aware",
                                 methods=("mixunlearn",), train_epochs=20, val_size=5000, eval_split="val",
                                 seed=seed, options=dict(epochs=args.unlearn_epochs, **change))
                out.append(Run(f"{setting}-{slug}-seed{seed}", exp,
                               {"setting": setting, "variant": name, "seed": seed}))
    return out


def mean_std(values) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(args) -> str:
    all_runs = runs(args)
    found = load_results(Path(args.out), all_runs)
    lines = []
    for setting in SETTINGS:
        metrics = None
        groups: dict[str, list[dict]] = {}
        for run in all_runs:
            rec = found.get(run.key)
            if rec and run.info["setting"] == setting:
                groups.setdefault(run.info["variant"], []).append(rec)
                metrics = rec["metrics"]
        if not metrics:
            continue
        lines += [f"**{setting}-level, label-aware**, validation split, mean ± std over seeds", "",
                  "| variant | seeds | " + " | ".join(metrics)
                  + " | val Avg. Gap | paired Δ gap | mean mask | seconds |",
                  "|---" * (len(metrics) + 6) + "|"]
        base_gap = {r["info"]["seed"]: r["rows"]["mixunlearn"]["avg_gap"] for r in groups.get("fastmix defaults", [])}
        for name in ["retrain"] + list(VARIANTS):
            recs = groups.get(name) if name != "retrain" else groups.get("fastmix defaults")
            if not recs:
                continue
            row = "retrain" if name == "retrain" else "mixunlearn"
            cells = [mean_std([r["rows"][row][m] for r in recs]) for m in metrics]
            gap = mean_std([r["rows"][row]["avg_gap"] for r in recs])
            # the same seed's models and data: the difference to the defaults' gap without the seed-to-seed spread
            paired = [r["rows"][row]["avg_gap"] - base_gap[r["info"]["seed"]] for r in recs
                      if r["info"]["seed"] in base_gap]
            delta = "" if name in ("retrain", "fastmix defaults") else mean_std(paired)
            mask = "" if name == "retrain" else mean_std([mean_mask(r) for r in recs if mean_mask(r) is not None])
            secs = mean_std([r["rows"][row]["seconds"] for r in recs])
            lines.append(f"| {name} | {len(recs)} | " + " | ".join(cells) + f" | {gap} | {delta} | {mask} | {secs} |")
        lines.append("")
    return "\n".join(lines)


def mean_mask(rec) -> float | None:
    """The unlearner step's mean mask over all its mixes (count-weighted over the lambda bins)."""
    stats = rec.get("mask_stats")
    if not stats:
        return None
    pairs = [(c, m) for c, m in zip(stats["count"], stats["mean_mask"]) if c and m is not None]
    total = sum(c for c, _ in pairs)
    return sum(c * m for c, m in pairs) / total if total else None


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--unlearn-epochs", type=int, default=10)
    p.add_argument("--data-root")
    p.add_argument("--table", action="store_true", help="print the table from the finished runs and stop")
    args = p.parse_args()
    if args.table:
        print(table(args))
        return
    todo = runs(args)
    procs = [mp.Process(target=work, args=(args.out, todo)) for _ in range(args.workers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    print(table(args))


if __name__ == "__main__":
    main()
