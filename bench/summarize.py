"""Markdown summary of a pytest-benchmark JSON written by ``pytest bench --benchmark-json=FILE``.

Usage: python bench/summarize.py FILE [--out SUMMARY.md] [--command "..."] [--note "..."]

One table per op: for each case (size, dtype, layout) the median time of every
implementation, each fastmix backend's speed-up over eager PyTorch and over
``torch.compile`` (their time over fastmix's: above 1 fastmix is faster), and each
result's fraction of the floor (bytes moved over the copy bandwidth measured in the
same run; 1.0 is at the floor). All ratios come from the one run in FILE.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import OrderedDict

BASELINES = ("eager", "compile")
OP_ORDER = (
    "sharpen", "mixup-forward", "mixup-fwd+mask-bwd", "loss-fwd+bwd", "unlearning-step", "generator-step",
    "trainer-step", "models-only", "unlearning-epoch",
)


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def fmt_ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}x"


def fmt_fraction(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def case_key(info: dict) -> tuple:
    shape = "x".join(str(s) for s in info.get("shape", []))
    if info.get("model"):
        shape = f"{info['model']} {shape}" + (f", mask: {info['mask']}" if info.get("mask") else "")
    layout = info.get("layout", "")
    if info.get("targets"):
        layout = f"{layout}, {info['targets']} targets"
    return (shape, info.get("dtype", ""), layout)


def collect(data: dict):
    """{op: {case: {impl: (median_s, extra_info)}}} and the run's environment."""
    ops: dict = {}
    env = None
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info", {})
        op = info.get("op")
        if op is None:
            continue
        env = env or info
        ops.setdefault(op, OrderedDict()).setdefault(case_key(info), {})[info["impl"]] = (
            bench["stats"]["median"],
            info,
        )
    return ops, env


def table(cases: dict) -> list[str]:
    order = {b: i for i, b in enumerate(BASELINES)}
    impls = sorted({impl for row in cases.values() for impl in row}, key=lambda i: (order.get(i, len(order)), i))
    fast = [i for i in impls if i not in BASELINES]
    bases = [b for b in BASELINES if b in impls]
    head = ["case", "dtype", "layout"] + [f"{i} (median)" for i in impls]
    for f in fast:
        head += [f"{f} speed-up vs {base}" for base in bases]
    have_floor = any(info.get("floor_s") for row in cases.values() for _, info in row.values())
    if have_floor:
        head += ["floor"] + [f"{i} of floor" for i in impls]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (shape, dtype, layout), row in cases.items():
        t = {i: row[i][0] for i in row}
        cells = [shape, dtype, layout] + [fmt_time(t.get(i)) for i in impls]
        for f in fast:
            for base in bases:
                cells.append(fmt_ratio(t[base] / t[f]) if base in t and f in t else "–")
        if have_floor:
            floor = next((info.get("floor_s") for _, info in row.values() if info.get("floor_s")), None)
            cells.append(fmt_time(floor))
            cells += [fmt_fraction(floor / t[i]) if floor and i in t else "–" for i in impls]
        lines.append("| " + " | ".join(cells) + " |")
    means = []
    for f in fast:
        for base in bases:
            ratios = [row[base][0] / row[f][0] for row in cases.values() if base in row and f in row]
            if ratios:
                gm = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
                means.append(f"{f} vs {base} {gm:.2f}x ({len(ratios)} cases)")
    if means:
        lines += ["", "Geometric mean of the speed-ups: " + "; ".join(means) + "."]
    return lines


def summarize(data: dict, command: str | None = None, note: str | None = None) -> str:
    ops, env = collect(data)
    out = ["# fastmix benchmarks", ""]
    if env is None:
        return "\n".join(out + ["No fastmix benchmark results in this file."]) + "\n"
    date = data.get("datetime", "")[:16].replace("T", " ")
    out.append(f"- machine: {env.get('device_name')}")
    out.append(
        f"- torch {env.get('torch')}, triton {env.get('triton')}, CUDA {env.get('cuda')}, "
        f"fastmix {env.get('fastmix')}, python {env.get('python')}"
    )
    usable = ", ".join(k for k, v in (env.get("backends") or {}).items() if v)
    out.append(f"- fastmix backends usable: {usable}")
    if env.get("device") == "cuda":
        nv = {k: v for k, v in env.items() if k.startswith("nvml")}
        if nv:
            out.append(
                "- NVML (at the first result): driver {}, memory used {} MiB, SM clock {} MHz (max {}), "
                "power {} W".format(
                    nv.get("nvml_driver"), nv.get("nvml_memory_used_mib"), nv.get("nvml_sm_clock_mhz"),
                    nv.get("nvml_sm_clock_max_mhz"), nv.get("nvml_power_w"),
                )
            )
    else:
        out.append(f"- {env.get('nvml', 'CPU run')}")
    bw = next((i.get("copy_bandwidth_gbs") for row in ops.values() for r in row.values() for _, i in r.values()
               if i.get("copy_bandwidth_gbs")), None)
    if bw:
        out.append(f"- copy bandwidth measured in this run: {bw} GB/s (bytes read + written)")
    out.append(f"- date (UTC): {date}")
    if command:
        out.append(f"- command: `{command}`")
    if note:
        out.append(f"- {note}")
    out += [
        "",
        "Times are medians of synchronised calls over rotating inputs. Speed-up: the baseline's "
        "median over fastmix's (above 1: fastmix is faster). Of floor: the floor (bytes moved over "
        "the copy bandwidth) over the median (1.0: at the floor), for the largest size of each group; "
        "the smaller cases fit in cache and are bound by latency, not bandwidth.",
    ]
    for op in sorted(ops, key=lambda o: OP_ORDER.index(o) if o in OP_ORDER else len(OP_ORDER)):
        out += ["", f"## {op}", ""] + table(ops[op])
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_file")
    parser.add_argument("--out", help="write the Markdown here (default: stdout)")
    parser.add_argument("--command", help="the command that made the JSON, quoted in the summary")
    parser.add_argument("--note", help="one more line for the header")
    args = parser.parse_args(argv)
    with open(args.json_file) as f:
        data = json.load(f)
    text = summarize(data, args.command, args.note)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
