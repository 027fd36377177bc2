#!/usr/bin/env bash
# Build here, once, the two folders that scripts/gpu_train.sh needs on a GPU machine without internet:
#
#   bash scripts/gpu_data.sh [DIR]      # DIR/gpu_wheels and DIR/gpu_data (default: the repository root)
#
# gpu_wheels/  the packages the machine lacks, for Python 3.12 (PYTHON_VERSION to change it)
# gpu_data/    a 448 px fake COCO set, prepared: 1,120 photo-like 597x448 JPEGs in the train folder
#              (896 train + 224 validation examples: batches of 16 and 128 divide the train split)
#              and 56 in the val folder (the test split); about 33 MiB.
# The demo dataset (46 MiB of noisy PNGs) is not carried: gpu_train.sh builds it there in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.}
PY=${PYTHON:-python3}

bash scripts/fetch_gpu_wheels.sh "$DIR/gpu_wheels" "${PYTHON_VERSION:-3.12}"
download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
"$PY" -m bridgegap_jax.prepare.fake coco --out "$download" --image_size 448 --num_images 1120
"$PY" -m bridgegap_jax.prepare coco --source="$download" --data_dir="$DIR/gpu_data" --overwrite
du -sh "$DIR/gpu_wheels" "$DIR/gpu_data"
