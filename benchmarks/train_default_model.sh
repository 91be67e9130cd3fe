#!/usr/bin/env bash
# Reproduces the shipped BraggNN model, src/braggtrack/data/braggnn_default.safetensors (+ .json),
# with braggtrack.train on simulated patches (every kind of braggtrack.simulate: sharp, broad,
# split, streak, weak, overlapping; exact truth; a fresh seeded set of 32,768 patches each epoch).
#
# Deterministic on CPU (one torch thread, fixed seed, fixed epoch count): on the 2-core
# development machine it took about 20 minutes while sharing the cores. The weights' sha256
# is written to the .json beside them. Run from anywhere:
#     bash benchmarks/train_default_model.sh [OUT.safetensors]
# Interrupted runs continue from the checkpoint with RESUME=1.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${1:-src/braggtrack/data/braggnn_default.safetensors}
CKPT=${CKPT:-${TMPDIR:-/tmp}/braggnn-default-checkpoints}
EXTRA=()
if [[ "${RESUME:-0}" == "1" ]]; then EXTRA+=(--resume); fi
"$PYTHON" -m braggtrack.train "$OUT" \
    --epochs 30 --n-train 32768 --n-val 4096 --batch-size 256 --lr 2e-3 --seed 0 \
    --patience 8 --channels 16,24,16 --dense 64,32 --threads 1 \
    --checkpoint-dir "$CKPT" --no-progress "${EXTRA[@]}"
