#!/usr/bin/env bash
# Prepared commands for a lent GPU machine (the `device` tool): each fits one call (< 10 min) and writes what it
# makes under OUT (give $OUT there, so it comes back). Nothing is installed: the machine's python3 has torch,
# numpy, scipy, scikit-image, safetensors, imageio and tifffile, and the package runs from src/.
#
#   scripts/gpu_session.sh noisemap OUT [MINUTES]  end-to-end fine-tuning of the shipped noise-map cascade with its
#                                                  boundary refills (default 6 min), validated before and after
#   scripts/gpu_session.sh noisemap-deeper OUT [MINUTES]  one more stage for it (a copy of its last, trained
#                                                  stage-wise for MINUTES/2, default 8 in all), then all end to end
#   scripts/gpu_session.sh volume OUT [MINUTES]    end-to-end fine-tuning of the shipped volume cascade (default 6 min)
#   scripts/gpu_session.sh volume-deeper OUT [MINUTES]  one more stage for the volume cascade, as noisemap-deeper
# LOSS (default log-mse) is the end-to-end loss of every fine-tuning here (l1 or log-mse); TRAIN_PRECISION (default
# fp32) the arithmetic of the networks in training; GAMMA_FLOOR (default: the shipped file's own) the σ_eff below
# which γ(σ) is held constant, e.g. GAMMA_FLOOR=0.0025 (docs/models.md: the 1 % under-regularisation).
#   scripts/gpu_session.sh quality OUT [ARGS…]     benchmarks/quality.py with the cascades on the GPU (default: the
#                                                  noise-map rows of every condition of issue 14; starts from
#                                                  benchmarks/results/quality_cache.json (committed), writes
#                                                  OUT/quality_cache.json, a superset to copy back, and OUT/quality.md)
#   scripts/gpu_session.sh speed OUT               benchmarks/speed.py on the GPU (its report in OUT/benchmarks.md)
#   scripts/gpu_session.sh volume-speed OUT        issue 13's GPU time for a 100 × 1024 × 1024 volume, fp32 and bf16
#                                                  (benchmarks/volume_scale.py --device cuda; OUT/volume_scale.json
#                                                  and OUT/benchmarks.md to copy back)
#
# Afterwards, here: install a fine-tuned model only if its validation (OUT/*/train.log, val.json) beats the shipped
# one, as docs/models.md describes. SHARED (default ../shared) is the data folder. PRESET=tiny DEVICE=cpu
# PYTHON=python checks the noisemap and quality plumbing on any machine in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT="${1:?usage: scripts/gpu_session.sh noisemap|noisemap-deeper|volume|volume-deeper|quality|speed|volume-speed OUT [...]}"
OUT="${2:?usage: scripts/gpu_session.sh $WHAT OUT [...]}"
shift 2
SHARED="${SHARED:-../shared}"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
CLI=("$PY" -m napari_fcnn_deblur.cli)
DEVICE="${DEVICE:-cuda}"
PRESET="${PRESET:-gpu}"  # PRESET=tiny DEVICE=cpu: a smoke test of the plumbing on any machine
LOSS="${LOSS:-log-mse}"
# arithmetic of the networks in training: fp32 (TF32 convolutions) until bf16 training is measured on a GPU;
# TRAIN_PRECISION=auto or bf16 trains in bf16 autocast (3-4x faster than fp32 on AMX CPUs)
TRAIN_PRECISION="${TRAIN_PRECISION:-fp32}"
# --gamma-floor only when GAMMA_FLOOR is set (otherwise training keeps the start file's own floor)
FLOOR_ARG=()
[ -z "${GAMMA_FLOOR:-}" ] || FLOOR_ARG=(--gamma-floor "$GAMMA_FLOOR")
NM_MODEL=src/napari_fcnn_deblur/models/noisemap_cascade.safetensors
VOL_MODEL=src/napari_fcnn_deblur/models/volume_cascade.safetensors
# stage count / boundary refills of a model file
model_attr() { "$PY" -c "from napari_fcnn_deblur.io.models import load_cascade; print(load_cascade('$1').$2)"; }
case "$WHAT" in
  noisemap)
    MIN="${1:-6}"
    "${CLI[@]}" train-noisemap --preset "$PRESET" --device "$DEVICE" --data "$SHARED/data/train/train400" \
      --val "$SHARED/data/val/set12" --val-kernels "$SHARED/data/kernels/levin" --out "$OUT/noisemap" \
      --init-from "$NM_MODEL" --start-at finetune --stages "$(model_attr "$NM_MODEL" n_stages)" \
      --minutes-finetune "$MIN" --refills "$(model_attr "$NM_MODEL" refills)" --finetune-loss "$LOSS" --precision "$TRAIN_PRECISION" \
      ${FLOOR_ARG[@]+"${FLOOR_ARG[@]}"} 2>&1 | tee -a "$OUT/noisemap.log"
    ;;
  noisemap-deeper)
    MIN="${1:-8}"
    HALF=$("$PY" -c "print(${MIN} / 2)")
    N=$(( $(model_attr "$NM_MODEL" n_stages) + 1 ))
    "${CLI[@]}" train-noisemap --preset "$PRESET" --device "$DEVICE" --data "$SHARED/data/train/train400" \
      --val "$SHARED/data/val/set12" --val-kernels "$SHARED/data/kernels/levin" --out "$OUT/noisemap-deeper" \
      --init-from "$NM_MODEL" --stages "$N" --start-at "stage$N" \
      --minutes-stage "$("$PY" -c "print(','.join(['0'] * ($N - 1) + ['$HALF']))")" --minutes-finetune "$HALF" \
      --refills "$(model_attr "$NM_MODEL" refills)" --finetune-loss "$LOSS" --precision "$TRAIN_PRECISION" \
      ${FLOOR_ARG[@]+"${FLOOR_ARG[@]}"} 2>&1 | tee -a "$OUT/noisemap-deeper.log"
    ;;
  volume)
    MIN="${1:-6}"
    "$PY" -m napari_fcnn_deblur.training.volumetric --preset "$PRESET" --device "$DEVICE" --out "$OUT/volume" \
      --init-from "$VOL_MODEL" --start-at finetune --stages "$(model_attr "$VOL_MODEL" n_stages)" \
      --width "$(model_attr "$VOL_MODEL" width)" --minutes-finetune "$MIN" --finetune-loss "$LOSS" --precision "$TRAIN_PRECISION" \
      2>&1 | tee -a "$OUT/volume.log"
    ;;
  volume-deeper)
    MIN="${1:-8}"
    HALF=$("$PY" -c "print(${MIN} / 2)")
    N=$(( $(model_attr "$VOL_MODEL" n_stages) + 1 ))
    "$PY" -m napari_fcnn_deblur.training.volumetric --preset "$PRESET" --device "$DEVICE" --out "$OUT/volume-deeper" \
      --init-from "$VOL_MODEL" --stages "$N" --start-at "stage$N" --width "$(model_attr "$VOL_MODEL" width)" \
      --minutes-stage "$("$PY" -c "print(','.join(['0'] * ($N - 1) + ['$HALF']))")" --minutes-finetune "$HALF" \
      --finetune-loss "$LOSS" --precision "$TRAIN_PRECISION" 2>&1 | tee -a "$OUT/volume-deeper.log"
    ;;
  quality)
    CACHE="benchmarks/results/quality_cache.json"
    if [ -f "$CACHE" ]; then cp "$CACHE" "$OUT/quality_cache.json"; fi
    ARGS=("$@")
    if [ ${#ARGS[@]} -eq 0 ]; then
      ARGS=(--levels 0.005 0.01 0.02 0.03 0.05 0.07 0.1 0.15 --photons 30 100 300 --methods noisemap noisemap-auto)
    fi
    "$PY" benchmarks/quality.py --val "$SHARED/data/val/set12" --kernels "$SHARED/data/kernels/levin" \
      --reference "$SHARED/reference/fcnn-cvpr17-official/models" --read-noise 0.005 --device "$DEVICE" \
      --cache "$OUT/quality_cache.json" --out "$OUT/quality.md" "${ARGS[@]}" 2>&1 | tee -a "$OUT/quality.log"
    ;;
  speed)
    "$PY" benchmarks/speed.py --out "$OUT/benchmarks.md" 2>&1 | tee -a "$OUT/speed.log"
    ;;
  volume-speed)  # issue 13's GPU row: a 100 × 1024 × 1024 volume, fp32 and bf16 (copy OUT/volume_scale.json back)
    if [ "$DEVICE" = cpu ]; then echo "volume-speed measures a GPU (DEVICE=cuda or cuda:N)" >&2; exit 2; fi
    cp benchmarks/results/volume_scale.json "$OUT/volume_scale.json"
    cp docs/benchmarks.md "$OUT/benchmarks.md"
    "$PY" benchmarks/volume_scale.py --device "$DEVICE" --cache "$OUT/volume_scale.json" --out "$OUT/benchmarks.md" \
      "$@" 2>&1 | tee -a "$OUT/volume-speed.log"
    ;;
  *)
    echo "unknown command $WHAT (noisemap, noisemap-deeper, volume, volume-deeper, quality, speed, volume-speed)" >&2
    exit 2
    ;;
esac
