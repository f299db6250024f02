#!/usr/bin/env bash
# The GPU measurements in one run: the image-to-video request end to end under a 12 GiB cap
# (benchmarks/gpu_e2e.py), seconds per step per speed setting (gpu_speed.py), budgeted streaming
# against everything resident (gpu_offload.py) and the CUDA-only test. Each runs in its own process
# with its own time limit, so one failure does not hide the others' figures.
#
#   bash scripts/gpu_checks.sh            # on a CUDA machine; logs and JSON in $OUT (default outputs/gpu_checks)
#   TINY=1 bash scripts/gpu_checks.sh     # the same steps on the CPU with the tiny test model
#   ONLY="gpu_e2e gpu_speed" bash scripts/gpu_checks.sh   # some of them
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/gpu_checks}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False TOKENIZERS_PARALLELISM=false
TINY_ARG=()
[ -n "${TINY:-}" ] && TINY_ARG=(--tiny)

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log, print its tail
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  case " ${ONLY:-$name} " in *" $name "*) ;; *) return ;; esac  # ONLY="gpu_e2e gpu_speed": a subset
  echo "=== $name"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  echo "--- $name: exit $rc after $((SECONDS - t0)) s"
  grep -v "Warning\|warn(" "$OUT/$name.log" | tail -n "${TAIL:-22}"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
} | tee "$OUT/machine.txt"
step gpu_e2e "${E2E_LIMIT:-200}" "$PY" benchmarks/gpu_e2e.py "${TINY_ARG[@]}" --json "$OUT/gpu_e2e.json"
step gpu_speed "${SPEED_LIMIT:-190}" "$PY" benchmarks/gpu_speed.py "${TINY_ARG[@]}" --json "$OUT/gpu_speed.json"
step gpu_offload "${OFFLOAD_LIMIT:-90}" "$PY" benchmarks/gpu_offload.py "${TINY_ARG[@]}" --json "$OUT/gpu_offload.json"
if [ -z "${TINY:-}" ]; then
  step cuda_test 45 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_memory.py -k cuda
fi
