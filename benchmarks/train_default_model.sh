#!/usr/bin/env bash
# Reproduces the shipped BraggNN model, src/braggtrack/data/braggnn_default.safetensors (+ .json),
# with braggtrack.train on simulated patches (braggtrack.simulate.simulate_patches, exact truth,
# a fresh seeded set of 13 x 13 px patches each epoch, cropped to 11 x 11 with a random +-1 px
# shift, flips/transposes). Eight stages, each fine-tuning the previous one:
#   stage 1: 30 epochs x 32,768, every kind equally, lr 2e-3 cosine-decayed, MSE for 7 epochs then
#            beta-NLL (beta 0.5), noise augmentation; the network's centre is its own output plus
#            a learned gate times the patch centroid (--gated-centroid; every kind better on both
#            validation and test seeds than the same recipe without it).
#   stage 2: 8 epochs x 32,768, lr 5e-4, no added noise, broad and streak drawn twice as often.
#   stage 3: 12 epochs x 49,152, batch 512, lr 5e-4; 20 % of the patches thresholded to zero
#            background like sparse frame-cache (HEDM) data (--sparse 0.2).
#   stage 4: 14 epochs x 65,536, batch 1024, lr 3e-4; broad and streak drawn three times as often.
#   stage 5: 8 epochs x 65,536, batch 1024, lr 2e-4; 3 % peak-free noise patches with random
#            targets (--garbage 0.03, teaches a large predicted variance on garbage); the saved
#            model averages 2 symmetry views at inference (--symmetries 2) and its
#            out-of-distribution thresholds are calibrated on stage 5's validation set.
#   stage 6: 48 epochs x 262,144 (12.6 M patches), batch 512, lr 5e-4 cosine-decayed, beta-NLL
#            with beta 0.2 (weights precise patches more than 0.5 did: better on every kind in
#            a pilot), split and weak drawn twice and broad and streak three times as often as
#            sharp and overlapping; sparse and garbage patches as in stage 5.
#   stage 7: 24 epochs x 262,144, lr 2e-4 cosine-decayed, streak drawn four times as often
#            (chosen over stage 6's mix and over beta 0.05 in pilots on validation seed 777000);
#            thresholds recalibrated on its validation set.
#   stage 8: 24 epochs x 262,144, lr 3e-4 cosine-decayed, stage 7's mix plus shapes outside the six
#            kinds (simulate.EXTRA_KINDS, 4 of 18 draws): undersampled (sigma 0.25-0.6 px) three
#            times, wide (sigma 3-4.5 px) and lorentzian (eta 0.8-1) once; thresholds recalibrated.
#            Stage 7 was 42 % worse than pvoigt on undersampled peaks; stage 8 is level there and
#            on the six kinds within a point or two of stage 7 (validation seed 777000).
# Deterministic on CPU (one torch thread, fixed seeds, fixed epoch counts): a second full run
# gave exactly the shipped weights and config. Wall time on the 2-core development machine,
# 2026-12-01: ~21 minutes idle (stages 1-7: 1.1 + 0.3 + 0.6 + 0.9 + 0.5 + 11.5 + 5.8), ~31 with
# other work beside it (the simulator draws the next chunk on a second thread while torch trains
# on one). The sha256 of the weights file is written to the .json.
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
COMMON=(--n-val 4096 --threads 1 --no-progress)
HEAVY=sharp,broad,broad,broad,split,streak,streak,streak,weak,overlapping
MESSY=sharp,broad,broad,broad,split,split,streak,streak,streak,weak,weak,overlapping
STREAKY=sharp,broad,broad,broad,split,split,streak,streak,streak,streak,weak,weak,overlapping
SHAPES=$STREAKY,undersampled,undersampled,undersampled,wide,lorentzian

"$PYTHON" -m braggtrack.train "$WORK/stage1.safetensors" \
    --epochs 30 --n-train 32768 --batch-size 256 --lr 2e-3 --seed 0 \
    --patience 8 --channels 16,24,16 --dense 64,32 --gated-centroid \
    --checkpoint-dir "$WORK/ckpt1" "${COMMON[@]}" "${EXTRA[@]}"

"$PYTHON" -m braggtrack.train "$WORK/stage2.safetensors" --init "$WORK/stage1.safetensors" \
    --epochs 8 --n-train 32768 --batch-size 256 --lr 5e-4 --seed 1 \
    --warmup-epochs 0 --noise 0 --kinds sharp,broad,broad,split,streak,streak,weak,overlapping \
    --patience 8 --checkpoint-dir "$WORK/ckpt2" "${COMMON[@]}" "${EXTRA[@]}"

"$PYTHON" -m braggtrack.train "$WORK/stage3.safetensors" --init "$WORK/stage2.safetensors" \
    --sparse 0.2 --epochs 12 --n-train 49152 --batch-size 512 --lr 5e-4 --seed 2 \
    --warmup-epochs 0 --noise 0 --kinds sharp,broad,broad,split,streak,streak,weak,overlapping \
    --patience 12 --checkpoint-dir "$WORK/ckpt3" "${COMMON[@]}" "${EXTRA[@]}"

"$PYTHON" -m braggtrack.train "$WORK/stage4.safetensors" --init "$WORK/stage3.safetensors" \
    --sparse 0.2 --epochs 14 --n-train 65536 --batch-size 1024 --lr 3e-4 --seed 3 \
    --warmup-epochs 0 --noise 0 --kinds "$HEAVY" \
    --patience 14 --checkpoint-dir "$WORK/ckpt4" "${COMMON[@]}" "${EXTRA[@]}"

"$PYTHON" -m braggtrack.train "$WORK/stage5.safetensors" --init "$WORK/stage4.safetensors" \
    --sparse 0.2 --garbage 0.03 --symmetries 2 --epochs 8 --n-train 65536 --batch-size 1024 \
    --lr 2e-4 --seed 4 --warmup-epochs 0 --noise 0 --kinds "$HEAVY" \
    --patience 8 --checkpoint-dir "$WORK/ckpt5" "${COMMON[@]}" "${EXTRA[@]}"

"$PYTHON" -m braggtrack.train "$WORK/stage6.safetensors" --init "$WORK/stage5.safetensors" \
    --sparse 0.2 --garbage 0.03 --symmetries 2 --epochs 48 --n-train 262144 --batch-size 512 \
    --lr 5e-4 --beta 0.2 --seed 5 --warmup-epochs 0 --noise 0 --kinds "$MESSY" \
    --patience 48 --checkpoint-dir "$WORK/ckpt6" "${COMMON[@]}" "${EXTRA[@]}"

"$PYTHON" -m braggtrack.train "$WORK/stage7.safetensors" --init "$WORK/stage6.safetensors" \
    --sparse 0.2 --garbage 0.03 --symmetries 2 --epochs 24 --n-train 262144 --batch-size 512 \
    --lr 2e-4 --beta 0.2 --seed 6 --warmup-epochs 0 --noise 0 --kinds "$STREAKY" \
    --patience 24 --checkpoint-dir "$WORK/ckpt7" "${COMMON[@]}" "${EXTRA[@]}"

"$PYTHON" -m braggtrack.train "$OUT" --init "$WORK/stage7.safetensors" \
    --sparse 0.2 --garbage 0.03 --symmetries 2 --epochs 24 --n-train 262144 --batch-size 512 \
    --lr 3e-4 --beta 0.2 --seed 7 --warmup-epochs 0 --noise 0 --kinds "$SHAPES" \
    --patience 24 --checkpoint-dir "$WORK/ckpt8" "${COMMON[@]}" "${EXTRA[@]}"
