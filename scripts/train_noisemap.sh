#!/usr/bin/env bash
# Train (or resume) the noise-map-conditioned cascade into an output folder: checkpoints stage{1,2,3}.pt and
# finetune.pt, after_<phase>.safetensors, val.json, val_baseline.json, train.log, then noisemap_cascade.safetensors.
#   scripts/train_noisemap.sh /work/nm-runs/run1          # start or resume the 2-core CPU run (30,25,25 + 40 min)
#   DEVICE=cuda scripts/train_noisemap.sh runs/nm-gpu gpu  # the same in one command on an H100/H200-class GPU
#   scripts/train_noisemap.sh /tmp/nm-tiny cpu --tiny      # a few steps of every phase: checks the pipeline
#   scripts/train_noisemap.sh /work/nm-runs/run4 cpu --refills 3  # train with boundary refills (kept in the model)
#   scripts/train_noisemap.sh /work/nm-runs/run4 cpu --snapshot   # the fine-tuning checkpoint so far → validated model file
# Arguments after the preset go to `fcnn-deblur train-noisemap` (e.g. --minutes-stage 30,25,25 --threads 2).
# A folder resumes where it stopped (same data, optimiser state and step counts); SHARED defaults to ../shared.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: scripts/train_noisemap.sh OUT_DIR [cpu|gpu|tiny] [more train-noisemap flags]}"
PRESET="${2:-cpu}"
SHARED="${SHARED:-../shared}"
DEVICE="${DEVICE:-cpu}"
exec fcnn-deblur train-noisemap --preset "$PRESET" --device "$DEVICE" \
  --data "$SHARED/data/train/train400" --val "$SHARED/data/val/set12" \
  --val-kernels "$SHARED/data/kernels/levin" --out "$OUT" "${@:3}"
