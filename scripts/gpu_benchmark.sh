#!/usr/bin/env bash
# Our JAX training step against the PyTorch reference and torch.compile on one GPU, with the speed
# goals marked MET / NOT MET.
#
#   bash scripts/gpu_benchmark.sh              # from the repository root; writes $OUT/benchmark.md
#   bash scripts/gpu_benchmark.sh options      # the speed options only, each on and off
#   bash scripts/gpu_benchmark.sh --tiny       # the same script as a CPU smoke run
#
# Needs python3 (or the interpreter in PYTHON) with jax (CUDA), flax, optax, numpy, torch and
# torchvision; no TensorFlow, no internet, no install of this package. Every row runs in its own
# process (no shared GPU memory). Two parts, each with a time budget (rows not started when it
# runs out are listed as skipped, a row still running is stopped): under 9 minutes in all. Extra
# arguments go to both parts (e.g. --tiny, --budget=SECONDS).
#
# Default run:
#   part 1, ResNet-50, 80 classes, 448 (370 s): the reference and ours bf16 at batch 16; ours bf16
#     and torch.compile at 128 and 256 (eval at 128); then the speed options at 128. Goals: ours
#     bf16 b16 >= 2.5x the reference b16; ours bf16 at its best batch >= 1.2x torch.compile at its
#     best; eval >= 1.2x torch.compile's.
#   part 2, ResNet-101, 5,000 classes, 448 (130 s): the reference at 16, ours bf16 at 128 and 64.
#     Goal: ours at its best batch >= 3.5x the reference b16.
# `options`: ours bf16 at 128 with each speed option against the plain step (ResNet-50, then
#   ResNet-101 with 5,000 classes), eval and the profile's top ops for each row.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=goals
if [ "${1:-}" = options ]; then MODE=options; shift; fi
OUT=${OUT:-/tmp/bridgegap_benchmark}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
MD="$OUT/benchmark.md"
LOG="$OUT/benchmark.log"
: > "$LOG"

{
  echo "# bridgegap_jax benchmark ($MODE), $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv 2>&1 | head -3
  "$PY" - <<'EOF' 2>&1
import importlib, sys
print("python", sys.version.split()[0])
for name in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "torchvision"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as e:  # noqa: BLE001
        print(name, "MISSING", e)
EOF
  echo '```'
  echo
} | tee "$MD"

part() {  # part SECONDS ARGS...: one benchmark run with its budget, and a hard stop a little later
  local seconds=$1
  shift
  timeout --signal=TERM --kill-after=5 $((seconds + 20)) "$PY" -m bridgegap_jax.bench --markdown "$MD" \
    --budget "$seconds" --steps=5 --repeats=5 "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  if [ -f "$MD.partial" ]; then  # stopped from outside: keep what it measured
    { echo "(this part stopped early, exit code $rc: rows measured so far)"; cat "$MD.partial"; echo; } >> "$MD"
    rm -f "$MD.partial"
  fi
}

if [ "$MODE" = goals ]; then
  part 370 --depth=50 --num-classes=80 --size=448 --eval-at=128 --profile-at=128 "$@"
  part 130 --depth=101 --num-classes=5000 --size=448 --eval-at= \
    --run=torch-ref:16 --run=jax-bf16:128 --run=jax-bf16+bf16-head+fused-bn+strided-pool+s2d-stem:128 \
    --run=jax-bf16:64 --target='jax-bf16*/torch-ref:16>=3.5' "$@"
else
  ALL=fused-bn+strided-pool+s2d-stem
  part 380 --depth=50 --num-classes=80 --size=448 --eval-at=128 --profile-at=128 \
    --run=jax-bf16:128 --run=jax-bf16+$ALL:128 --run=jax-bf16+fused-bn:128 --run=jax-bf16+strided-pool:128 \
    --run=jax-bf16+s2d-stem:128 --run=jax-bf16+xla-conv-fusion:128 --run=jax-bf16+xla-nhwc:128 \
    --run=jax-bf16+xla-exhaustive:128 "$@"
  part 120 --depth=101 --num-classes=5000 --size=448 --eval-at=128 \
    --run=jax-bf16:128 --run=jax-bf16+bf16-head:128 --run=jax-bf16+bf16-head+$ALL:128 "$@"
fi

{
  echo
  echo "## Goals"
  echo
  grep -h -E '^- \*\*(MET|NOT MET|NOT MEASURED)\*\*' "$MD" || echo "(no goals in this mode)"
} > "$OUT/goals.md"
cat "$OUT/goals.md" | tee -a "$MD"
echo "wrote $MD"
