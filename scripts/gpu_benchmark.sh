#!/usr/bin/env bash
# The one script a GPU session runs for issue 4: JAX step vs the PyTorch reference step, same GPU.
#
#   bash scripts/gpu_benchmark.sh            # from the repository root; writes $OUT/benchmark.md
#
# Needs python3 with jax (CUDA), flax, optax, torch, torchvision; no TensorFlow, no ml_collections,
# no install of this package (PYTHONPATH=.). Worst case about 8 minutes: each part has its own
# timeout, and a part cut short still leaves the rows it finished (benchmark.md.partial is
# appended). Give the device call timeout_s=560.
#   part 1, ResNet-50, 80 classes, 448 (targets 1 and 2)        <= 300 s
#   part 2, ResNet-101, 5,000 classes, 448 (target 3)            <= 170 s
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/bridgegap_benchmark}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
PY=${PYTHON:-python3}
MD="$OUT/benchmark.md"
LOG="$OUT/benchmark.log"

{
  echo "# bridgegap_jax GPU benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv 2>&1
  "$PY" - <<'EOF' 2>&1
import importlib, sys
print("python", sys.version.split()[0])
for name in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "numpy", "torch", "torchvision"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as e:  # noqa: BLE001
        print(name, "MISSING", e)
import jax
print("jax devices", jax.devices())
EOF
  echo '```'
  echo
  echo "Targets (issue 4): ResNet-50/80/448 bf16 batch 16 >= 2.0x the reference as shipped (fp32, batch 16);"
  echo "best batch >= 1.2x the best PyTorch setup; ResNet-101/5,000/448 best batch >= 3.5x the reference as shipped."
  echo
} | tee "$MD"

part() {  # part SECONDS ARGS...: one benchmark invocation under its own timeout
  local seconds=$1
  shift
  timeout --signal=TERM --kill-after=10 "$seconds" "$PY" -m bridgegap_jax.benchmark --markdown "$MD" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  if [ -f "$MD.partial" ]; then  # cut short: keep what it measured
    { echo "(this part stopped early, exit code $rc: rows measured so far)"; cat "$MD.partial"; echo; } >> "$MD"
    rm -f "$MD.partial"
  fi
  return 0
}

# Part 1: ResNet-50, 80 classes (COCO), 448. torch-best = bf16 autocast + channels_last + fused Adam
# + torch.compile, at 128 (the best of 64/128 in shared/ANCHORS.md); JAX bf16 up to 256.
part 300 --depth=50 --num-classes=80 --size=448 \
  --run=torch-ref:16 --run=torch-amp:128 --run=torch-best:128 \
  --run=jax-fp32:16 --run=jax-bf16:16,128,256 \
  --target='jax-bf16:16/torch-ref:16>=2.0' --target='jax-bf16/torch-best>=1.2' \
  --profile=/tmp/bridgegap_profile --title='ResNet-50, 80 classes, 448x448 (targets 1 and 2)'

# Part 2: ResNet-101, 5,000 classes (OpenImages), 448.
part 170 --depth=101 --num-classes=5000 --size=448 \
  --run=torch-ref:16 --run=jax-bf16:64,128 \
  --target='jax-bf16/torch-ref:16>=3.5' --title='ResNet-101, 5,000 classes, 448x448 (target 3)'

echo "wrote $MD"
