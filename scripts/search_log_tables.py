"""Markdown tables of `fastmix tune` search logs, for RESULTS.md beside the comparison tables.

Usage: python scripts/search_log_tables.py OUT/tune-class OUT/tune-data ...

One table a method and folder: each trial's settings, its validation metrics and Avg. Gap,
its wall seconds (the first trial's include scoring the original and retrained models,
and training them when they were not cached) and the fastmix source that ran it (blank
for trials run before tune recorded it); the winner (the recipe's entry) in bold. A trial
that failed, diverged or was interrupted says so; one that drew a setting already run is
marked a repeat (it ran nothing).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

LOG = "search-log.json"
NOT_METRICS = ("avg_gap", "seconds", "RTE")


def number(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def outcome(t: dict) -> str:
    if t.get("repeat_of") is not None:
        return f"repeat of {t['repeat_of']} (ran nothing)"
    if t.get("interrupted"):
        return "interrupted (queued to run again)"
    if t.get("error"):
        return "diverged (scored +inf)" if t["error"].startswith("diverged") else t["error"]
    return "" if t["state"] == "COMPLETE" else t["state"].lower()


def row(cells) -> str:
    """A Markdown table row; a cell's own | and line breaks would end it early."""
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def method_table(folder: Path, method: str, log: dict) -> str:
    trials = log["trials"]
    cols = []
    for t in trials:
        cols += [k for k in (t.get("metrics") or {}) if k not in NOT_METRICS and k not in cols]
    header = ["#", "settings", *(c.replace("_", " ") for c in cols), "val Avg. Gap", "trial s", "source", "note"]
    out = [f"**{folder.name}, {method}** ({len(trials)} trials; best: "
           f"{'none' if log['best_trial'] is None else 'trial ' + str(log['best_trial'])})", "",
           row(header), "|---" * len(header) + "|"]
    for t in trials:
        m = t.get("metrics") or {}
        gap = t.get("val_avg_gap")
        gap = "" if gap is None else f"{gap:.2f}"
        if t["number"] == log["best_trial"]:
            gap = f"**{gap}**"
        settings = ", ".join(f"{k} {number(v)}" for k, v in t["params"].items())
        ran = t.get("seconds") is not None and t.get("repeat_of") is None
        out.append(row([t["number"], settings, *(f"{m[c]:.2f}" if c in m else "" for c in cols),
                        gap, f"{t['seconds']:.0f}" if ran else "", t.get("fastmix_source", ""), outcome(t)]))
    return "\n".join(out)


def tables(folder: Path) -> str:
    path = folder / LOG
    if not path.is_file():
        raise SystemExit(f"{path}: no search log (expected the --out folder of a fastmix tune run)")
    doc = json.loads(path.read_text())
    return "\n\n".join(method_table(folder, method, log) for method, log in doc.items())


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__.split("\n\n")[1])
    print("\n\n".join(tables(Path(p)) for p in sys.argv[1:]))
