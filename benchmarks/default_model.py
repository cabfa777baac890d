#!/usr/bin/env python
"""Measure the table behind the default model choice and (with ``--write``) store it in the noise-map file.

``deblur(model=None)`` runs the noise-map cascade, except for plain Gaussian noise at levels where the
nearest per-level cascade validates better (:func:`napari_fcnn_deblur.io.models.select_model`).  Which
levels those are is measured here, on a small fixed set, for the noise-map cascade file given:

1. ``--images`` Set12 images (evenly spaced over the sorted folder) × ``--kernels`` Levin kernels
   (evenly spaced), the sharp image cropped at its centre so that the *valid* blur is
   ``--crop`` × ``--crop``; Gaussian noise of each level in ``--sigmas`` with a seed per
   (image, kernel, level).
2. Both models deblur the same image given the true level (``intensity_range=(0, 1)``, so the level
   is on the networks' scale): the noise-map cascade (the file) and ``model="per-level"`` (the shipped
   per-level cascade nearest to the level).  PSNR of the output clipped to [0, 1] against the aligned
   sharp crop, averaged over the cases.
3. The table (levels, both mean PSNRs, the per-level cascade used, the winner, provenance) is printed,
   written to ``--out`` (JSON) and, with ``--write``, into the noise-map file's ``default_rule``
   metadata entry (the weights are unchanged).

Re-run it with ``--write`` whenever the noise-map file is replaced (a new file has no table, and the
default is then the noise-map cascade at every level)::

    python benchmarks/default_model.py --write \\
        --val ../shared/data/val/set12 --kernel-dir ../shared/data/kernels/levin
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
import zlib
from pathlib import Path

import numpy as np
from report_files import save_json

HERE = Path(__file__).resolve().parent
DEFAULT_SIGMAS = "0.005,0.01,0.02,0.03,0.05,0.07,0.10,0.15"


def evenly(items: list, n: int) -> list:
    idx = np.unique(np.linspace(0, len(items) - 1, min(n, len(items))).round().astype(int))
    return [items[i] for i in idx]


def psnr(est: np.ndarray, gt: np.ndarray) -> float:
    mse = float(np.mean((np.clip(est, 0, 1) - gt) ** 2))
    return 10 * np.log10(1.0 / mse)


def cases(val: Path, kernel_dir: Path, n_images: int, n_kernels: int, crop: int):
    """[(image name, kernel name, sharp crop, kernel)], sharp crops sized so the valid blur is crop × crop."""
    from napari_fcnn_deblur.training.stagewise import load_image_folder, load_kernel_folder

    names = sorted(p.name for p in val.iterdir() if p.suffix.lower() in {".png", ".jpg", ".tif", ".tiff", ".bmp"})
    images = list(zip(names, load_image_folder(val), strict=True))
    knames = sorted(p.stem for p in kernel_dir.iterdir() if p.suffix == ".npy")
    kernels = list(zip(knames, load_kernel_folder(kernel_dir), strict=True))
    out = []
    for iname, im in evenly(images, n_images):
        for kname, k in evenly(kernels, n_kernels):
            k = np.asarray(k, np.float64)
            k = np.pad(k, ((0, 1 - k.shape[0] % 2), (0, 1 - k.shape[1] % 2)))
            k /= k.sum()
            h, w = crop + k.shape[0] - 1, crop + k.shape[1] - 1
            r0, c0 = (im.shape[0] - h) // 2, (im.shape[1] - w) // 2
            out.append((iname, kname, np.asarray(im[r0 : r0 + h, c0 : c0 + w], np.float64), k))
    return out


def measure(model: Path, sigmas: list[float], case_list, log=print) -> dict:
    from napari_fcnn_deblur import deblur
    from napari_fcnn_deblur.data.samples import blur_valid
    from napari_fcnn_deblur.io.models import nearest_trained_level

    rows = []
    for sigma in sigmas:
        nm, pl = [], []
        t0 = time.time()
        for iname, kname, sharp, k in case_list:
            seed = zlib.crc32(f"{iname}|{kname}|{sigma:g}".encode())
            blurry, gt = blur_valid(sharp, k, sigma, seed=seed)
            kw = dict(noise_level=sigma, device="cpu", intensity_range=(0.0, 1.0))
            nm.append(psnr(deblur(blurry, k, model=model, **kw), gt))
            pl.append(psnr(deblur(blurry, k, model="per-level", **kw), gt))
        row = {"sigma": sigma, "noisemap_db": round(float(np.mean(nm)), 3), "per_level_db": round(float(np.mean(pl)), 3),
               "per_level_model": nearest_trained_level(sigma)}
        row["winner"] = "noisemap" if row["noisemap_db"] >= row["per_level_db"] else "per-level"
        rows.append(row)
        log(f"σ {100 * sigma:5.2g} %: noise-map {row['noisemap_db']:6.2f} dB, per-level "
            f"({100 * row['per_level_model']:g} %) {row['per_level_db']:6.2f} dB → {row['winner']} "
            f"({time.time() - t0:.0f} s)")
    return {
        "sigma": [r["sigma"] for r in rows],
        "noisemap_db": [r["noisemap_db"] for r in rows],
        "per_level_db": [r["per_level_db"] for r in rows],
        "per_level_model": [r["per_level_model"] for r in rows],
        "winner": [r["winner"] for r in rows],
    }


def table_markdown(table: dict) -> str:
    lines = ["| σ (%) | noise-map (dB) | per-level (dB) | per-level model | Δ (dB) | default |",
             "|---:|---:|---:|---:|---:|---|"]
    for s, a, b, m, w in zip(table["sigma"], table["noisemap_db"], table["per_level_db"], table["per_level_model"],
                             table["winner"]):
        lines.append(f"| {100 * s:g} | {a:.2f} | {b:.2f} | {100 * m:g} % | {a - b:+.2f} | {w} |")
    return "\n".join(lines)


def add_case_arguments(p: argparse.ArgumentParser, images: int, kernels: int, crop: int, sigmas: str) -> None:
    """The options that choose the validation cases (:func:`cases`) and noise levels, with these defaults."""
    p.add_argument("--model", type=Path, default=None, help="noise-map cascade file (default: the shipped one)")
    p.add_argument("--val", type=Path, default=HERE.parent.parent / "shared" / "data" / "val" / "set12")
    p.add_argument("--kernel-dir", type=Path, default=HERE.parent.parent / "shared" / "data" / "kernels" / "levin")
    p.add_argument("--images", type=int, default=images)
    p.add_argument("--kernels", type=int, default=kernels)
    p.add_argument("--crop", type=int, default=crop)
    p.add_argument("--sigmas", default=sigmas, help=f"comma-separated noise levels (default {sigmas})")
    p.add_argument("--threads", type=int, default=1)


def cases_of(args: argparse.Namespace):
    """(sorted noise levels, :func:`cases`) chosen by the options of :func:`add_case_arguments`."""
    sigmas = sorted(float(s) for s in args.sigmas.split(","))
    return sigmas, cases(args.val, args.kernel_dir, args.images, args.kernels, args.crop)


def main(argv=None) -> int:
    import hashlib

    import torch

    from napari_fcnn_deblur.core.conditioned import NoiseMapCascade
    from napari_fcnn_deblur.io import models as model_io

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_case_arguments(p, images=3, kernels=2, crop=128, sigmas=DEFAULT_SIGMAS)
    p.add_argument("--out", type=Path, default=HERE / "results" / "default_model.json")
    p.add_argument("--write", action="store_true", help="store the table in the model file's metadata")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = args.model or model_io.noisemap_model_path()
    cascade = model_io.load_cascade(model)
    if not isinstance(cascade, NoiseMapCascade):
        p.error(f"{model} is not a noise-map cascade")
    sigmas, case_list = cases_of(args)
    print(f"{model}: {len(case_list)} cases ({', '.join(sorted({c[0] for c in case_list}))} × "
          f"{', '.join(sorted({c[1] for c in case_list}))}), {args.crop}² valid blur")
    table = measure(Path(model), sigmas, case_list)
    table.update(
        cases=f"{len({c[0] for c in case_list})} Set12 images × {len({c[1] for c in case_list})} Levin kernels "
              f"({', '.join(sorted({c[0] for c in case_list}))}; {', '.join(sorted({c[1] for c in case_list}))}), "
              f"centre crops, {args.crop}×{args.crop} valid blur, true noise level",
        measured_by="benchmarks/default_model.py",
        weights_sha256=hashlib.sha256(b"".join(
            t.numpy().tobytes() for _, t in sorted(model_io.state_tensors(cascade).items()))).hexdigest()[:16],
        date=datetime.date.today().isoformat(),
    )
    print(table_markdown(table))
    save_json(args.out, table)
    print(f"wrote {args.out}")
    if args.write:
        cascade.metadata[model_io.DEFAULT_RULE_KEY] = json.dumps(table, separators=(",", ":"))
        model_io.save_cascade(cascade, model)
        print(f"stored the table in {model} (metadata {model_io.DEFAULT_RULE_KEY!r})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
