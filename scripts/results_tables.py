"""Markdown tables from `fastmix unlearn` results.json files (for RESULTS.md).

Usage: python scripts/results_tables.py OUT/class-aware OUT/class-agnostic ...

A `--seeds` run's results.json holds each metric's mean and its sample standard deviation
(`METRIC_std`): its cells read `mean ± std`. Every table says its seeds, the machine and
the fastmix source its rows came from (several, named, when a resumed run mixed code).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from fastmix.cli.unlearn import NOT_ROWS
from fastmix.harness.evaluation import metric_names
from fastmix.harness.report import recorded_sources


def cell(row: dict, col: str) -> str:
    digits = 0 if col == "seconds" else 2
    text = f"{row[col]:.{digits}f}"
    return f"{text} ± {row[col + '_std']:.{digits}f}" if col + "_std" in row else text


def table(path: Path) -> str:
    res = json.loads((path / "results.json").read_text())
    s, v = res["settings"], res.get("versions", {})
    if res.get("pending"):
        raise SystemExit(f"{path / 'results.json'} is a stopped run (pending: {', '.join(res['pending'])})")
    rows = {k: r for k, r in res.items() if k not in NOT_ROWS}
    cols = [*metric_names(s["setting"]), "avg_gap", "RTE", "seconds"]
    cols = [c for c in cols if all(c in r for r in rows.values())]
    seeds = s.get("seeds", [s.get("seed")])
    sources = recorded_sources(res)
    code = (f"fastmix source {sources[0]}" if len(sources) == 1 else
            f"rows from {len(sources)} fastmix sources: {', '.join(sources)}" if sources else "fastmix source unknown")
    out = [f"**{s['setting']}-level, label-{s['labels']}** (D_f: {s['n_forget']} images, D_r: {s['n_retain']}, "
           f"{s['eval_split']} set: {s['n_eval']}; seeds {', '.join(map(str, seeds))}; "
           f"torch {v.get('torch', '?')}, {v.get('cpu_threads', '?')} thread(s), {v.get('machine', '?')}; {code})", "",
           "| method | " + " | ".join(c.replace("_", " ") for c in cols) + " |",
           "|---" * (len(cols) + 1) + "|"]
    for name, row in rows.items():
        out.append(f"| {name} | " + " | ".join(cell(row, c) for c in cols) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    print("\n\n".join(table(Path(p)) for p in sys.argv[1:]))
