"""Runs killed with SIGKILL at seeded random moments, then run again: nothing
half-written is ever loaded, and the rerun's results.json equals an uninterrupted
run's (without timings, versions and paths, as in test_behaviour_pinned)."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_behaviour_pinned import comparable

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARGS = ["--train-epochs", "1", "--unlearn-epochs", "1", "--method", "mixunlearn", "--threads", "1", "--no-png",
        "--quiet"]


def fastmix(*argv: str) -> list[str]:
    return [sys.executable, "-m", "fastmix", *argv]


def env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def kill_when(cmd: list[str], ready, delay: float) -> int | None:
    """Start ``cmd``; once ``ready()`` holds, wait ``delay`` seconds and SIGKILL it.
    Returns its exit code when it ended first, None when it was killed."""
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and not ready():
        time.sleep(0.002)
    try:
        proc.wait(timeout=delay)
        return proc.returncode
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return None


def assert_nothing_half_written(out: Path) -> None:
    """Every file under the atomically written names is whole: checkpoints load, results.json parses."""
    for p in out.glob("models/*.pt"):
        blob = torch.load(p, map_location="cpu", weights_only=True)
        assert set(blob) == {"state_dict", "meta"}
    if (out / "results.json").exists():
        json.loads((out / "results.json").read_text())


def unlearn_in_process(out: Path) -> dict:
    from fastmix.cli import main

    assert main(["unlearn", *ARGS, "--out", str(out)]) == 0
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_torch_thread) -> dict:
    out = tmp_path_factory.mktemp("uninterrupted")
    start = time.perf_counter()
    doc = unlearn_in_process(out)
    assert "pending" not in doc
    return {"doc": comparable(doc), "seconds": time.perf_counter() - start}


def test_killed_runs_then_a_rerun_give_the_uninterrupted_results(reference, tmp_path):
    rng = random.Random(12)
    out = tmp_path / "out"
    models = out / "models"
    kills = [  # (command, when the kill clock starts, seconds after that): seeded, at different stages
        (fastmix("train", *ARGS[:2], "--threads", "1", "--quiet", "--out", str(out)),
         lambda: any(models.glob("*")), rng.uniform(0, 0.05)),  # a checkpoint being written, or the next training
        (fastmix("unlearn", *ARGS, "--out", str(out)),
         lambda: (out / "results.json").exists(), rng.uniform(0, 0.3) * reference["seconds"]),  # during a method
    ]
    for i, (cmd, ready, delay) in enumerate(kills):
        rc = kill_when(cmd, ready, delay)
        assert rc in (None, 0), f"kill {i}: exit code {rc}"
        assert_nothing_half_written(out)
    doc = unlearn_in_process(out)  # the rerun
    assert comparable(doc) == reference["doc"]
    assert not list(out.rglob("*.tmp"))


def test_results_json_lists_pending_methods_of_a_stopped_run(tmp_path):
    """The rows finished before a method fails are on disk, marked as a partial run."""
    from fastmix.cli import main
    from fastmix.harness import methods

    def broken(ctx):
        raise KeyboardInterrupt  # as if stopped while the second method runs

    methods.METHODS["broken-for-test"] = broken
    try:
        with pytest.raises(KeyboardInterrupt):
            main(["unlearn", "--method", "finetune,broken-for-test", *ARGS[:2], "--ft-epochs", "1", "--quiet",
                  "--no-png", "--out", str(tmp_path)])
    finally:
        del methods.METHODS["broken-for-test"]
    doc = json.loads((tmp_path / "results.json").read_text())
    assert set(doc) == {"original", "retrain", "finetune", "pending", "settings", "versions"}
    assert doc["pending"] == ["broken-for-test"]
    assert doc["finetune"]["avg_gap"] >= 0


RESUME_ARGS = ["--method", "finetune,ga", *ARGS[:2], "--ft-epochs", "1", "--ga-epochs", "1", "--threads", "1",
               "--quiet", "--no-png"]


def run_with(out: Path, *extra: str, stop: str | None = None, forbid: str | None = None) -> dict | None:
    """``fastmix unlearn`` in this process; ``stop``: that method stops the run; ``forbid``:
    that method must not run (fails the test if it does). The results.json, or None when stopped."""
    from fastmix.cli import main
    from fastmix.harness import methods

    def stopped(ctx):
        raise KeyboardInterrupt

    def forbidden(ctx):
        raise AssertionError(f"{forbid} ran again")

    with pytest.MonkeyPatch.context() as mp:
        if stop:
            mp.setitem(methods.METHODS, stop, stopped)
        if forbid:
            mp.setitem(methods.METHODS, forbid, forbidden)
        try:
            assert main(["unlearn", *RESUME_ARGS, *extra, "--out", str(out)]) == 0
        except KeyboardInterrupt:
            return None
    return json.loads((out / "results.json").read_text())


def test_a_stopped_run_keeps_its_finished_methods(tmp_path):
    """Run again with the same settings, a stopped run runs only the methods it had left,
    and ends with the results of a run that was never stopped; its results.json names the
    code of the kept rows beside its own."""
    whole = run_with(tmp_path / "whole")
    assert whole["versions"]["fastmix_sources"] == [whole["versions"]["fastmix_source"]]
    assert run_with(tmp_path / "out", stop="ga") is None
    path = tmp_path / "out" / "results.json"
    stopped = json.loads(path.read_text())
    assert stopped["pending"] == ["ga"]
    other = "0" * 16  # as if stopped under other code, in a file from before fastmix_sources
    path.write_text(json.dumps({**stopped, "versions": {**stopped["versions"], "fastmix_source": other,
                                                         "fastmix_sources": None}}))
    resumed = run_with(tmp_path / "out", forbid="finetune")
    assert "pending" not in resumed
    assert comparable(resumed) == comparable(whole)
    assert resumed["versions"]["fastmix_sources"] == sorted([other, whole["versions"]["fastmix_source"]])


def test_a_stopped_run_with_other_settings_is_not_reused(tmp_path):
    assert run_with(tmp_path, stop="ga") is None
    with pytest.raises(AssertionError, match="finetune ran again"):  # other --ft-lr: finetune runs again
        run_with(tmp_path, "--ft-lr", "0.02", forbid="finetune")
    doc = run_with(tmp_path, "--ft-lr", "0.02")
    assert "pending" not in doc and doc["settings"]["options"]["ft_lr"] == 0.02
