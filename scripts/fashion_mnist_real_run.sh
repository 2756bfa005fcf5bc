#!/bin/sh
# The Fashion-MNIST real run of RESULTS.md: class- and data-level, label-aware and
# label-agnostic, MixUnlearn beside retrain and fine-tuning, scored on the test set.
# Usage: sh scripts/fashion_mnist_real_run.sh OUT [extra `fastmix unlearn` options]
# The IDX files come from Debian's dataset-fashion-mnist, or pass --data-root DIR.
# The original and retrained models are trained once (or reused) in OUT/models.
set -e
OUT=${1:-fmrun}
[ $# -gt 0 ] && shift
# --recipe none: these tables predate the tuned recipes fastmix ships; they used DEFAULTS.
COMMON="--dataset fashion-mnist --val-size 5000 --train-epochs ${TRAIN_EPOCHS:-5} \
  --unlearn-epochs ${UNLEARN_EPOCHS:-20} --models-dir $OUT/models --threads ${THREADS:-1} --seed 0 --recipe none"
for setting in class data; do
  for labels in aware agnostic; do
    echo "== $setting-level, label-$labels" >&2
    start=$(date +%s)
    python -m fastmix unlearn $COMMON --setting "$setting" --labels "$labels" --out "$OUT/$setting-$labels" "$@" \
      > "$OUT/$setting-$labels.txt"
    cat "$OUT/$setting-$labels.txt"
    echo "wall $(( $(date +%s) - start ))s" | tee -a "$OUT/$setting-$labels.txt"
  done
done
