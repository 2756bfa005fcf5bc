"""Fashion-MNIST class-level unlearning, fast step against ``--paper-step``, timed
in alternation in one process so that both see the same machine load.

Usage: python bench/trainer_epoch.py [--epochs 1] [--rounds 3] [--threads 1] [--device cpu] [--weights CKPT]

One round runs ``MixUnlearn.unlearn`` with each variant: the paper step, the fast
step with the default engine options (channels_last, subnormal weights flushed, fused
Adam on the CPU), and the fast step without each of the first two, to show what each
buys (D_f = class 0 of the Fashion-MNIST training set, D_r the rest; SPEC 8's CNN,
freshly initialised or loaded from a `fastmix train` checkpoint with --weights: a
trained model's weights hold subnormal floats, which the CPU computes with slowly;
B = 32, the data set's defaults otherwise)
and records the wall time, split into set-up (the teacher cache's build, for the
fast step) and the loop. Prints a markdown table: the median over rounds of each, and
the ratio paper / fast of the medians. The data come from Debian's
dataset-fashion-mnist or FASTMIX_FASHION_MNIST=DIR.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics

import torch

from fastmix import MixUnlearn
from fastmix.harness.data import load_dataset
from fastmix.harness.experiment import resolve_options
from fastmix.harness.models import MnistCNN
from fastmix.harness.training import load_checkpoint
from fastmix.mixunlearn.config import CONFIG_FIELDS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--weights", help="a checkpoint of the original model (fastmix train's OUT/models/*-original-*.pt)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    ds = load_dataset("fashion-mnist", os.environ.get("FASTMIX_FASHION_MNIST"))
    forget = ds.y_train == 0
    f = (ds.x_train[forget].to(dev), ds.y_train[forget].to(dev))
    r = (ds.x_train[~forget].to(dev), ds.y_train[~forget].to(dev))
    resolved = resolve_options("fashion-mnist", "class", {"epochs": args.epochs})
    opts = {k: v for k, v in resolved.items() if k in CONFIG_FIELDS}
    torch.manual_seed(0)
    net = MnistCNN()
    if args.weights:
        load_checkpoint(args.weights, net)
    net = net.to(dev)
    variants = {"paper": dict(step="paper"), "fast": {},
                "fast, subnormals kept": dict(flush_subnormals=False),
                "fast, NCHW": dict(channels_last=False)}
    times = {k: [] for k in variants}
    for rnd in range(args.rounds):
        for name in list(variants) if rnd % 2 == 0 else list(variants)[::-1]:
            mu = MixUnlearn(net, seed=0, device=dev, **variants[name], **opts)
            mu.unlearn(f, r)
            times[name].append((mu.seconds, mu.timings["setup_s"], mu.timings["loop_s"], mu.timings["steps"]))
            print(f"round {rnd} {name}: {mu.seconds:.2f} s (set-up {mu.timings['setup_s']:.2f} s, "
                  f"loop {mu.timings['loop_s']:.2f} s)", flush=True)
    med = {k: [statistics.median(t[i] for t in v) for i in range(3)] for k, v in times.items()}
    steps = times["fast"][0][3]
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    print(f"\nFashion-MNIST class 0: {f[0].shape[0]} forget, {r[0].shape[0]} retain; {args.epochs} epoch(s), "
          f"{steps} steps; {'trained' if args.weights else 'fresh'} weights; {name}, {args.threads} thread(s), "
          f"torch {torch.__version__}, "
          f"{datetime.date.today()}; median of {args.rounds} alternating rounds\n")
    print("| step | total | set-up (cache build) | loop | per iteration | speed-up (total) | speed-up (loop) |")
    print("|---|---|---|---|---|---|---|")
    ref = med["paper"]
    for k in variants:
        tot, setup, loop = med[k]
        print(f"| {k} | {tot:.2f} s | {setup:.2f} s | {loop:.2f} s | {1e3 * loop / steps:.1f} ms "
              f"| {ref[0] / tot:.2f}x | {ref[2] / loop:.2f}x |")


if __name__ == "__main__":
    main()
