#!/usr/bin/env bash
# The GPU measurements in one run, each step in its own process with its own time limit (so one failure or
# timeout does not hide the others' figures; the benchmarks write their JSON as they go):
#   gpu_e2e      full-size requests under a 12 GiB cap against their plans: image-to-video, the same with the
#                step cache off, continue-video of a 30 s clip, a LoRA on float8 blocks (peaks per phase,
#                s/step, bytes a skipped step moves, what the run saw of the CUDA allowance)
#   gpu_speed    s/step of history guidance in one DiT pass against two (float8 blocks)
#   gpu_offload  budgeted streaming of the DiT against everything resident
#   gpu_train    a few Stage II steps at full size on the 80 GB config against the training plan; with
#                TRAIN_CONFIG=24gb the 1x24 GB config instead, its frozen blocks streamed from pinned host memory
#                (device peak against the plan's 22.7 GiB, s/step, bytes copied to the device per step): it
#                replaces the 80 GB run in the same slot and limit, as the two together would pass 8 minutes
#   cuda_test    the CUDA-only test
# then a ready-to-paste Markdown summary of every JSON (benchmarks/gpu_summary.py).
# The limits add up to 8 minutes on an H100 (each env-overridable: E2E_LIMIT, SPEED_LIMIT, ...).
#
#   bash scripts/gpu_checks.sh            # on a CUDA machine; logs and JSON in $OUT (default outputs/gpu_checks)
#   TINY=1 bash scripts/gpu_checks.sh     # the same steps on the CPU with the tiny test model
#   ONLY="gpu_e2e gpu_train" bash scripts/gpu_checks.sh   # some of them
#   TRAIN_CONFIG=24gb ONLY=gpu_train bash scripts/gpu_checks.sh   # the streamed 1x24 GB training step
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
  # the limits are for the GPU run; a dry run on a small, shared CPU spends most of its time importing
  [ -n "${TINY:-}" ] && limit=$((limit * ${TINY_LIMIT_SCALE:-3}))
  case " ${ONLY:-$name} " in *" $name "*) ;; *) return ;; esac  # ONLY="gpu_e2e gpu_speed": a subset
  echo "=== $name"
  rm -f "$OUT/$name.json"  # a figure from an earlier run must not pass for this one's
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  echo "--- $name: exit $rc after $((SECONDS - t0)) s$([ $rc = 124 ] && echo " (stopped at its $limit s limit)")"
  grep -v "Warning\|warn(\|should be kept in float32" "$OUT/$name.log" | tail -n "${TAIL:-22}"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
} | tee "$OUT/machine.txt"
step gpu_e2e "${E2E_LIMIT:-210}" "$PY" benchmarks/gpu_e2e.py "${TINY_ARG[@]}" --json "$OUT/gpu_e2e.json"
step gpu_speed "${SPEED_LIMIT:-90}" "$PY" benchmarks/gpu_speed.py "${TINY_ARG[@]}" \
  --variants "${SPEED_VARIANTS:-fp8-hg2,fp8-hg2-twopass}" --json "$OUT/gpu_speed.json"
step gpu_offload "${OFFLOAD_LIMIT:-60}" "$PY" benchmarks/gpu_offload.py "${TINY_ARG[@]}" --json "$OUT/gpu_offload.json"
step gpu_train "${TRAIN_LIMIT:-100}" "$PY" benchmarks/gpu_train.py "${TINY_ARG[@]}" --config "${TRAIN_CONFIG:-80gb}" \
  --json "$OUT/gpu_train.json"
if [ -z "${TINY:-}" ]; then
  step cuda_test "${TEST_LIMIT:-20}" "$PY" -m pytest -q -x -p no:cacheprovider tests/memory/test_memory.py -k cuda
fi
echo
"$PY" benchmarks/gpu_summary.py "$OUT" | tee "$OUT/summary.md"
