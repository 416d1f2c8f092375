#!/bin/bash
# The performance issue's GPU row in one call of the device tool: the paper
# config's train step at 227 px, batch 224 + 224, in bfloat16 and float32, alone
# and in the training loop with on-device rendering, with MFU against the GPU's
# measured matrix-product peak in the same dtype (experiments/bench_train.py).
# Sized for about 8 minutes on one H100.
#
#   bash experiments/device_check.sh prepare   # here, once: wheels the GPU image lacks -> .whl/
#   bash experiments/device_check.sh           # there: device run, carry [".whl"], timeout_s 590
#
# Rows and logs go to $OUT (the device tool's output folder), else experiments/results/.
# BATCH, STEPS (pipeline steps per round) and ROW_TIMEOUT (s) shrink it for a dry run.
set -euo pipefail
cd "$(dirname "$0")/.."
# The GPU image has jax, optax, numpy, scikit-image and the CUDA plugin; these
# are what mtssl needs beyond them, at the versions its tests ran with.
wheels="grain==0.2.18 array-record==0.8.6 portpicker==1.6.0 ml_collections==1.1.0
        flax==0.12.8 orbax-checkpoint==0.12.8"
if [ "${1:-}" = prepare ]; then
  # shellcheck disable=SC2086
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl $wheels
  exit
fi
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
out=${OUT:-experiments/results}
batch=${BATCH:-224}
stamp=$(date -u +%Y-%m-%d)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
for dtype in bfloat16 float32; do
  timeout "${ROW_TIMEOUT:-280}" python3 experiments/bench_train.py --configs configs/pretrain.py \
    --resolutions 227 --batch "$batch" --dtype "$dtype" --pipeline_steps "${STEPS:-10}" \
    --pipeline_batch "$batch" --pipeline_rendering device \
    --out "$out/bench_train_gpu_${dtype}_$stamp.json" 2>&1 \
    | tee "$out/bench_train_gpu_${dtype}_$stamp.log" || echo "$dtype rows: exit $?"
done
