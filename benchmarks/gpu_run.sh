#!/usr/bin/env bash
# The accelerator benchmark (BENCHMARKS.md, "RetinaNet throughput and MFU on an accelerator
# (JAX)") on a GPU machine that has JAX with CUDA but neither TensorFlow nor Keras.
#
#   bash benchmarks/gpu_run.sh [extra benchmarks.accelerator_throughput flags]
#
# Run from the repository root. Keras and the two of its requirements such a machine lacks
# (namex, optree) travel as wheels in .wheels/, built beforehand on a machine with pip, for the
# GPU machine's Python (CPython 3.12, x86-64):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 -d .wheels keras==3.15.1 namex==0.1.0 optree==0.20.0
#
# (2.9 MB; .wheels/ is git-ignored.) Carry it with the repository (the device tool's `carry: [".wheels"]`). The rest
# of what Keras needs (absl-py, numpy, rich, h5py, ml-dtypes, packaging, typing-extensions) and
# what the model code imports (numpy, pillow, pyyaml) are on such a machine already.
#
# Results land in $OUT: BENCHMARKS.md with the section written (copy it into the repository's),
# accelerator_throughput.json (raw rows) and log. The benchmark is stopped after LIMIT seconds
# (default 480: one call of at most 10 minutes, within a 15-minute device budget that also pays
# for the machine's start); the section and JSON keep every row finished by then, and a row that
# fails (out of memory, say) says so and the next one runs. Each row pays for tracing and
# compiling its training step (the table's last column; 40 CPU-seconds for the tiny model here).
set -euo pipefail
OUT=${OUT:-/tmp/gpu_run}
LIMIT=${LIMIT:-480}
mkdir -p "$OUT"

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .wheels/*.whl
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1

# Versions and the device first: a machine that cannot run it says so in seconds.
python3 -c 'import jax, keras, sys; print(sys.version.split()[0], "jax", jax.__version__, "keras",
    keras.__version__, keras.backend.backend(), jax.devices())' | tee "$OUT/log"

cp BENCHMARKS.md "$OUT/BENCHMARKS.md"
status=0
timeout --signal=INT "$LIMIT" python3 -m benchmarks.accelerator_throughput \
    --out "$OUT/BENCHMARKS.md" --results "$OUT" "$@" 2>&1 | tee -a "$OUT/log" || status=$?
echo "exit status $status (124: stopped at the $LIMIT s limit)" | tee -a "$OUT/log"
exit "$status"
