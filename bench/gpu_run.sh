#!/usr/bin/env bash
# Usage: bench/gpu_run.sh OUTDIR
#
# The benchmark run for a machine with an NVIDIA GPU, inside 8 minutes on an H100:
#   1. installs fastmix with its CUDA kernels, built for this GPU's architecture only;
#   2. runs the GPU tests of the cuda and triton backends;
#   3. runs the whole suite, `pytest bench --benchmark-only`;
#   4. writes OUTDIR/bench.json (pytest-benchmark's JSON, every result with its
#      extra_info) and OUTDIR/summary.md (speed-ups over eager PyTorch and over
#      torch.compile, fraction of the bandwidth floor), beside the logs.
# Each step gets a share of the time left before the 8-minute deadline; the suite
# skips its remaining cases ("out of time") rather than overrun, so the JSON is
# always written. Needs python with a CUDA build of torch, triton, pytest and
# pytest-benchmark; installs nothing from the network. PYTHON picks the interpreter
# (default: python3, else python),
# FASTMIX_GPU_RUN_SECONDS the overall limit (default 470).
set -uo pipefail
source "$(dirname "$0")/gpu_common.sh"
gpu_setup gpu_run.sh "${1:-}"
DEADLINE=$(( START + ${FASTMIX_GPU_RUN_SECONDS:-470} ))
left() { echo $(( DEADLINE - $(date +%s) )); }
cap() { local m=$(( $1 < $2 ? $1 : $2 )); echo $(( m < 10 ? 10 : m )); }  # min(a, b), at least 10 s
gpu_environment "no GPU visible to torch: run the CPU suite with 'pytest bench --benchmark-only' instead"

step "install with the CUDA kernels (sm_$ARCH)"
build_status=0
FASTMIX_CUDA=1 FASTMIX_CUDA_ARCH="$ARCH" timeout "$(cap 180 $(( $(left) - 300 )))" \
  "$PY" -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 || build_status=$?
tail -n 3 "$OUT/build.log"
"$PY" -m fastmix info > "$OUT/info.txt" 2>&1
cat "$OUT/info.txt"

step "GPU tests"
test_status=0
gpu_tests=(tests/test_kernels.py tests/test_cuda_kernels.py)  # both kernel backends
timeout "$(cap 120 $(( $(left) - 240 )))" "$PY" -m pytest -q -p no:cacheprovider -o addopts= \
  "${gpu_tests[@]}" > "$OUT/tests.log" 2>&1 || test_status=$?
tail -n 5 "$OUT/tests.log"
tests_line=$(grep -E "passed|failed|error" "$OUT/tests.log" | tail -n 1)

step "benchmarks"
bench_status=0
# The baselines agree with every backend first (plain tests, seconds), then the suite
# (bench/conftest.py runs the ops first, the steps and their ResNet-18 compiles last). Cases
# stop starting 75 s before the deadline (the slowest, a ResNet-18 step compile, takes
# under a minute), so what does not fit is skipped and counted, never cut off.
timeout 60 "$PY" -m pytest bench/test_baselines_agree.py -p no:cacheprovider -o addopts= -q \
  > "$OUT/bench.log" 2>&1 || bench_status=$?
agree_line=$(grep -E "passed|failed|error" "$OUT/bench.log" | tail -n 1)
FASTMIX_BENCH_DEADLINE=$(( DEADLINE - 75 )) timeout "$(cap 600 $(( $(left) - 10 )))" \
  "$PY" -m pytest bench --benchmark-only -p no:cacheprovider -o addopts= -q -rs \
  --benchmark-json="$OUT/bench.json" --benchmark-columns=median,rounds >> "$OUT/bench.log" 2>&1 || bench_status=$?
bench_line=$(grep -E "passed|failed|error" "$OUT/bench.log" | tail -n 1)
out_of_time=$(grep -E "SKIPPED \[[0-9]+\].*out of time" "$OUT/bench.log" | sed -E 's/.*SKIPPED \[([0-9]+)\].*/\1/' | head -n 1)
echo "$bench_line; cases left out of time: ${out_of_time:-0}"

step "summary"
note="install exit $build_status; GPU tests exit $test_status (${tests_line:-no result}); baseline checks: ${agree_line:-no result}; suite exit $bench_status (${bench_line:-no result}; ${out_of_time:-0} cases left out of time); $(( $(date +%s) - START )) s in all"
if [ -f "$OUT/bench.json" ]; then
  "$PY" bench/summarize.py "$OUT/bench.json" --out "$OUT/summary.md" --command "bench/gpu_run.sh OUTDIR" --note "$note"
else
  echo "# fastmix benchmarks: no results ($note)" > "$OUT/summary.md"
fi
cat "$OUT/summary.md"
step "done"
[ "$build_status" -eq 0 ] && [ "$test_status" -eq 0 ] && [ "$bench_status" -eq 0 ]
