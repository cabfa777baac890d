#!/usr/bin/env python
"""Quality benchmark: the learned cascade against classical baselines and the authors' release.

Protocol (also written into the report):

1. Each grey evaluation image (``--val``, values in [0, 1]) is blurred by
   *valid* convolution with each kernel (``--kernels``; even sides padded with
   a zero row/column at the end, normalised to sum 1), then Gaussian noise of
   s.d. σ (the level) is added with a fixed seed per (image, kernel, level).
2. Every method deblurs the same blurry image; its output is clipped to
   [0, 1] and compared with the matching crop of the sharp image (offset
   ``kernel.shape // 2``) over the whole output: PSNR and SSIM from
   ``skimage.metrics`` with ``data_range=1``.
3. Methods: our cascade after 0 (initial deconvolution) … n stages (one
   ``deblur_stages`` run gives all); the authors' released cascades
   (``load_matconvnet_cascade``, run by the same engine); Wiener,
   Richardson–Lucy and the hyper-Laplacian prior (α = 2/3) of
   :mod:`napari_fcnn_deblur.baselines.classical`, each with its parameter tuned per
   noise level and kernel family on a separate tuning image.
4. A second table repeats the evaluation with Gaussian PSFs.

Results are cached per (level, method, image, kernel) in a JSON file, so an
interrupted run resumes where it stopped; the report replaces the
``## Quality`` section of the output markdown file (other sections are kept).

Quick check::

    python benchmarks/quality.py --val ../shared/data/val/set12 \\
        --kernels ../shared/data/kernels/levin \\
        --reference ../shared/reference/fcnn-cvpr17-official/models \\
        --out docs/benchmarks.md --levels 0.01 --max-images 2 --max-kernels 2
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import sys
import time
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_CACHE = HERE / "results" / "quality_cache.json"
#: Appended to our cascades' cache keys: results computed by an older engine (padding up to an
#: FFT-friendly size, before 2026-11-26) are not reused for them.
ENGINE_TAG = "+pad-k"
SECTION = "## Quality"


# ----------------------------------------------------------------------------- inputs


def load_named_images(folder: Path, max_images: int | None) -> list[tuple[str, np.ndarray]]:
    """Grey float64 images in [0, 1], sorted by file name, as (name, image)."""
    from napari_fcnn_deblur.training.stagewise import load_image_folder

    names = sorted(
        p.name for p in Path(folder).iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
    )
    images = load_image_folder(folder)  # same sorting, same grey conversion as training
    pairs = list(zip(names, (im.astype(np.float64) for im in images), strict=True))
    return pairs[:max_images] if max_images else pairs


def odd_kernel(k: np.ndarray) -> np.ndarray:
    """Pad even sides with a zero row/column at the end and normalise to sum 1 (float64)."""
    k = np.asarray(k, np.float64)
    k = np.pad(k, ((0, 1 - k.shape[0] % 2), (0, 1 - k.shape[1] % 2)))
    return k / k.sum()


def load_named_kernels(folder: Path, max_kernels: int | None) -> list[tuple[str, np.ndarray]]:
    from napari_fcnn_deblur.training.stagewise import load_kernel_folder

    names = [
        p.stem
        for p in sorted(Path(folder).iterdir())
        if p.suffix == ".npy" or p.suffix.lower() in {".png", ".tif", ".tiff"}
    ]
    pairs = list(zip(names, (odd_kernel(k) for k in load_kernel_folder(folder)), strict=True))
    return pairs[:max_kernels] if max_kernels else pairs


def gaussian_kernels(sigmas) -> list[tuple[str, np.ndarray]]:
    from napari_fcnn_deblur.data.psf import gaussian_psf

    return [(f"gauss{s:g}", odd_kernel(gaussian_psf(s))) for s in sigmas]


def load_tuning_image(spec: str) -> tuple[str, np.ndarray]:
    """``skimage:NAME`` (a bundled scikit-image image, made grey) or a file path."""
    if spec.startswith("skimage:"):
        from skimage import color, data

        name = spec.split(":", 1)[1]
        im = getattr(data, name)()
        if im.ndim == 3:
            im = color.rgb2gray(im[..., :3])
        elif im.dtype == np.uint8:
            im = im / 255.0
        elif np.issubdtype(im.dtype, np.integer):
            im = im / float(np.iinfo(im.dtype).max)
        return spec, np.asarray(im, np.float64)
    import imageio.v3 as iio

    im = np.asarray(iio.imread(spec))
    scale = float(np.iinfo(im.dtype).max) if np.issubdtype(im.dtype, np.integer) else 1.0
    im = im.astype(np.float64) / scale
    if im.ndim == 3:
        im = im[..., :3] @ np.array([0.2989, 0.5870, 0.1140])
    return Path(spec).name, im


def make_case(sharp: np.ndarray, kernel: np.ndarray, level: float, image: str, kname: str, seed: int):
    """(blurry float32, aligned sharp crop float64): valid blur + seeded Gaussian noise."""
    from napari_fcnn_deblur.data.samples import blur_valid

    case_seed = (zlib.crc32(f"{image}|{kname}|{level:g}".encode()) + seed) % 2**32
    y, _ = blur_valid(sharp, kernel, level, seed=case_seed)
    oy, ox = kernel.shape[0] // 2, kernel.shape[1] // 2
    gt = sharp[oy : oy + y.shape[0], ox : ox + y.shape[1]]
    return y, gt


def file_digest(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        h.update(p.read_bytes())
    return h.hexdigest()[:10]


# ----------------------------------------------------------------------------- cache


class Cache:
    """JSON cache ``{"results": {key: [psnr, ssim, seconds]}, "tuning": {key: dict}}``, written atomically."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.data = {"results": {}, "tuning": {}}
        if self.path.is_file():
            self.data.update(json.loads(self.path.read_text()))
        self.dirty = False

    @staticmethod
    def key(level, method, image, kernel) -> str:
        return f"{level:g}|{method}|{image}|{kernel}"

    def get(self, level, method, image, kernel):
        return self.data["results"].get(self.key(level, method, image, kernel))

    def put(self, level, method, image, kernel, value) -> None:
        self.data["results"][self.key(level, method, image, kernel)] = [round(float(v), 6) for v in value]
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=0, sort_keys=True))
        os.replace(tmp, self.path)
        self.dirty = False


