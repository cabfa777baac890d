#!/usr/bin/env python
"""Re-select the last deconvolution's γ of trained cascades on whole frames (not patches).

The γ of every stage are trained end to end on 96–128 px patches (``training.train_gammas``).
On whole images the last stage can end up with too small a data weight (at 1 % the shipped
stage 3 was below stage 2 on Set12).  This script scores the final stage on whole frames of the
*training* images (never the benchmark's), each blurred by a fresh random camera-shake kernel
(the training distribution) with the level's noise, for γ_last × each factor of ``--factors``,
and keeps the factor with the best mean PSNR (the later γ stays ≤ the earlier one).  Only the
last deconvolution changes, so the networks run once per frame.

    python scripts/tune_final_gamma.py --data ../shared/data/train/train400 \\
        --models src/napari_fcnn_deblur/models --write
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch


def tuning_cases(images, level: float, n: int, seed: int):
    from napari_fcnn_deblur.data.motion_kernels import random_motion_kernel
    from napari_fcnn_deblur.data.samples import blur_valid

    rng = np.random.default_rng(seed)
    idx = rng.choice(len(images), size=min(n, len(images)), replace=False)
    cases = []
    for i in idx:
        k = random_motion_kernel(rng).astype(np.float32)
        blurry, gt = blur_valid(images[i], k, level, seed=int(rng.integers(2**31)))
        cases.append((blurry.astype(np.float32), k, gt))
    return cases


def final_stage_psnrs(cascade, cases, factors) -> tuple[np.ndarray, np.ndarray]:
    """PSNR (cases × factors) of the last stage with γ_last × factor, and (cases,) of the stage before.

    The cascade runs once per case (its own stage loop); only the last deconvolution is solved
    again with each γ, from the denoised gradients the last stage produced.
    """
    from napari_fcnn_deblur.core.solver import deconvolve

    g_last = float(cascade.gammas[-1].detach())
    out = np.zeros((len(cases), len(factors)))
    before = np.zeros(len(cases))
    with torch.inference_mode():
        for c, (y, k, gt) in enumerate(cases):
            steps = list(cascade.run(torch.from_numpy(y)[None], torch.from_numpy(k)))
            prev, last = steps[-2], steps[-1]
            crop = last.problem.geometry.crop

            def psnr(x, crop=crop, gt=gt):
                est = crop(x)[0].clamp(0, 1).numpy()
                return 10 * math.log10(1.0 / float(np.mean((est - gt) ** 2)))

            before[c] = psnr(prev.x_padded)
            for j, f in enumerate(factors):
                out[c, j] = psnr(deconvolve(last.problem, g_last * f, last.gradients))
    return out, before


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="folder of sharp training images")
    ap.add_argument("--models", required=True, type=Path, help="folder of fcnn_noise0.0X.safetensors")
    ap.add_argument("--levels", type=float, nargs="+", default=[0.01, 0.03, 0.05])
    ap.add_argument("--frames", type=int, default=100, help="whole training frames per level")
    ap.add_argument("--factors", type=float, nargs="+", default=[0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    ap.add_argument("--min-gain", type=float, default=0.02, help="dB needed to change γ_last")
    ap.add_argument("--seed", type=int, default=77)
    ap.add_argument("--write", action="store_true", help="save the re-selected cascades in place")
    args = ap.parse_args(argv)

    from napari_fcnn_deblur.io.models import load_cascade, save_cascade
    from napari_fcnn_deblur.training.stagewise import load_image_folder

    images = load_image_folder(args.data)
    factors = sorted(set(args.factors) | {1.0})
    report = {}
    for level in args.levels:
        path = args.models / f"fcnn_noise{level:.2f}.safetensors"
        cascade = load_cascade(path).eval()
        t0 = time.time()
        cases = tuning_cases(images, level, args.frames, args.seed)
        scores, before = final_stage_psnrs(cascade, cases, factors)
        mean = scores.mean(0)
        g = cascade.gammas.detach().clone()
        allowed = [j for j, f in enumerate(factors) if g[-1] * f <= g[-2]]  # later γ ≤ earlier γ
        best = max(allowed, key=lambda j: mean[j])
        one = factors.index(1.0)
        chosen = best if mean[best] - mean[one] >= args.min_gain else one
        line = ", ".join(f"×{f:g}: {m:.3f}" for f, m in zip(factors, mean))
        print(f"σ={level:g}: stage {cascade.n_stages - 1} {before.mean():.3f} dB; last stage {line} "
              f"→ ×{factors[chosen]:g} ({time.time() - t0:.0f} s, {len(cases)} frames)", flush=True)
        report[level] = {"factors": factors, "mean_psnr": mean.tolist(), "previous_stage": float(before.mean()),
                         "chosen": factors[chosen], "gamma_last_before": float(g[-1])}
        if args.write and chosen != one:
            with torch.no_grad():
                cascade.log_gammas[-1] += math.log(factors[chosen])
            cascade.metadata["final_gamma_reselected"] = json.dumps(
                {"factor": factors[chosen], "frames": len(cases), "data": args.data.name, "seed": args.seed,
                 "mean_psnr_before": round(float(mean[one]), 3), "mean_psnr_after": round(float(mean[chosen]), 3)})
            save_cascade(cascade, path)
            print(f"  wrote {path} (γ_last {float(g[-1]):.4g} → {float(cascade.gammas[-1]):.4g})")
    print(json.dumps({str(k): v for k, v in report.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
