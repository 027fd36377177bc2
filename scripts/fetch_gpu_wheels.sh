#!/usr/bin/env bash
# Download the wheels that scripts/gpu_train.sh installs on a GPU machine without internet.
#
#   bash scripts/fetch_gpu_wheels.sh DIR [PYTHON_VERSION]     # default 3.12, manylinux x86_64
#
# The machine is expected to have jax (CUDA), flax, optax, orbax-checkpoint, numpy and opencv.
# TRAIN is what training adds to that at run time (tried in a fresh environment holding only those
# six: tensorflow-datasets imports most of its own dependencies lazily, so a few are enough).
# DEMO is what building the demo dataset adds (its digits come from scikit-learn, its PNGs from
# Pillow). Versions are the ones the project is tested with.
set -euo pipefail
DIR=${1:?usage: bash scripts/fetch_gpu_wheels.sh DIR [PYTHON_VERSION]}
VERSION=${2:-3.12}
PY=${PYTHON:-python3}

TRAIN=(
  tensorflow-datasets==4.9.10 tensorflow-metadata==1.21.0 grain==0.2.18 array_record==0.8.6
  ml_collections==1.1.0 tensorboardX==2.6.5 dm-tree==0.1.10 immutabledict==4.3.1 cloudpickle==3.1.3
  portpicker==1.6.0 toml==0.10.2 tqdm==4.70.1 wrapt==2.5.2 six==1.17.0
  protobuf==7.36.2  # tensorflow-metadata's generated code needs protobuf >= 6.31 at run time
)
DEMO=(scikit-learn==1.9.1 joblib==1.6.0 threadpoolctl==3.8.0 narwhals==2.29.0 pillow==13.0.0)
PLATFORMS=()
for tag in manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64 \
           manylinux_2_28_x86_64; do
  PLATFORMS+=(--platform "$tag")
done

mkdir -p "$DIR"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$VERSION" --implementation cp \
  "${PLATFORMS[@]}" --dest "$DIR" "${TRAIN[@]}" "${DEMO[@]}"
# promise (a tensorflow-datasets dependency) is published as source only: build its pure-Python wheel.
"$PY" -m pip wheel --quiet --no-deps --wheel-dir "$DIR" promise==2.3
ls -l "$DIR"/*.whl | awk '{printf "%8.0f KiB  %s\n", $5 / 1024, $NF}'
du -sh "$DIR"
