"""A resumable queue of ``run_experiment`` runs for the long comparisons in RESULTS.md.

Each run has a key; its result is written atomically to ``OUT/runs/KEY.json`` as soon
as it finishes, and a run whose file exists is skipped, so a stopped study resumes
where it stopped. Start several workers on the same OUT (one thread each): a worker
takes a run only while it holds the lock of the run's seed and setting, and the seed's
own lock until the seed's original model is cached (see :func:`work`).
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fastmix.harness.atomic import atomic_write
from fastmix.harness.experiment import Experiment, run_experiment


@dataclass
class Run:
    key: str  # file name of the result, unique in the study
    exp: Experiment  # its ``out`` and ``models_dir`` are set by the queue
    info: dict  # what the tables group by (setting, option, seed, ...)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def result_path(out: Path, run: Run) -> Path:
    return out / "runs" / f"{run.key}.json"


def load_results(out: Path, runs: list[Run]) -> dict[str, dict]:
    """The finished runs' records, by key."""
    found = {}
    for run in runs:
        path = result_path(out, run)
        if path.exists():
            found[run.key] = json.loads(path.read_text())
    return found


def _execute(out: Path, run: Run, log) -> None:
    exp = run.exp
    exp.out = str(out / "work" / run.key)
    exp.models_dir = str(out / "models")
    exp.quiet = True
    start = time.perf_counter()
    result = run_experiment(exp, log=lambda *a: None)
    record = {"key": run.key, "info": run.info, "rows": result["rows"], "metrics": result["metrics"],
              "options": result["options"], "wall_s": time.perf_counter() - start}
    mu = result["extras"].get("mixunlearn", {}).get("mixunlearn")
    if mu is not None and getattr(mu, "mask_stats", None) is not None:
        record["mask_stats"] = mu.mask_stats
    text = json.dumps(_json_safe(record), indent=1)
    atomic_write(result_path(out, run), lambda tmp: Path(tmp).write_text(text))
    log(f"{run.key}: done in {record['wall_s']:.0f}s")


def _try_lock(path: Path):
    """An exclusive lock on ``path`` held by the returned file, or None when another worker has it."""
    handle = open(path, "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def work(out: str | Path, runs: list[Run], log=print, poll_s: float = 20.0) -> None:
    """Run every unfinished run of ``runs``, taking turns with other workers on ``out``.

    A run holds the lock of its seed and setting (its retrained model). The runs of a seed
    share its original model: until one run of the seed has finished (so the original is
    cached), a run also holds the seed's lock, so no two workers train that original at once."""
    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    locks = out / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    while True:
        pending = [r for r in runs if not result_path(out, r).exists()]
        if not pending:
            return
        started = {r.exp.seed for r in runs if result_path(out, r).exists()}
        # a seed nobody has started goes first: its original model then is ready when the other workers get there
        pending.sort(key=lambda r: r.exp.seed in started)
        took = False
        for run in pending:
            seed = run.exp.seed
            seed_done = seed in started
            held = [] if seed_done else [_try_lock(locks / f"seed{seed}.lock")]
            held.append(_try_lock(locks / f"seed{seed}-{run.exp.setting}.lock") if all(held) else None)
            try:
                if not all(held) or result_path(out, run).exists():
                    continue
                log(f"{run.key}: start (pid {os.getpid()})")
                _execute(out, run, log)
                took = True
                break
            finally:
                for handle in held:
                    if handle is not None:
                        handle.close()
        if not took:
            time.sleep(poll_s)
