#!/usr/bin/env bash
# Usage: bench/gpu_trainer.sh OUTDIR
#
# The trainer's GPU checks of issue 5, for a lent GPU, inside about 6 minutes:
#   1. the CUDA-graph equivalence test (captured against uncaptured steps, same seed);
#   2. the trainer's benchmarks: the per-iteration time of the reference step, the fast
#      step and the fast step with CUDA graphs (CNN at B = 32, ResNet-18 at 32x32), and
#      the models' own passes (models-only), for the share of a step outside them;
#   3. OUTDIR/summary.md from the JSON (bench/summarize.py), beside the logs.
# Uses the installed fastmix (bench/gpu_run.sh builds the CUDA kernels first, if wanted).
# PYTHON picks the interpreter (default: python3, else python); FASTMIX_GPU_GRAPHS_S and
# FASTMIX_GPU_TRAINER_S cap the test and the benchmarks (default 150 and 240 s).
set -uo pipefail
source "$(dirname "$0")/gpu_common.sh"
gpu_setup gpu_trainer.sh "${1:-}"

"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee "$OUT/env.txt" || exit 1
echo "== CUDA-graph equivalence test"
timeout "${FASTMIX_GPU_GRAPHS_S:-150}" "$PY" -m pytest -q -p no:cacheprovider -o addopts= tests/test_trainer_graphs.py \
  > "$OUT/graphs_test.log" 2>&1
echo "graphs test exit $?"; tail -n 3 "$OUT/graphs_test.log"
echo "== trainer benchmarks"
timeout "${FASTMIX_GPU_TRAINER_S:-240}" "$PY" -m pytest -q -p no:cacheprovider -o addopts= bench/test_trainer_speed.py --benchmark-only \
  -k "trainer_step or models_only" --benchmark-json="$OUT/trainer.json" > "$OUT/bench.log" 2>&1
echo "bench exit $?"; tail -n 3 "$OUT/bench.log"
"$PY" bench/summarize.py "$OUT/trainer.json" --out "$OUT/summary.md" > /dev/null 2>&1
"$PY" - "$OUT/trainer.json" <<'PYEOF' | tee -a "$OUT/summary.md"
import json, sys
rows = json.load(open(sys.argv[1]))["benchmarks"]
print("\n| case | per iteration |")
print("|---|---|")
for b in rows:
    i = b["extra_info"]
    per = i.get("step_s") or i.get("iteration_s")
    print(f"| {b['name']} | {per * 1e3:.2f} ms |" if per else f"| {b['name']} | - |")
PYEOF
