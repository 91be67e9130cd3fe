#!/usr/bin/env bash
# Reproduces the shipped BraggNN model, src/braggtrack/data/braggnn_default.safetensors (+ .json),
# with braggtrack.train on simulated patches (braggtrack.simulate.simulate_patches, exact truth,
# a fresh seeded set of 32,768 patches of 13 x 13 px each epoch, cropped to 11 x 11 with a random
# +-1 px shift, flips/transposes).
#   stage 1: 30 epochs, every kind equally (sharp, broad, split, streak, weak, overlapping),
#            lr 2e-3 cosine-decayed, MSE for 7 epochs then beta-NLL (beta 0.5), noise augmentation.
#   stage 2: 8 epochs fine-tuning from stage 1, lr 5e-4, no added noise, broad and streak drawn
#            twice as often (they were the weakest kinds after stage 1).
# Deterministic on CPU (one torch thread, fixed seeds, fixed epoch counts). On the 2-core
# development machine, shared with other jobs, stage 1 took about 19 minutes and stage 2 about
# 4 minutes. The sha256 of the weights is written to the .json beside them.
#     bash benchmarks/train_default_model.sh [OUT.safetensors]
# An interrupted stage continues from its checkpoint with RESUME=1.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${1:-src/braggtrack/data/braggnn_default.safetensors}
WORK=${WORK:-${TMPDIR:-/tmp}/braggnn-default}
mkdir -p "$WORK"
EXTRA=()
if [[ "${RESUME:-0}" == "1" ]]; then EXTRA+=(--resume); fi

"$PYTHON" -m braggtrack.train "$WORK/stage1.safetensors" \
    --epochs 30 --n-train 32768 --n-val 4096 --batch-size 256 --lr 2e-3 --seed 0 \
    --patience 8 --channels 16,24,16 --dense 64,32 --threads 1 \
    --checkpoint-dir "$WORK/ckpt1" --no-progress "${EXTRA[@]}"

"$PYTHON" -m braggtrack.train "$OUT" --init "$WORK/stage1.safetensors" \
    --epochs 8 --n-train 32768 --n-val 4096 --batch-size 256 --lr 5e-4 --seed 1 \
    --warmup-epochs 0 --noise 0 --kinds sharp,broad,broad,split,streak,streak,weak,overlapping \
    --patience 8 --threads 1 --checkpoint-dir "$WORK/ckpt2" --no-progress "${EXTRA[@]}"
