"""Markdown tables from `fastmix unlearn` results.json files (for RESULTS.md).

Usage: python scripts/results_tables.py OUT/class-aware OUT/class-agnostic ...
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

META = ("settings", "versions")


def table(path: Path) -> str:
    res = json.loads((path / "results.json").read_text())
    s = res["settings"]
    rows = {k: v for k, v in res.items() if k not in META}
    metrics = [m for m in ("Train_r", "Train_f", "Test_r", "Test_f", "Test", "ASR", "MIA_efficacy")
               if m in rows["retrain"]]
    cols = [*metrics, "avg_gap", "seconds"]
    out = [f"**{s['setting']}-level, label-{s['labels']}** (D_f: {s['n_forget']} images, D_r: {s['n_retain']}, "
           f"{s['eval_split']} set: {s['n_eval']})", "",
           "| method | " + " | ".join(c.replace("_", " ") for c in cols) + " |",
           "|---" * (len(cols) + 1) + "|"]
    for name, row in rows.items():
        cells = (f"{row[c]:.2f}" if c != "seconds" else f"{row[c]:.0f}" for c in cols)
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    print("\n\n".join(table(Path(p)) for p in sys.argv[1:]))
