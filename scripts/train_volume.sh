#!/usr/bin/env bash
# Train (or resume) the volumetric cascade on synthetic z-stacks into an output folder: checkpoints stage{1,2,3}.pt
# and finetune.pt, after_<phase>.safetensors, val.json, train.log, then volume_cascade.safetensors.
#   scripts/train_volume.sh runs/vol1 INIT.safetensors               # the 2-core CPU recipe (20,20,20 + 30 min)
#   DEVICE=cuda scripts/train_volume.sh runs/vol-gpu INIT gpu         # one command on an H100/H200-class GPU
#   scripts/train_volume.sh /tmp/vol-tiny INIT tiny                   # a check (INIT must be width 8 then)
# INIT: a 2D noise-map cascade (warm start; default the shipped one) or a volume cascade (--start-at PHASE).
# Arguments after the preset go to the trainer (e.g. --minutes-stage 20,20,20 --threads 2). A folder resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: scripts/train_volume.sh OUT_DIR [INIT] [cpu|gpu|tiny] [more flags]}"
INIT="${2:-src/napari_fcnn_deblur/models/noisemap_cascade.safetensors}"
PRESET="${3:-cpu}"
DEVICE="${DEVICE:-cpu}"
exec python -m napari_fcnn_deblur.training.volumetric --out "$OUT" --init-from "$INIT" --preset "$PRESET" \
  --device "$DEVICE" "${@:4}"
