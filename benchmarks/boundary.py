#!/usr/bin/env python
"""Boundary refills (Kruse et al., FDN, ICCV 2017) against the edge taper alone, with trained cascades.

Before each stage's deconvolution, the padded frame of the blurry image can be refilled with the
current estimate blurred by the kernel (:func:`napari_fcnn_deblur.core.solver.refill_boundary`),
keeping the observed pixels; ``r`` refills solve eq. 6 ``r`` times per stage.  This measures what
0 … ``--refills`` refills give each cascade at every stage, without retraining (or with a cascade
trained with refills, given by ``--model``):

1. ``--images`` Set12 images × ``--kernels`` Levin kernels (evenly spaced; centre crops whose *valid*
   blur is ``--crop``², as ``benchmarks/default_model.py``), Gaussian noise per ``--sigmas`` with a
   seed per (image, kernel, level).
2. The cascades run on the [0, 1] scale given the true level: the noise-map cascade (``--model``,
   default the shipped one) and the shipped per-level cascade nearest to the level.
3. Mean PSNR (output clipped to [0, 1]) after every stage, per refill count; the table is printed,
   saved as JSON (``--out``) and, with ``--doc``, written as the ``## Boundary refills`` section.

Run::

    python benchmarks/boundary.py --val ../shared/data/val/set12 \\
        --kernel-dir ../shared/data/kernels/levin --doc docs/benchmarks.md

``--volumes N`` measures the shipped volume cascade instead, on the volume training's validation
phantoms (``N`` per PSF type and photon level), PSNR after every stage per refill count (printed only).
"""

from __future__ import annotations

import argparse
import datetime
import time
import zlib
from pathlib import Path

import numpy as np
from default_model import add_case_arguments, cases_of, psnr
from report_files import replace_section, save_json

HERE = Path(__file__).resolve().parent
SECTION = "## Boundary refills"


def stage_psnrs(cascade, blurry: np.ndarray, kernel: np.ndarray, sigma: float, gt: np.ndarray, refills: int) -> list[float]:
    """PSNR after the initial deconvolution and every stage of one run."""
    import torch

    from napari_fcnn_deblur.core.conditioned import NoiseMapCascade

    y = torch.from_numpy(blurry.astype(np.float32))[None]
    k = torch.from_numpy(kernel.astype(np.float32))
    with torch.no_grad():
        if isinstance(cascade, NoiseMapCascade):
            outs = cascade.run(y, k, sigma, refills=refills)
        else:
            outs = cascade.run(y, k, refills=refills)
        return [psnr(o.image[0].double().numpy(), gt) for o in outs]


def measure(models: dict, sigmas: list[float], case_list, max_refills: int, log=print) -> list[dict]:
    from napari_fcnn_deblur.data.samples import blur_valid
    from napari_fcnn_deblur.io import models as model_io

    rows = []
    for sigma in sigmas:
        runs = {"noise-map": models["noise-map"],
                f"per-level {100 * model_io.nearest_trained_level(sigma):g} %":
                    models[model_io.nearest_trained_level(sigma)]}
        for label, cascade in runs.items():
            t0 = time.time()
            per_r = {r: [] for r in range(max_refills + 1)}
            for iname, kname, sharp, k in case_list:
                seed = zlib.crc32(f"{iname}|{kname}|{sigma:g}".encode())
                blurry, gt = blur_valid(sharp, k, sigma, seed=seed)
                for r in per_r:
                    per_r[r].append(stage_psnrs(cascade, blurry, k, sigma, gt, r))
            means = {r: np.mean(v, axis=0).round(3).tolist() for r, v in per_r.items()}
            rows.append({"sigma": sigma, "model": label, "stages_db": means})
            log(f"σ {100 * sigma:g} % {label}: " + "; ".join(
                f"r={r}: {' '.join(f'{v:.2f}' for v in m)}" for r, m in means.items()) + f" ({time.time() - t0:.0f} s)")
    return rows


def markdown(rows: list[dict], info: str) -> str:
    r_max = max(int(r) for r in rows[0]["stages_db"])
    head = "| σ | model | taper only (dB) | " + " | ".join(f"{r} refill{'s' * (r > 1)}: Δ final | best stage Δ"
                                                          for r in range(1, r_max + 1)) + " |"
    lines = [SECTION, "", info, "", head, "|---|---|---:|" + "---:|---:|" * r_max]
    for row in rows:
        m = {int(r): v for r, v in row["stages_db"].items()}
        base = m[0][-1]
        cells = []
        for r in range(1, r_max + 1):
            best = int(np.argmax(m[r]))
            cells.append(f"{m[r][-1] - base:+.3f} | {max(m[r]) - max(m[0]):+.3f} (stage {best})")
        lines.append(f"| {100 * row['sigma']:g} % | {row['model']} | {base:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def measure_volumes(n_volumes: int, refill_counts, log=print) -> dict:
    """{refills: {condition: [PSNR of the input, stage 0 … n]}} of the shipped volume cascade."""
    from dataclasses import replace

    from napari_fcnn_deblur.core.cascade import REFILLS_KEY
    from napari_fcnn_deblur.io.models import load_cascade, volume_model_path
    from napari_fcnn_deblur.training.volumetric import VolConfig, validate, validation_set

    val = validation_set(replace(VolConfig(), val_volumes=n_volumes))
    cascade = load_cascade(volume_model_path()).eval()
    out = {}
    for r in refill_counts:
        cascade.metadata[REFILLS_KEY] = str(r)
        t0 = time.time()
        out[r] = validate(cascade, val, "cpu")
        log(f"refills {r} ({time.time() - t0:.0f} s)")
        for name, row in out[r].items():
            log(f"  {name:18s} " + " ".join(f"{v:6.2f}" for v in row))
    return out


def main(argv=None) -> int:
    import torch

    from napari_fcnn_deblur.io import models as model_io

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_case_arguments(p, images=4, kernels=4, crop=160, sigmas="0.01,0.03,0.05,0.10")
    p.add_argument("--refills", type=int, default=3, help="largest refill count measured")
    p.add_argument("--out", type=Path, default=HERE / "results" / "boundary.json")
    p.add_argument("--doc", type=Path, default=None, help="write the table into this markdown file")
    p.add_argument("--volumes", type=int, default=0, help="measure the volume cascade on N phantoms per condition")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.volumes:
        measure_volumes(args.volumes, range(args.refills + 1))
        return 0
    model = args.model or model_io.noisemap_model_path()
    models = {"noise-map": model_io.load_cascade(model).eval()}
    for lv in model_io.TRAINED_NOISE_LEVELS:
        models[lv] = model_io.load_cascade(model_io.shipped_model_path(lv)).eval()
    sigmas, case_list = cases_of(args)
    t0 = time.time()
    rows = measure(models, sigmas, case_list, args.refills)
    info = (f"Measured by `benchmarks/boundary.py` on {datetime.date.today().isoformat()} ({time.time() - t0:.0f} s): "
            f"{len({c[0] for c in case_list})} Set12 images × {len({c[1] for c in case_list})} Levin kernels, "
            f"centre crops with a {args.crop}² valid blur, Gaussian noise, true level; noise-map cascade "
            f"`{Path(model).name}` (its own refills: {models['noise-map'].refills}) and the shipped per-level cascade "
            "nearest to the level, no retraining. Δ against the same cascade with the edge taper only: at the final "
            "stage, and best stage against best stage (later stages paying is what refills are for).")
    text = markdown(rows, info)
    print(text)
    save_json(args.out, {"info": info, "rows": rows})
    if args.doc:
        replace_section(args.doc, text, SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
