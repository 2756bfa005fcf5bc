"""The hyperparameter search behind RESULTS.md: at most a dozen MixUnlearn runs on
Fashion-MNIST, class-level, label-aware, scored by Avg. Gap to retrain on a
validation split carved from the training data (never the test set).

Usage: python scripts/fashion_mnist_search.py OUT [--unlearn-epochs N] [--train-epochs N]
Stage 1 searches omega x tau_real, stage 2 moves tau_mix and tau_gen one at a
time from the best of stage 1, stage 3 combines the stage-2 winners. Every run is
appended to OUT/search.jsonl; the best setting is printed at the end.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fastmix.harness.experiment import Experiment, run_experiment


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--unlearn-epochs", type=int, default=5)
    p.add_argument("--train-epochs", type=int, default=5)
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-root")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    log_path = Path(args.out) / "search.jsonl"
    done = {}
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            rec = json.loads(line)
            done[json.dumps(rec["params"], sort_keys=True)] = rec

    def trial(**params):
        key = json.dumps(params, sort_keys=True)
        if key in done:
            return done[key]["score"]
        exp = Experiment(
            dataset="fashion-mnist", data_root=args.data_root, setting="class", labels="aware",
            methods=("mixunlearn",), train_epochs=args.train_epochs, val_size=args.val_size, eval_split="val",
            seed=0, out=args.out, quiet=True, options=dict(epochs=args.unlearn_epochs, **params),
        )
        start = time.perf_counter()
        res = run_experiment(exp, log=lambda *a: None)
        row = res["rows"]["mixunlearn"]
        rec = {"params": params, "score": row["avg_gap"], "row": row, "retrain": res["rows"]["retrain"],
               "wall_s": time.perf_counter() - start, "unlearn_epochs": args.unlearn_epochs}
        with open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        done[key] = rec
        print(f"{params} -> val Avg.Gap {row['avg_gap']:.2f} (Train_f {row['Train_f']:.1f}, "
              f"Test_r {row['Test_r']:.1f}, Test_f {row['Test_f']:.1f}) in {rec['wall_s']:.0f}s", flush=True)
        return rec["score"]

    base = dict(tau_gen=1.0, tau_mix=10.0)
    stage1 = {(o, t): trial(**base, omega=o, tau_real=t) for o in (1.0, 10.0, 30.0) for t in (5.0, 20.0)}
    omega, tau_real = min(stage1, key=stage1.get)
    best = dict(base, omega=omega, tau_real=tau_real)
    best_score = stage1[(omega, tau_real)]
    winners = {}
    for name, values in (("tau_mix", (1.0, 50.0)), ("tau_gen", (0.1, 5.0))):
        for v in values:
            s = trial(**{**best, name: v})
            if s < best_score and s < winners.get(name, (None, float("inf")))[1]:
                winners[name] = (v, s)
    final = dict(best, **{k: v for k, (v, _) in winners.items()})
    if len(winners) == 2:
        trial(**final)
    scores = {k: v["score"] for k, v in done.items()}
    best_key = min(scores, key=scores.get)
    print("best:", best_key, f"val Avg.Gap {scores[best_key]:.2f}", f"({len(done)} runs)")


if __name__ == "__main__":
    main()
