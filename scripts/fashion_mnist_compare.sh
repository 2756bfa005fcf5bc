#!/bin/sh
# Issue 16's comparison on Fashion-MNIST (RESULTS.md): every registered method, tuned on
# equal terms, then 3 seeds of each of the four settings, scored on the test set.
#
#   sh scripts/fashion_mnist_compare.sh OUT      # resumable: rerun after a stop
#
# 1. tune: `fastmix tune --method all --budget 6` per label-aware setting (class, data),
#    on a 5000-image validation split carved from the training data; the two searches
#    run side by side, one thread each. Optuna's journal in OUT/tune-SETTING resumes a
#    stopped search; the winners are OUT/tune-SETTING/fashion-mnist-SETTING.json. A search
#    held with other settings (a search space that changed since) stops the script: run
#    `fastmix tune ... --method NAME --restart` for it first (RESULTS.md names the two so).
# 2. tables: `fastmix unlearn --method all --seeds 0,1,2` per setting and label mode with
#    that recipe (the label-agnostic runs reuse the label-aware recipes), two at a time;
#    a finished seed is not run again, a stopped one keeps the methods it finished;
#    OUT/tables.md gets the four tables in Markdown (scripts/results_tables.py), and
#    OUT/search-logs.md every trial of the searches (scripts/search_log_tables.py).
# 3. scripts/ship_recipes.py copies the winners into fastmix/harness/recipes/ (printed at the end).
# The paper's 20-epoch original and retrained models are trained once per seed and kept
# in OUT/models (shared with scripts/fashion_mnist_options.py when given the same OUT).
# The IDX files come from Debian's dataset-fashion-mnist, or set DATA_ROOT.
set -e
OUT=${1:?usage: sh scripts/fashion_mnist_compare.sh OUT}
BUDGET=${BUDGET:-6}
DATA=${DATA_ROOT:+--data-root $DATA_ROOT}
COMMON="--dataset fashion-mnist $DATA --val-size 5000 --train-epochs 20 --models-dir $OUT/models --threads 1 --quiet"
mkdir -p "$OUT"

# Waits for each of the background jobs "$@" (PIDs); stops the script when one exited
# above $1 (a bare `wait` returns 0 whatever its jobs did, and `set -e` does not see them).
wait_all() {
  worst=$1; shift
  for pid in "$@"; do
    rc=0; wait "$pid" || rc=$?
    if [ "$rc" -gt "$worst" ]; then echo "a step failed (exit $rc): see $OUT/*.txt" >&2; exit "$rc"; fi
  done
}

pids=""
for setting in class data; do
  python -m fastmix tune $COMMON --setting "$setting" --method all --budget "$BUDGET" --seed 0 \
    --out "$OUT/tune-$setting" >> "$OUT/tune-$setting.txt" 2>&1 &
  pids="$pids $!"
done
wait_all 1 $pids  # 1: a method whose every trial diverged has no winner; the rest are written

run_table() {  # setting labels
  python -m fastmix unlearn $COMMON --setting "$1" --labels "$2" --method all --seeds 0,1,2 \
    --recipe "$OUT/tune-$1/fashion-mnist-$1.json" --out "$OUT/$1-$2" > "$OUT/$1-$2.txt" 2>&1
}
run_table class aware & a=$!; run_table data aware & b=$!; wait_all 0 $a $b
run_table class agnostic & a=$!; run_table data agnostic & b=$!; wait_all 0 $a $b
for d in class-aware class-agnostic data-aware data-agnostic; do cat "$OUT/$d.txt"; done
# RESULTS.md's four tables (mean ± std, Avg. Gap, RTE, seconds, the machine)
python "$(dirname "$0")/results_tables.py" "$OUT/class-aware" "$OUT/data-aware" "$OUT/class-agnostic" \
  "$OUT/data-agnostic" > "$OUT/tables.md"
python "$(dirname "$0")/search_log_tables.py" "$OUT/tune-class" "$OUT/tune-data" > "$OUT/search-logs.md"
echo "wrote $OUT/tables.md and $OUT/search-logs.md; to ship the winners as fastmix's recipes:"
echo "  python $(dirname "$0")/ship_recipes.py $OUT/tune-class/fashion-mnist-class.json $OUT/tune-data/fashion-mnist-data.json"
