#!/usr/bin/env bash
# Usage: bench/gpu_check.sh OUTDIR
#
# For a machine with a GPU: builds fastmix with its CUDA kernels (for this GPU's
# architecture only, to stay fast), runs the GPU tests of the `cuda` and `triton`
# backends (fp32, fp16, bf16; the core issue's sizes and layouts) and the benchmarks
# of bench/cuda_bench.py, then writes OUTDIR/summary.md (one table) and
# OUTDIR/report.json, plus the logs. Meant to finish inside 8 minutes on an H100.
# Needs python with a CUDA build of torch, pytest, and triton for the triton tests;
# installs nothing from the network. PYTHON picks the interpreter; FASTMIX_GPU_BUILD_S,
# FASTMIX_GPU_TESTS_S and FASTMIX_GPU_BENCH_S cap the three stages (default 240, 330, 120 s).
set -uo pipefail
source "$(dirname "$0")/gpu_common.sh"
gpu_setup gpu_check.sh "${1:-}"
gpu_environment "no GPU visible to torch: nothing to check"

step "build (sm_$ARCH)"
# Editable, so that a fastmix/backends/libfastmix_cuda.so carried here (built elsewhere) is used
# when this machine has no nvcc.
build_status=0
if "$PY" -c "import setup, sys; sys.exit(0 if setup.find_nvcc() else 1)" 2>/dev/null; then
  FASTMIX_CUDA=1 FASTMIX_CUDA_ARCH="$ARCH" timeout "${FASTMIX_GPU_BUILD_S:-240}" "$PY" -m pip install --no-build-isolation --no-deps -e . \
    > "$OUT/build.log" 2>&1 || build_status=$?
  if [ "$build_status" -ne 0 ]; then  # no pip/setuptools to build with: nvcc alone
    echo "pip install failed ($build_status); building the library with nvcc directly" >> "$OUT/build.log"
    FASTMIX_CUDA_ARCH="$ARCH" timeout "${FASTMIX_GPU_BUILD_S:-240}" "$PY" -c "import setup, subprocess, glob; subprocess.run(setup.nvcc_command(setup.find_nvcc(), sorted(glob.glob('csrc/*.cu')), 'fastmix/backends/libfastmix_cuda.so'), check=True)" \
      >> "$OUT/build.log" 2>&1 && build_status=0
    # Not installed: import fastmix from this checkout, its Triton kernels through a link.
    [ -e fastmix/kernels ] || ln -s ../kernels fastmix/kernels
  fi
else
  echo "no nvcc here: using $( [ -f fastmix/backends/libfastmix_cuda.so ] && echo the carried fastmix/backends/libfastmix_cuda.so || echo no CUDA library)" \
    | tee "$OUT/build.log"
  FASTMIX_CUDA=0 timeout 120 "$PY" -m pip install --no-build-isolation --no-deps -e . >> "$OUT/build.log" 2>&1 || true
  [ -f fastmix/backends/libfastmix_cuda.so ] || build_status=1
fi
tail -n 3 "$OUT/build.log"
"$PY" -m fastmix info > "$OUT/info.txt" 2>&1
cat "$OUT/info.txt"

step "tests"
test_status=0
timeout "${FASTMIX_GPU_TESTS_S:-330}" "$PY" -m pytest -q -p no:cacheprovider -o addopts= \
  tests/test_kernels.py tests/test_cuda_kernels.py \
  --junitxml="$OUT/junit.xml" > "$OUT/tests.log" 2>&1 || test_status=$?
tail -n 15 "$OUT/tests.log"

step "benchmarks"
bench_status=0
timeout "${FASTMIX_GPU_BENCH_S:-120}" "$PY" bench/cuda_bench.py --json "$OUT/bench.json" > "$OUT/bench.log" 2>&1 || bench_status=$?
cat "$OUT/bench.log"

step "summary"
"$PY" - "$OUT" "$build_status" "$test_status" "$bench_status" "$(( $(date +%s) - START ))" <<'PYEOF'
import json, os, sys, datetime
import xml.etree.ElementTree as ET

out, build, tests, bench, seconds = sys.argv[1], *map(int, sys.argv[2:])
report = {"date": datetime.date.today().isoformat(), "seconds": seconds,
          "status": {"build": build, "tests": tests, "bench": bench}}
env = open(os.path.join(out, "env.txt")).read()
report["env"] = env
info_file = os.path.join(out, "info.txt")
report["info"] = open(info_file).read() if os.path.exists(info_file) else ""
groups = {}
junit = os.path.join(out, "junit.xml")
if os.path.exists(junit):
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")[-1]
        name = case.get("name", "").split("[")[0]
        key = (module, name)
        g = groups.setdefault(key, {"passed": 0, "failed": 0, "skipped": 0, "failures": []})
        if case.find("failure") is not None or case.find("error") is not None:
            g["failed"] += 1
            node = case.find("failure") if case.find("failure") is not None else case.find("error")
            g["failures"].append(case.get("name") + ": " + (node.get("message") or "")[:300])
        elif case.find("skipped") is not None:
            g["skipped"] += 1
        else:
            g["passed"] += 1
report["tests"] = {f"{m}::{n}": g for (m, n), g in sorted(groups.items())}
bench_file = os.path.join(out, "bench.json")
report["bench"] = json.load(open(bench_file)) if os.path.exists(bench_file) else None

lines = [f"# fastmix GPU check, {report['date']} ({seconds} s)", "",
         f"build exit {build}, tests exit {tests}, bench exit {bench}", "",
         "```", report["info"].strip(), "```", "",
         "| test | passed | failed | skipped |", "|---|---|---|---|"]
for key, g in report["tests"].items():
    lines.append(f"| {key} | {g['passed']} | {g['failed']} | {g['skipped']} |")
if report["bench"]:
    b = report["bench"]
    lines += ["", f"{b['device']}, copy bandwidth {b['copy_GBps']:.0f} GB/s", "",
              "| op | backend | size | time (us) | vs floor / of copy bw | launches |", "|---|---|---|---|---|---|"]
    for r in b["rows"]:
        size = f"({r['B']}, {r['C']}) {r.get('targets', '')}" if "B" in r else ""
        if "error" in r:
            lines.append(f"| {r['op']} | {r['backend']} | {size} | error: {r['error'][:80]} | | |")
        elif "x_floor" in r:
            lines.append(f"| {r['op']} | {r['backend']} | {size} | {r['time_us']:.1f} | {r['x_floor']:.2f}x | {r.get('launches', '')} |")
        else:
            lines.append(f"| {r['op']} | {r['backend']} | | {r['time_us']:.1f} | {100 * r['of_copy_bw']:.0f}% | |")
failures = [f for g in report["tests"].values() for f in g["failures"]]
if failures:
    lines += ["", "## failures (first 30)", ""] + [f"- {f}" for f in failures[:30]]
open(os.path.join(out, "summary.md"), "w").write("\n".join(lines) + "\n")
json.dump(report, open(os.path.join(out, "report.json"), "w"), indent=1)
print("\n".join(lines))
PYEOF
step "done"
[ "$build_status" -eq 0 ] && [ "$test_status" -eq 0 ] && [ "$bench_status" -eq 0 ]
