#!/usr/bin/env bash
# Usage: bench/gpu_session.sh OUTDIR
#
# Everything a lent GPU should check, in one call within the device tool's limits
# (one command under 10 minutes, at most 8 files back): in priority order,
#   1. bench/gpu_check.sh: build the CUDA kernels for this GPU, the kernel tests of
#      the cuda and triton backends, bench/cuda_bench.py;
#   2. bench/gpu_trainer.sh: the CUDA-graph equivalence test, the trainer's step
#      benchmarks (reference, fast, fast with CUDA graphs; models-only).
# Each stage's time is capped so the whole stays under FASTMIX_GPU_SESSION_S (default
# 540 s); not yet run on a GPU, so a stage may hit its cap before it finishes.
# OUTDIR gets summary.md (both summaries), trainer.json, check.json and logs.tar.gz
# (every log); the work happens in a scratch folder beside it.
# Run from the device tool as: bash bench/gpu_session.sh "$OUT" (timeout_s 600).
set -uo pipefail
OUT=${1:?usage: bench/gpu_session.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fastmix-gpu.XXXXXX")
BUDGET=${FASTMIX_GPU_SESSION_S:-540}
START=$(date +%s)

# Stage caps, in seconds; they sum to the budget's default of 540.
FASTMIX_GPU_BUILD_S=120 FASTMIX_GPU_TESTS_S=150 FASTMIX_GPU_BENCH_S=45 \
  bash bench/gpu_check.sh "$WORK/check"
check_status=$?
left=$(( BUDGET - ($(date +%s) - START) - 15 ))
graphs_s=$(( left / 3 < 90 ? left / 3 : 90 ))
trainer_s=$(( left - graphs_s ))
echo "== $(( $(date +%s) - START )) s gone; trainer stages get ${graphs_s} s and ${trainer_s} s"
if [ "$left" -gt 60 ]; then
  FASTMIX_GPU_GRAPHS_S=$graphs_s FASTMIX_GPU_TRAINER_S=$trainer_s bash bench/gpu_trainer.sh "$WORK/trainer"
else
  mkdir -p "$WORK/trainer"; echo "no time left for the trainer stage" > "$WORK/trainer/summary.md"
fi

{
  echo "# fastmix GPU session, $(date -u +%Y-%m-%d) ($(( $(date +%s) - START )) s; gpu_check exit $check_status)"
  echo; cat "$WORK/check/summary.md" 2>/dev/null || echo "(no gpu_check summary)"
  echo; echo "# trainer"; cat "$WORK/trainer/graphs_test.log" 2>/dev/null | tail -n 5
  cat "$WORK/trainer/summary.md" 2>/dev/null || echo "(no trainer summary)"
} > "$OUT/summary.md"
cp "$WORK/trainer/trainer.json" "$OUT/trainer.json" 2>/dev/null
cp "$WORK/check/report.json" "$OUT/check.json" 2>/dev/null
tar czf "$OUT/logs.tar.gz" -C "$WORK" check trainer
cat "$OUT/summary.md"
