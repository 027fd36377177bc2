#!/usr/bin/env bash
# Training on a GPU machine without internet: the demo, and ResNet-50 at 448 in bf16 end to end (the
# real input pipeline and trainer) against the synthetic training step of the same model. One table.
#
#   bash scripts/gpu_train.sh           # about 7 minutes on one H100; the table goes to $OUT/gpu_train.md
#   bash scripts/gpu_train.sh --tiny    # the same parts in a few minutes on a CPU: tiny model, few steps
#
# Needs python3 with jax (CUDA), flax, optax, orbax-checkpoint, numpy and opencv. The other packages
# come from gpu_wheels/ (installed into /tmp, nothing else is touched) and the data from gpu_data/:
# build both once with `bash scripts/gpu_data.sh` on a machine with internet.
# Environment: PYTHON (python3), OUT (/tmp/bridgegap_gpu_train), GPU_WHEELS (gpu_wheels; empty: use
# the installed packages), GPU_DATA (gpu_data), BUDGET_S (540: the whole run's limit in seconds).
# Every part has its own timeout, cut to what is left of BUDGET_S; a part cut short keeps the
# progress lines it printed, and the table is written whatever happens.
#
#   part                                  limit  (about, on an H100)
#   ResNet-50 batch 128, 30 epochs x 7    200 s  (~2 min: compilation, and a validation per epoch)
#   synthetic step, batches 16 and 128    150 s  (~2 min: two compilations)
#   ResNet-50 batch 16, 4 epochs x 56     150 s  (~1.5 min)
#   demo dataset build, then the demo     60 + 150 s
set -uo pipefail
cd "$(dirname "$0")/.."
TINY=0
case "${1:-}" in
  --tiny) TINY=1 ;;
  "") ;;
  *) echo "usage: bash scripts/gpu_train.sh [--tiny]" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/bridgegap_gpu_train}
WHEELS=${GPU_WHEELS-gpu_wheels}
DATA=$(realpath -m "${GPU_DATA:-gpu_data}")
DEMO_DATA=/tmp/bridgegap_demo_data  # outside the tree: the 46 MiB demo set is never carried back
RUNS=/tmp/bridgegap_gpu_runs  # checkpoints: hundreds of MiB, deleted at the end
LOGS="$OUT/gpu_train_logs"
DEADLINE=$(( SECONDS + ${BUDGET_S:-540} ))
mkdir -p "$OUT"
rm -rf "$LOGS" "$RUNS"
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1