# ----------------------------------------------------------------------------- methods


def scores(est: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    est = np.clip(np.asarray(est, np.float64), 0.0, 1.0)
    return (
        float(peak_signal_noise_ratio(gt, est, data_range=1.0)),
        float(structural_similarity(gt, est, data_range=1.0)),
    )


class CascadeMethod:
    """A cascade run through the public ``deblur_stages``; one run yields every stage."""

    def __init__(self, label: str, tag: str, cascade, precision: str = "fp32"):
        self.label, self.tag, self.cascade, self.precision = label, tag, cascade, precision
        self.n = cascade.n_stages

    def keys(self) -> list[str]:
        return [f"{self.tag}:s{s}" for s in range(self.n + 1)]

    def run(self, y, kernel, gt, level) -> dict[str, tuple[float, float, float]]:
        from napari_fcnn_deblur.api import deblur_stages

        out = {}
        warm = deblur_stages(y, kernel, noise_level=level, iterations=0, device="cpu", model=self.cascade)
        next(warm)  # untimed: creates the FFT plans for this shape, so the order of the methods does not matter
        warm.close()
        t0 = time.perf_counter()
        for st in deblur_stages(y, kernel, noise_level=level, iterations=self.n, device="cpu", model=self.cascade,
                                precision=self.precision):
            elapsed = time.perf_counter() - t0
            out[f"{self.tag}:s{st.stage}"] = (*scores(st.image, gt), elapsed)
        return out

    def warm_up(self) -> None:
        from napari_fcnn_deblur.api import deblur

        deblur(
            np.full((48, 48), 0.5, np.float32), np.ones((3, 3)) / 9, iterations=self.n, device="cpu", model=self.cascade
        )


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


# ----------------------------------------------------------------------------- report


def fmt(v, digits):
    return "—" if v is None else f"{v:.{digits}f}"


def mean_of(cache: Cache, level, method, cases):
    vals = [cache.get(level, method, im, k) for im, k in cases]
    got = [v for v in vals if v is not None]
    if not got:
        return None
    a = np.array(got)
    return {"psnr": a[:, 0].mean(), "ssim": a[:, 1].mean(), "sec": a[:, 2].mean(), "n": len(got), "of": len(vals)}


def replace_section(path: Path, body: str) -> None:
    sys.path.insert(0, str(HERE))
    from markdown_sections import replace_section as _replace

    _replace(path, body, SECTION)


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--val", required=True, type=Path, help="folder of sharp evaluation images (e.g. Set12)")
    ap.add_argument("--kernels", required=True, type=Path, help="folder of blur kernels (.npy/.png, e.g. Levin et al.)")
    ap.add_argument(
        "--reference", type=Path, default=None, help="the authors' release (models/ folder with noise0.0X/)"
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=Path("docs/benchmarks.md"),
        help="markdown file; its '## Quality' section is replaced",
    )
    ap.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"JSON result cache (default {DEFAULT_CACHE.relative_to(HERE.parent)})",
    )
    ap.add_argument("--levels", type=float, nargs="+", default=[0.01, 0.03, 0.05], help="noise s.d. on [0, 1]")
    ap.add_argument("--max-images", type=int, default=None, help="only the first N images (sorted by name)")
    ap.add_argument("--max-kernels", type=int, default=None, help="only the first N kernels (sorted by name)")
    ap.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="folder with fcnn_noise0.0X.safetensors to test (default: the shipped models)",
    )
    ap.add_argument(
        "--tuning-image",
        default="skimage:astronaut",
        help="image for tuning the baselines, not in the evaluation set: a path or skimage:NAME (default skimage:astronaut, grey)",
    )
    ap.add_argument(
        "--gaussian-sigmas",
        type=float,
        nargs="*",
        default=[1.5, 3.0],
        help="Gaussian PSF σ (px) of the second table; none to skip",
    )
    ap.add_argument("--hl-lambdas", type=float, nargs="+", default=None, help="tuning grid of the hyper-Laplacian λ")
    ap.add_argument("--wiener-balances", type=float, nargs="+", default=None, help="tuning grid of the Wiener balance")
    ap.add_argument(
        "--rl-iterations", type=int, nargs="+", default=None, help="tuning grid of the Richardson–Lucy iteration count"
    )
    ap.add_argument("--seed", type=int, default=0, help="noise seed offset")
    ap.add_argument("--bf16", action="store_true", help="also run our cascade with bf16 networks (precision='bf16')")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    import torch

    from napari_fcnn_deblur.baselines import classical as bl
    from napari_fcnn_deblur.io.models import load_cascade, shipped_model_path

    if args.threads:
        torch.set_num_threads(args.threads)
    images = load_named_images(args.val, args.max_images)
    levin = load_named_kernels(args.kernels, args.max_kernels)
    gauss = gaussian_kernels(args.gaussian_sigmas or [])
    tune_name, tune_img = load_tuning_image(args.tuning_image)
    grids = {
        "lambdas": tuple(args.hl_lambdas or bl.HL_LAMBDAS),
        "balances": tuple(args.wiener_balances or bl.WIENER_BALANCES),
        "rl_iterations": tuple(args.rl_iterations or bl.RL_ITERATIONS),
    }
    cache = Cache(args.cache)
    families = [("kernels", levin)] + ([("gaussian", gauss)] if gauss else [])
    info: dict[float, dict] = {}

    for level in args.levels:
        # ---- cascades
        methods: list[tuple[str, CascadeMethod | str]] = []
        model_path = (
            (args.model_dir / f"fcnn_noise{level:.2f}.safetensors") if args.model_dir else shipped_model_path(level)
        )
        if model_path.is_file():
            digest = file_digest([model_path])
            ours = CascadeMethod("ours", f"ours@{digest}{ENGINE_TAG}", load_cascade(model_path))
            methods.append(("ours", ours))
            if args.bf16:
                methods.append(("ours-bf16", CascadeMethod("ours-bf16", f"ours-bf16@{digest}{ENGINE_TAG}",
                                                           ours.cascade, precision="bf16")))
        else:
            methods.append(("ours", "not installed"))
        released = "not available"
        if args.reference is not None:
            rdir = None
            for cand in (args.reference / f"noise{level:.2f}", args.reference / "models" / f"noise{level:.2f}"):
                if cand.is_dir():
                    rdir = cand
            if rdir is not None:
                from napari_fcnn_deblur.io.matconvnet import load_matconvnet_cascade

                released = CascadeMethod(
                    "released", f"released@{file_digest(rdir.glob('*.mat'))}{ENGINE_TAG}", load_matconvnet_cascade(rdir)
                )
        methods.append(("released", released))
        info[level] = {"model": str(model_path), "methods": methods, "tuning": {}}
        for _, m in methods:
            if isinstance(m, CascadeMethod):
                m.warm_up()

        for fam, kernels in families:
            if not kernels:
                continue
            # ---- tuning (cached)
            tkey = json.dumps([level, fam, tune_name, [k for k, _ in kernels], args.seed, grids], sort_keys=True)
            tuned = cache.data["tuning"].get(tkey)
            if tuned is None:
                print(
                    f"[σ={level:g}] tuning the baselines on {tune_name} ({fam}: {len(kernels)} kernels) …", flush=True
                )
                t0 = time.perf_counter()
                tuned = bl.tune_baselines(
                    tune_img,
                    [k for _, k in kernels],
                    level,
                    grids["lambdas"],
                    grids["balances"],
                    grids["rl_iterations"],
                    seed=args.seed,
                )
                tuned = json.loads(json.dumps(tuned))  # str keys, as stored
                cache.data["tuning"][tkey] = tuned
                cache.dirty = True
                cache.save()
                print(
                    f"    λ={tuned['hl_lambda']:g}, balance={tuned['wiener_balance']:g}, "
                    f"RL iterations={tuned['rl_iterations']} ({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
            info[level]["tuning"][fam] = tuned
            lam, bal, nrl = tuned["hl_lambda"], tuned["wiener_balance"], int(tuned["rl_iterations"])
            baselines = [
                (f"wiener:{bal:g}", lambda y, k, b=bal: bl.wiener(y, k, b)),
                (f"rl:{nrl}", lambda y, k, n=nrl: bl.richardson_lucy(y, k, n)),
                (f"hl:{lam:g}", lambda y, k, la=lam: bl.hyper_laplacian(y, k, la)),
            ]
            # ---- evaluation
            for iname, sharp in images:
                for kname, k in kernels:
                    todo_cascades = [
                        m
                        for _, m in methods
                        if isinstance(m, CascadeMethod)
                        and any(cache.get(level, key, iname, kname) is None for key in m.keys())
                    ]
                    todo_base = [(key, fn) for key, fn in baselines if cache.get(level, key, iname, kname) is None]
                    need_input = cache.get(level, "input", iname, kname) is None
                    if not (todo_cascades or todo_base or need_input):
                        continue
                    y, gt = make_case(sharp, k, level, iname, kname, args.seed)
                    if need_input:
                        cache.put(level, "input", iname, kname, (*scores(y, gt), 0.0))
                    for m in todo_cascades:
                        for key, val in m.run(y, k, gt, level).items():
                            cache.put(level, key, iname, kname, val)
                    for key, fn in todo_base:
                        est, sec = timed(fn, y, k)
                        cache.put(level, key, iname, kname, (*scores(est, gt), sec))
                    cache.save()
                    print(f"[σ={level:g}] {iname} × {kname} done", flush=True)

    body = report(args, images, families, cache, info, tune_name, grids)
    print(body)
    replace_section(args.out, body)
    print(f"wrote the '{SECTION}' section of {args.out}; cache {args.cache}")
    return 0


def _method_rows(level, fam, info):
    """[(row label, cache method key or None, note)] for one level and kernel family."""
    rows = [("Blurry input (no deblurring)", "input", None)]
    for kind, m in info[level]["methods"]:
        name = {
            "ours": "Ours (this package)",
            "ours-bf16": "Ours (this package), bf16 networks",
        }.get(kind, "Released cascade (Zhang et al., via load_matconvnet_cascade)")
        if isinstance(m, CascadeMethod):
            stages = range(m.n + 1) if fam == "kernels" else [m.n]
            for s in stages:
                rows.append((f"{name}, {'initial deconv.' if s == 0 else f'stage {s}'}", f"{m.tag}:s{s}", None))
        else:
            rows.append((name, None, m))
    t = info[level]["tuning"][fam]
    rows.append((f"Wiener (balance {t['wiener_balance']:g})", f"wiener:{t['wiener_balance']:g}", None))
    rows.append((f"Richardson–Lucy ({int(t['rl_iterations'])} it.)", f"rl:{int(t['rl_iterations'])}", None))
    rows.append((f"Hyper-Laplacian α=2/3 (λ {t['hl_lambda']:g})", f"hl:{t['hl_lambda']:g}", None))
    return rows


def _generic_label(label: str) -> str:
    return re.sub(r" \((balance|λ) [^)]*\)| \(\d+ it\.\)", "", label)


def report(args, images, families, cache, info, tune_name, grids) -> str:
    import torch

    import napari_fcnn_deblur

    levels = args.levels
    kern = dict(families)
    out = [SECTION, ""]
    out.append(
        f"Generated by `benchmarks/quality.py` on {datetime.date.today().isoformat()} "
        f"({platform.machine()}, {platform.system()}, Python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch CPU threads; napari-fcnn-deblur {getattr(napari_fcnn_deblur, '__version__', '?')})."
    )
    out.append("")
    out.append("Command: `python benchmarks/quality.py " + " ".join(_quote(a) for a in args.argv) + "`")
    out.append("")
    out.append("### Protocol")
    out.append("")
    n_img, n_k = len(images), len(kern.get("kernels", []))
    out += [
        f"- Sharp images: {n_img} grey images from `{args.val.name}` ({', '.join(n for n, _ in images)}), values in [0, 1].",
        f"- Kernels: {n_k} from `{args.kernels.name}` ({', '.join(n for n, _ in kern.get('kernels', []))}); even sides padded "
        "with a zero row/column at the end, normalised to sum 1. "
        f"{n_img} × {n_k} = {n_img * n_k} blurred images per noise level.",
        "- Blur: *valid* convolution (`sample_images.blur_valid`, no boundary assumption), then i.i.d. Gaussian noise of "
        f's.d. σ on the [0, 1] scale, seed `crc32("image|kernel|σ") + {args.seed}` (fixed per case).',
        "- Scores: output clipped to [0, 1], compared over the whole output with the matching crop of the sharp image "
        "(offset `kernel.shape // 2`): PSNR and SSIM of `skimage.metrics` with `data_range=1` (SSIM defaults: 7×7 "
        "uniform window). Means over all images × kernels.",
        "- All methods get the same blurry image and the same boundary handling (replicate padding by the kernel size + "
        "MATLAB-style edge taper, crop back): the cascades through the engine, the baselines through "
        "`baselines.padded_problem`.",
        "- Our cascade and the authors' released cascades (`matconvnet_import.load_matconvnet_cascade`, converted "
        "weights run by this package's engine) go through the public `deblur_stages` on the CPU; one run gives the "
        "initial deconvolution and every stage. Seconds are cumulative up to that stage, per image, wall clock (after an untimed warm-up on the same shape).",
        f"- Baselines (`napari_fcnn_deblur.baselines.classical`, numpy/scikit-image and the engine's spectral core in float64): Wiener "
        "(`skimage.restoration.wiener`, Laplacian regulariser), Richardson–Lucy (`skimage.restoration.richardson_lucy`, "
        "input clipped at 0), hyper-Laplacian prior α = 2/3 (Krishnan & Fergus 2009; β from 1 × 2√2 while < 256, one "
        "inner iteration, exact w-step). Their parameter is tuned per noise level and kernel family by grid search "
        f"on a separate tuning image (`{tune_name}`, not in the evaluation set) blurred by the same kernels: "
        f"λ ∈ {{{', '.join(f'{v:g}' for v in grids['lambdas'])}}}, balance ∈ "
        f"{{{', '.join(f'{v:g}' for v in grids['balances'])}}}, iterations ∈ "
        f"{{{', '.join(str(v) for v in grids['rl_iterations'])}}}; best mean PSNR wins.",
        "- Timing is indicative only (shared machine; the cascades use torch's threads, the baselines one core).",
        "",
    ]
    # main table
    if "kernels" in kern:
        out.append(f"### Motion blur: {args.val.name} × {args.kernels.name} kernels")
        out.append("")
        hdr = "| Method | " + " | ".join(f"σ={lv:g} PSNR | SSIM | s/img" for lv in levels) + " |"
        out.append(hdr)
        out.append("|---|" + "---:|---:|---:|" * len(levels))
        cases = [(i, k) for i, _ in images for k, _ in kern["kernels"]]
        labels, per_level = _collect(levels, "kernels", info)
        for label in labels:
            cells = []
            for lv in levels:
                entry = per_level[lv].get(label)
                if entry is None:
                    cells += ["—"] * 3
                elif entry[0] is None:
                    cells += [entry[1], "", ""]
                else:
                    m = mean_of(cache, lv, entry[0], cases)
                    if m is None:
                        cells += ["—"] * 3
                    else:
                        star = "" if m["n"] == m["of"] else f" ({m['n']}/{m['of']})"
                        cells += [
                            fmt(m["psnr"], 2) + star,
                            fmt(m["ssim"], 4),
                            fmt(m["sec"], 2) if entry[0] != "input" else "",
                        ]
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("")
    if "gaussian" in kern:
        gk = kern["gaussian"]
        out.append(
            f"### Gaussian PSFs ({', '.join('σ_PSF = ' + n[5:] + ' px' for n, _ in gk)}): {args.val.name}, final stage"
        )
        out.append("")
        cols = [(lv, kn) for lv in levels for kn, _ in gk]
        out.append("| Method | " + " | ".join(f"σ={lv:g}, PSF {kn[5:]} px: PSNR / SSIM" for lv, kn in cols) + " |")
        out.append("|---|" + "---:|" * len(cols))
        labels, per_level = _collect(levels, "gaussian", info)
        for label in labels:
            cells = []
            for lv, kn in cols:
                entry = per_level[lv].get(label)
                if entry is None:
                    cells.append("—")
                elif entry[0] is None:
                    cells.append(entry[1])
                else:
                    m = mean_of(cache, lv, entry[0], [(i, kn) for i, _ in images])
                    cells.append("—" if m is None else f"{m['psnr']:.2f} / {m['ssim']:.4f}")
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("")
    # tuned parameters
    out.append("### Tuned baseline parameters")
    out.append("")
    out.append("| σ | kernels | Wiener balance | RL iterations | HL λ |")
    out.append("|---:|---|---:|---:|---:|")
    for lv in levels:
        for fam, t in info[lv]["tuning"].items():
            out.append(
                f"| {lv:g} | {args.kernels.name if fam == 'kernels' else 'Gaussian'} | {t['wiener_balance']:g} | {int(t['rl_iterations'])} | {t['hl_lambda']:g} |"
            )
    out.append("")
    for lv in levels:
        for kind, m in info[lv]["methods"]:
            if kind == "ours":
                src = (
                    f"`{Path(info[lv]['model']).name}` ({m.tag.split('@')[1]})"
                    if isinstance(m, CascadeMethod)
                    else f"not installed (`{info[lv]['model']}`)"
                )
                out.append(f"- σ={lv:g}: our cascade {src}.")
    out.append("")
    return "\n".join(out)


def _collect(levels, fam, info):
    """Row labels (generic, in order) and per level {label: (cache key or None, note)}."""
    labels: list[str] = []
    per_level = {}
    for lv in levels:
        d = {}
        for label, key, note in _method_rows(lv, fam, info):
            g = _generic_label(label)
            d[g] = (key, note)
            if g not in labels:
                labels.append(g)
        per_level[lv] = d
    return labels, per_level


def _quote(a: str) -> str:
    return a if re.fullmatch(r"[\w./:@=+-]+", a) else repr(a)


if __name__ == "__main__":
    sys.exit(main())
