#!/usr/bin/env bash
# Train (or resume) the three cascades and install them into the package if they validate higher.
#   scripts/train.sh cpu   # the recipe used for the shipped models (2 CPU cores, see docs/models.md)
#   scripts/train.sh gpu   # the same command sized for one H100-class GPU (well under 8 minutes)
#   scripts/train.sh tiny  # a few steps: checks the whole pipeline (used by the tests)
# Arguments after the preset go to `fcnn-deblur train`, e.g. to continue from the shipped models:
#   DEVICE=cuda scripts/train.sh gpu --init-from src/napari_fcnn_deblur/models --seed 2
# or to append and train a fourth stage (stages 1-3 frozen; installed only if it validates higher):
#   scripts/train.sh cpu-extend --init-from src/napari_fcnn_deblur/models --stage-minutes 75
# SHARED defaults to ../shared (the project's data folder); interrupted runs resume where they stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET="${1:-cpu}"
SHARED="${SHARED:-../shared}"
DEVICE="${DEVICE:-auto}"
OUT="${OUT:-training/${PRESET}-run}"
INSTALL=()
if [ "$PRESET" != "tiny" ]; then INSTALL=(--install-to src/napari_fcnn_deblur/models); fi
exec fcnn-deblur train --preset "$PRESET" --device "$DEVICE" \
  --data "$SHARED/data/train/train400" --val "$SHARED/data/val/set12" \
  --val-kernels "$SHARED/data/kernels/levin" --out "$OUT" "${INSTALL[@]}" "${@:2}"
