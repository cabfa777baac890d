#!/usr/bin/env python
"""The volume cascade's priors on the whole padded grid against the volume ± a margin.

eq. 6 runs on the volume padded by the PSF's size on every side (replicate padding + edge taper); the
paper's stages denoise the gradients of that whole grid, although the frame is never observed.  With a
network margin m (:attr:`napari_fcnn_deblur.core.cascade.Cascade.network_margin`) the priors act on the
volume ± m voxels only (zero target gradients in the rest of the frame) and the engine's networks skip
the frame.  This measures, on the volumetric benchmark's volumes (``benchmarks/volumetric.py``: held-out
phantoms, widefield and confocal PSFs, 30 / 100 / 300 photons, uint16 camera stacks), PSNR and seconds
of ``deblur(stack, psf, noise_level="auto")`` with the volume cascade (``--model``, default the shipped
one) at each margin, the margins side by side volume by volume (same process, same load), without
retraining.  Writes the ``## Network margin`` section of ``--doc`` (with ``--doc``) and prints the table.

Run::

    python benchmarks/network_margin.py --doc docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import copy
import datetime
import time
from pathlib import Path

import numpy as np
import volumetric as vb
from report_files import replace_section

SECTION = "## Network margin"


def measure(model: str | None, margins: list[int | None], n_volumes: int, threads: int, log=print) -> dict:
    """``psnr``: {margin: [final PSNR per volume]}, ``seconds``: {margin: seconds over all volumes}, and
    ``base_margin``: the cascade's own margin."""
    import torch

    from napari_fcnn_deblur import deblur
    from napari_fcnn_deblur.core.cascade import MARGIN_KEY
    from napari_fcnn_deblur.engine.volume import resolve_volume_model

    torch.set_num_threads(threads)
    base = resolve_volume_model(model)
    cascades = {}
    for m in margins:
        c = copy.deepcopy(base)
        c.metadata.pop(MARGIN_KEY, None)
        if m is not None:
            c.metadata[MARGIN_KEY] = str(m)
        cascades[m] = c
    psnr = {m: [] for m in margins}
    seconds = {m: 0.0 for m in margins}
    for kind, psf in vb.psfs().items():
        for photons in vb.PHOTONS:
            for i in range(n_volumes):
                stack, sharp = vb.case(i, kind, photons, psf)
                deblur(stack[:6, :24, :24], psf[:5, :7, :7], noise_level="auto", model=cascades[margins[0]])  # warm-up
                for m in margins:
                    t = time.perf_counter()
                    out = deblur(stack, psf, noise_level="auto", model=cascades[m])
                    seconds[m] += time.perf_counter() - t
                    psnr[m].append(vb.scores((out - vb.OFFSET) / photons, sharp)[0])
                log(f"{kind} {photons:g} ph, volume {i}: " + "  ".join(f"{label(m)} {psnr[m][-1]:.2f}" for m in margins))
    return {"psnr": psnr, "seconds": seconds, "base_margin": base.network_margin}


def label(m: int | None) -> str:
    return "whole grid" if m is None else f"± {m}"


def report(res: dict, margins: list[int | None], model_name: str, n_volumes: int, threads: int) -> str:
    ref = np.asarray(res["psnr"][margins[0]])
    lines = [
        SECTION, "",
        f"*{datetime.date.today().isoformat()}, `benchmarks/network_margin.py`, {model_name}, {n_volumes} volume(s) of "
        f"{'×'.join(map(str, vb.SHAPE))} voxels per PSF type and photon level (the volumetric benchmark's), "
        f"{threads} thread(s), no retraining: the cascade as trained, with its own margin "
        f"{'none' if res.get('base_margin') is None else res['base_margin']}, run at each margin.*", "",
        "Where the volume cascade's priors act: the whole padded grid (the paper's setting) or the volume ± m "
        "voxels (zero target gradients in the rest of the frame, which the networks then skip). Δ: paired "
        "against the first column, per volume; seconds: all volumes, the margins run one after another on each "
        "volume.", "",
        "| priors on | mean PSNR (dB) | Δ mean | Δ worst | Δ best | seconds | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    t0 = res["seconds"][margins[0]]
    for m in margins:
        p = np.asarray(res["psnr"][m])
        d = p - ref
        lines.append(f"| {label(m)} | {p.mean():.3f} | {d.mean():+.3f} | {d.min():+.3f} | {d.max():+.3f} | "
                     f"{res['seconds'][m]:.1f} | {t0 / res['seconds'][m]:.2f}× |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="a volume cascade file (default: the shipped one)")
    ap.add_argument("--margins", default="none,0,2,4,8", help="comma-separated margins; 'none' = the whole grid")
    ap.add_argument("--volumes", type=int, default=2, help="volumes per PSF type and photon level")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--doc", type=Path, default=None, help="write the section into this markdown file")
    args = ap.parse_args(argv)
    margins = [None if v.strip().lower() == "none" else int(v) for v in args.margins.split(",")]
    res = measure(args.model, margins, args.volumes, args.threads)
    text = report(res, margins, f"`{Path(args.model).name}`" if args.model else "the shipped volume cascade",
                  args.volumes, args.threads)
    print(text)
    if args.doc is not None:
        replace_section(args.doc, text, SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