# --- packages -----------------------------------------------------------------------------------
SITE=/tmp/bridgegap_site
rm -rf "$SITE"
PATHS="$PWD${PYTHONPATH:+:$PYTHONPATH}"
install_wheels() {  # with pip; a Python without pip unpacks them (a wheel is a zip of its import tree)
  if "$PY" -m pip --version > /dev/null 2>&1; then
    "$PY" -m pip install --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl
  else
    for wheel in "$WHEELS"/*.whl; do "$PY" -m zipfile -e "$wheel" "$SITE" || return 1; done
  fi
}
CHECK='import bridgegap_jax.run.trainer, bridgegap_jax.prepare.cli, bridgegap_jax.main'
if [ -n "$WHEELS" ] && compgen -G "$WHEELS/*.whl" > /dev/null; then
  if install_wheels > "$LOGS/install.log" 2>&1 && PYTHONPATH="$SITE:$PATHS" "$PY" -c "$CHECK" \
      >> "$LOGS/install.log" 2>&1; then
    PATHS="$SITE:$PATHS"
  else  # e.g. wheels for another Python: the installed packages may still do
    echo "note: $WHEELS/*.whl do not work with $PY (see $LOGS/install.log); using the installed packages"
  fi
fi
export PYTHONPATH="$PATHS"
if ! "$PY" -c "$CHECK"; then
  echo "error: the training modules do not import with $PY (see above); build gpu_wheels/ with" \
       "scripts/gpu_data.sh" >&2
  exit 1
fi
{
  command -v nvidia-smi > /dev/null &&
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c 'import sys, jax; print("python", sys.version.split()[0], "| jax", jax.__version__, jax.devices())'
  echo "CPU cores: $(nproc) | /dev/shm (the decoded batches): $(df -h --output=size /dev/shm | tail -1 | tr -d ' ')" \
    "$([ "$TINY" = 1 ] && echo '| --tiny: tiny model and sizes, few steps')"
} > "$LOGS/env.txt" 2>&1
cat "$LOGS/env.txt"

# --- parts --------------------------------------------------------------------------------------
part() {  # part NAME SECONDS COMMAND...: output in NAME.log, "exit-code seconds" in NAME.status
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  (( limit > DEADLINE - SECONDS )) && limit=$(( DEADLINE - SECONDS ))
  if (( limit < 20 )); then
    echo "$name: not run, the time budget is spent"
    return
  fi
  timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  echo "$rc $(( SECONDS - start ))" > "$LOGS/$name.status"
  echo "$name: exit code $rc after $(( SECONDS - start )) s"
}

# The synthetic training step of the same model: the only use of the benchmark in this script.
SYNTHETIC=("$PY" -m bridgegap_jax.bench --depth=50 --num-classes=80 --size=448 --run=jax-bf16:16,128)
# 896 training examples: 7 steps of 128 or 56 of 16 per epoch; a progress line every LOG_EVERY steps.
if [ "$TINY" = 1 ]; then  # ResNet-18 at 32 px (the benchmark's --tiny size), narrow: bf16 is slow on CPUs
  SYNTHETIC=("$PY" -m bridgegap_jax.bench --tiny --run=jax-bf16:16,128)
  MODEL=(--config.model.depth=18 --config.model.width=8 --config.data.image_size=32)
  EPOCHS_B128=1
  EPOCHS_B16=1
  LOG_EVERY=2
  DEMO_EXTRA=(--config.train.num_epochs=1)
else
  MODEL=(--config.model.depth=50 --config.model.width=64 --config.data.image_size=448)
  EPOCHS_B128=30
  EPOCHS_B16=4
  LOG_EVERY=8
  DEMO_EXTRA=()
fi
# The ResNet from scratch in bf16 on the 448 px fake COCO set; batch and epochs are added.
TRAIN=("$PY" -m bridgegap_jax.main --config=configs/coco.py --config.data.data_dir="$DATA" "${MODEL[@]}"
       --config.model.pretrained= --config.model.dtype=bfloat16
       --config.train.log_every_steps="$LOG_EVERY")

if [ -d "$DATA/bridgegap_coco" ]; then
  part train_b128 200 "${TRAIN[@]}" --workdir="$RUNS/b128" --config.train.batch_size=128 \
    --config.train.num_epochs="$EPOCHS_B128"
  part synthetic 150 "${SYNTHETIC[@]}"
  part train_b16 150 "${TRAIN[@]}" --workdir="$RUNS/b16" --config.train.batch_size=16 \
    --config.train.num_epochs="$EPOCHS_B16"
else
  echo "no $DATA/bridgegap_coco: the ResNet-50 rows are not run (build it with scripts/gpu_data.sh)" \
    | tee "$LOGS/train_b128.log"
  part synthetic 150 "${SYNTHETIC[@]}"
fi
if [ -d "$DEMO_DATA/bridgegap_demo" ]; then
  echo "already built in $DEMO_DATA" > "$LOGS/demo_build.log"
  echo "0 0" > "$LOGS/demo_build.status"
else
  part demo_build 60 "$PY" -m bridgegap_jax.prepare demo --data_dir="$DEMO_DATA"
fi
# The README's demo command, with the data folder named and a fresh workdir.
part demo 150 "$PY" -m bridgegap_jax.main --config=configs/demo.py --workdir="$RUNS/demo" \
  --config.data.data_dir="$DEMO_DATA" "${DEMO_EXTRA[@]}"

rm -rf "$RUNS"
echo
"$PY" scripts/gpu_train_table.py "$LOGS" --md "$OUT/gpu_train.md" \
  --title "bridgegap_jax training$([ "$TINY" = 1 ] && echo ', --tiny (CPU smoke run: not a measurement)')"
echo "wrote $OUT/gpu_train.md; the parts' output is in $LOGS"
