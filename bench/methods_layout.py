"""Seconds of trained baselines in channels_last against the default layout (BENCHMARKS.md,
"Baselines in channels_last"): each method on 6000 random 28x28 images (600 to forget) with
SPEC 8's CNN and its default settings, thread CPU time, the layouts alternating twice.

    python bench/methods_layout.py rl,scrub,salun,l1_sparse,neggrad_plus
"""
from __future__ import annotations

import sys
import time

import torch

from fastmix.harness import training
from fastmix.harness.methods import MethodContext, get_method
from fastmix.harness.models import build_model


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6000, 1, 28, 28, generator=g), torch.randint(0, 10, (6000,), generator=g)
    model = build_model("mnist-cnn", 10, 1, seed=0).requires_grad_(False)
    ctx = MethodContext(original=model, x_forget=x[:600], y_forget=y[:600], x_retain=x[600:], y_retain=y[600:],
                        labels="aware", options={}, seed=0, quiet=True)
    layouts = {"channels_last": training.trainer_layout, "default": lambda m, sample_dim: False}
    for name in sys.argv[1].split(","):
        times = []
        for layout in ("channels_last", "default") * 2:
            training.trainer_layout = layouts[layout]
            start = time.thread_time()
            get_method(name)(ctx)
            times.append(f"{layout} {time.thread_time() - start:.1f}s")
        training.trainer_layout = layouts["channels_last"]
        print(name, " ".join(times), flush=True)


if __name__ == "__main__":
    main()
