# Sourced by the bench/gpu_*.sh scripts: their shared set-up.
#   gpu_setup SCRIPT OUTDIR   OUT (absolute, created), the repo root as working folder,
#                             PY (PYTHON, else python3, else python), START, step()
#   gpu_environment MESSAGE   OUT/env.txt (nvidia-smi, torch); without a GPU, MESSAGE
#                             into OUT/summary.md and exit 1; else ARCH (e.g. 90)
gpu_setup() {
  OUT=${2:?usage: bench/$1 OUTDIR}
  mkdir -p "$OUT"
  OUT=$(cd "$OUT" && pwd)
  cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
  PY=${PYTHON:-$(command -v python3 || command -v python)}
  START=$(date +%s)
  unset TRITON_INTERPRET  # real kernels on the GPU
}

step() { echo "== $* ($(( $(date +%s) - START )) s)"; }

gpu_environment() {
  step "environment"
  { nvidia-smi || true; "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"; } \
    > "$OUT/env.txt" 2>&1
  cat "$OUT/env.txt"
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "$1" | tee "$OUT/summary.md"
    exit 1
  fi
  ARCH=$("$PY" -c "import torch; print('%d%d' % torch.cuda.get_device_capability())")
}
