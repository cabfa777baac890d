#!/usr/bin/env python
"""Volumetric speed and memory: the volume cascade against 3D Richardson–Lucy, and peak memory by volume size.

Protocol (also written into the report):

1. Data: benchmark volume 0 of ``benchmarks/volumetric.py`` (held-out ``hollow_nuclei`` + one
   training structure, seed ≥ 10⁶) made at 64 × 256 × 256 voxels, the widefield PSF of that
   benchmark (NA 1.2 water, 0.25 × 0.1 × 0.1 µm, 15 × 21 × 21 box), 100 photons, 2 e⁻ read noise,
   100 ADU offset, uint16 (its ``case``).  Other sizes of the memory table are crops (smaller) or
   mirrored tilings (larger) of that stack: camera-like uint16 data of the same statistics.
2. Every measurement runs in a fresh child process (``--threads`` torch and scipy.fft threads,
   niced as the caller runs it) that loads the stack and the PSF from ``.npy`` files and reports its
   peak resident memory (``VmHWM``, :func:`scale.peak_rss`: the interpreter, torch, the input and
   the output included), its resident memory before the call, and the wall time of the call.
3. Speed (one 64 × 256 × 256 volume, side by side in one run): ``deblur(stack, psf,
   noise_level="auto", precision=P)`` with the shipped volume cascade (or ``--model FILE``), 3 stages, for P = fp32 and
   bf16; 3D Richardson–Lucy as in ``benchmarks/volumetric.py`` (``rl_iterates``: skimage's update,
   edge padding), its iteration count chosen by PSNR against the phantom over the counts of that
   benchmark (an oracle), then timed in its own child for exactly that count; and
   ``skimage.restoration.richardson_lucy`` itself (no padding, ``clip=False``) on the
   offset-subtracted stack / p in float64 and in float32 (its arithmetic follows the input's
   dtype), each at its own oracle count (swept with ``rl_iterates(pad=False, dtype=...)``, which
   equals skimage's function step for step).  The target compares with the fastest of them.
   Scores: PSNR / SSIM in phantom units as there.
4. Memory: ``VolumeRun.prepare(stack, psf, "auto", iterations=S, device="cpu").deblur(stack)``
   (fp32) for each ``--sizes`` entry and stage count S (1 stage for the large volumes: the peak is
   one stage's, the same at 1 and 3 stages, which the table shows for the small ones).

5. GPU (``--device cuda``, issue 13: "report the time for a 1024×1024×100 volume"): benchmark volume 0
   made at ``--gpu-size`` (default 100 × 1024 × 1024), ``deblur(stack, psf, noise_level="auto",
   device=..., precision=P)`` for P = fp32 and bf16 in a fresh child each: the first call (CUDA start,
   cuFFT plans, weights to the device included) and a second call on the same data, both to the last
   synchronisation, the device's peak allocated memory, and PSNR over the whole volume (no SSIM: 10⁸
   voxels).  The CPU rows are not run then.

Results are cached in ``benchmarks/results/volume_scale.json`` (a run adds to them); the report
replaces the ``## Volumetric speed and memory`` section of ``--out``.

    python benchmarks/volume_scale.py --threads 1
    python benchmarks/volume_scale.py --threads 1 --skip-speed --sizes 64x1024x1024:1   # one more row
    python benchmarks/volume_scale.py --device cuda                 # the GPU rows (scripts/gpu_session.sh volume-speed)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from report_files import load_json, replace_section, save_json  # noqa: E402
from scale import peak_rss  # noqa: E402
from volumetric import OFFSET, RL_ITERATIONS, case, psfs, rl_iterates, rl_sweep, scores  # noqa: E402

SECTION = "## Volumetric speed and memory"
SPEED_SHAPE = (64, 256, 256)
#: Input dtypes of skimage's own richardson_lucy in the speed comparison (its arithmetic follows them).
SKIMAGE_DTYPES = ("float64", "float32")
PHOTONS = 100.0
GIB = 1024**3
#: Default memory rows: (Z, Y, X), stages.
SIZES = ("64x128x128:1", "64x128x128:3", "64x256x256:1", "64x512x512:1")
#: The GPU row's volume (Z, Y, X): issue 13's 1024 × 1024 × 100.
GPU_SHAPE = (100, 1024, 1024)


# ----------------------------------------------------------------------------- inputs


def stack_of(shape: tuple[int, int, int], base: np.ndarray) -> np.ndarray:
    """``base`` (Z, Y, X) cropped or mirror-tiled in Y and X to ``shape`` (Z must match)."""
    if shape[0] != base.shape[0]:
        raise ValueError(f"sizes must keep the {base.shape[0]} planes of the benchmark stack, got {shape}")
    out = base
    while out.shape[1] < shape[1]:
        out = np.concatenate([out, out[:, ::-1]], axis=1)
    while out.shape[2] < shape[2]:
        out = np.concatenate([out, out[:, :, ::-1]], axis=2)
    return np.ascontiguousarray(out[:, : shape[1], : shape[2]])


def parse_size(text: str) -> tuple[tuple[int, int, int], int]:
    """``"64x512x512:1"`` → ((64, 512, 512), 1 stage); no ``:S`` means 3 stages."""
    dims, _, stages = text.partition(":")
    shape = tuple(int(v) for v in dims.lower().split("x"))
    if len(shape) != 3:
        raise argparse.ArgumentTypeError(f"a size is ZxYxX[:stages], got {text!r}")
    return shape, int(stages or 3)


# ----------------------------------------------------------------------------- children


def _threads(n: int) -> None:
    import torch

    if n:
        torch.set_num_threads(n)


def child_main(args) -> int:
    """One measurement in this fresh process; prints one JSON line."""
    import scipy.fft

    _threads(args.threads)
    stack = np.load(args.stack)
    psf = np.load(args.psf)
    before = peak_rss()
    rec: dict = {}
    with scipy.fft.set_workers(args.threads or os.cpu_count()):
        t0 = time.perf_counter()
        if args.child == "rl":
            out = next(x for it, x in rl_iterates(stack, psf, PHOTONS) if it == args.rl_iterations)  # phantom units
        elif args.child == "skimage":
            from skimage.restoration import richardson_lucy

            dtype = np.dtype(args.dtype)
            y = np.clip((stack.astype(np.float64) - OFFSET) / PHOTONS, 0, None).astype(dtype)
            out = richardson_lucy(y, (psf / psf.sum()).astype(dtype), num_iter=args.rl_iterations, clip=False)
        elif args.device != "cpu":
            out = gpu_calls(stack, psf, args, rec)
        else:
            from napari_fcnn_deblur.engine.volume import VolumeRun

            run = VolumeRun.prepare(stack, psf, "auto", iterations=args.iterations, device="cpu",
                                    precision=args.precision, model=args.model)
            rec["tile_size"] = run.tile_size(stack.shape)
            out = run.deblur(stack)
        rec["sec"] = time.perf_counter() - t0
    rec.update(peak_rss=peak_rss(), rss_before=before, finite=bool(np.all(np.isfinite(out))))
    if args.output:
        np.save(args.output, np.asarray(out, np.float32))
    print(json.dumps(rec))
    return 0


def gpu_calls(stack: np.ndarray, psf: np.ndarray, args, rec: dict) -> np.ndarray:
    """The public ``deblur`` on a GPU twice (the first call starts CUDA and plans the FFTs), each timed to its
    last synchronisation; the device's peak allocated memory.  Fills ``rec``; returns the second result."""
    import torch

    from napari_fcnn_deblur import deblur

    dev = torch.device(args.device)
    torch.cuda.set_device(dev)  # initialises CUDA for cuda:N too (the peak-memory calls do not)
    out = None
    for name in ("first_sec", "second_sec"):
        torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        out = deblur(stack, psf, "auto", iterations=args.iterations, device=args.device, precision=args.precision,
                     model=args.model)
        torch.cuda.synchronize(dev)
        rec[name] = time.perf_counter() - t0
    rec["gpu_peak"] = torch.cuda.max_memory_allocated(dev)
    rec["gpu_name"] = torch.cuda.get_device_name(dev)
    return out


def run_child(work: Path, stack: np.ndarray, psf: np.ndarray, threads: int, *extra: str,
              output: Path | None = None) -> dict:
    np.save(work / "stack.npy", stack)
    np.save(work / "psf.npy", psf)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *extra, "--stack", str(work / "stack.npy"),
           "--psf", str(work / "psf.npy"), "--threads", str(threads)]
    if output is not None:
        cmd += ["--output", str(output)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    (work / "stack.npy").unlink()
    if r.returncode != 0:
        raise RuntimeError(f"child {extra} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- parent


def padded_voxels(shape, psf_shape) -> int:
    return int(np.prod(padding_geometry_shape(shape, psf_shape)))


def default_precisions() -> tuple[str, ...]:
    """fp32, and bf16 where this CPU computes it natively (emulated bf16 is several times slower)."""
    import torch

    from napari_fcnn_deblur.engine.devices import has_fast_bf16

    return ("fp32", "bf16") if has_fast_bf16(torch.device("cpu")) else ("fp32",)


def model_info(model: str | None) -> dict:
    """The volume cascade measured: its file, digest, width and multiply-adds per padded voxel and stage
    (three directions, each one FCNN pass)."""
    from napari_fcnn_deblur.io.models import file_digest, load_cascade, volume_model_path

    path = Path(model) if model else volume_model_path()
    cascade = load_cascade(path)
    pair = cascade.denoisers[0]
    macs = 2 * pair.lateral.macs_per_pixel + pair.axial.macs_per_pixel  # x and y on XY planes, z on YZ slices
    return {"file": path.name, "digest": file_digest(path)[:10], "width": pair.width, "macs_per_voxel_stage": macs,
            "network_margin": cascade.network_margin}


def network_voxels(shape, psf_shape, margin: int | None) -> float:
    """Voxels per direction the networks run on, averaged over the three directions (the whole padded grid
    without a margin; with one, the volume ± margin plus the engine's halo along the axes each network
    convolves: :meth:`napari_fcnn_deblur.engine.tiles.TiledNetworks._boxes`)."""
    from napari_fcnn_deblur.engine.tiles import REGION_HALO

    grid = padding_geometry_shape(shape, psf_shape)
    if margin is None:
        return float(np.prod(grid))
    region = [min(n + 2 * margin, g) for n, g in zip(shape, grid)]
    wide = [min(r + 2 * REGION_HALO, g) for r, g in zip(region, grid)]
    lateral = region[0] * wide[1] * wide[2]
    axial = wide[0] * wide[1] * region[2]
    return (2 * lateral + axial) / 3


def padding_geometry_shape(shape, psf_shape) -> tuple[int, ...]:
    from napari_fcnn_deblur.core.spectral import padding_geometry

    return padding_geometry(shape, psf_shape).shape


def measure(cache_path: Path, sizes, threads: int, speed: bool, speed_shape=SPEED_SHAPE, precisions=("fp32",),
            log=print, model: str | None = None) -> dict:
    cache = load_json(cache_path)
    extra_model = ("--model", str(model)) if model else ()
    info = model_info(model)

    def save():
        save_json(cache_path, cache)

    psf = psfs()["widefield"]
    stack, sharp = case(0, "widefield", PHOTONS, psf, tuple(speed_shape))
    meta = {"date": datetime.date.today().isoformat(), "started": datetime.datetime.now().strftime("%H:%M"),
            "threads": threads,
            "processor": platform.processor() or platform.machine(),
            "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if speed:
            rec = {"shape": list(speed_shape), "run": meta, "blurry": scores((stack - OFFSET) / PHOTONS, sharp),
                   "model": info}
            sweep = rl_sweep(stack, psf, PHOTONS, sharp)
            best = max(sweep, key=lambda k: sweep[k][0])
            rl = run_child(work, stack, psf, threads, "rl", "--rl-iterations", str(best), output=work / "rl.npy")
            rec["rl"] = {**rl, "iterations": best, "scores": scores(np.load(work / "rl.npy"), sharp)}
            log(f"RL {best} it: {rl['sec']:.1f} s, {rl['peak_rss'] / GIB:.2f} GiB, {rec['rl']['scores'][0]:.2f} dB")
            for dtype in SKIMAGE_DTYPES:
                sweep = rl_sweep(stack, psf, PHOTONS, sharp, pad=False, dtype=np.dtype(dtype))
                n = max(sweep, key=lambda k: sweep[k][0])
                sk = run_child(work, stack, psf, threads, "skimage", "--dtype", dtype, "--rl-iterations", str(n),
                               output=work / "sk.npy")
                rec[f"skimage_{dtype}"] = {**sk, "iterations": n, "scores": scores(np.load(work / "sk.npy"), sharp)}
                log(f"skimage {dtype} {n} it: {sk['sec']:.1f} s, {rec[f'skimage_{dtype}']['scores'][0]:.2f} dB")
            for precision in precisions:
                r = run_child(work, stack, psf, threads, "ours", "--precision", precision, "--iterations", "3",
                              *extra_model, output=work / "ours.npy")
                r["scores"] = scores((np.load(work / "ours.npy") - OFFSET) / PHOTONS, sharp)
                rec[precision] = r
                log(f"ours {precision}: {r['sec']:.1f} s, {r['peak_rss'] / GIB:.2f} GiB, {r['scores'][0]:.2f} dB")
            rec["native_bf16"] = "bf16" in default_precisions()
            old = cache.get("speed", {})
            if old.get("shape") == rec["shape"] and old.get("model") == rec["model"]:
                rec = {**old, **rec}
            cache["speed"] = rec
            cache.setdefault("speed_runs", []).append(speed_summary(rec))
            save()
        for shape, stages in sizes:
            key = f"{shape[0]}x{shape[1]}x{shape[2]}:{stages}:{info['file']}@{info['digest']}"
            r = run_child(work, stack_of(shape, stack), psf, threads, "ours", "--precision", "fp32",
                          "--iterations", str(stages), *extra_model)
            r.update(shape=list(shape), stages=stages, padded_voxels=padded_voxels(shape, psf.shape), run=meta,
                     model=info)
            cache.setdefault("memory", {})[key] = r
            save()
            log(f"{key}: {r['peak_rss'] / GIB:.2f} GiB peak, {r['sec']:.0f} s")
    return cache


def gpu_psnr(est_units: np.ndarray, sharp: np.ndarray) -> float:
    """PSNR (phantom units, data range 1) of a GPU row: the whole volume (SSIM of 10⁸ voxels in float64
    would take minutes of the lent machine's time)."""
    mse = np.mean((np.asarray(est_units, np.float64) - sharp) ** 2)
    return float(10 * np.log10(1.0 / mse))


def measure_gpu(cache_path: Path, shape, stages: int, device: str, precisions, log=print,
                model: str | None = None) -> dict:
    """The GPU rows (protocol 5): one fresh child per precision on benchmark volume 0 at ``shape``, ``stages``
    stages; the cache is saved after every row."""
    cache = load_json(cache_path)
    extra_model = ("--model", str(model)) if model else ()
    psf = psfs()["widefield"]
    t = time.perf_counter()
    stack, sharp = case(0, "widefield", PHOTONS, psf, tuple(shape))
    log(f"GPU volume {shape} made in {time.perf_counter() - t:.0f} s")
    rec = {"shape": list(shape), "stages": stages, "device": device, "model": model_info(model), "rows": {},
           "run": {"date": datetime.date.today().isoformat(), "started": datetime.datetime.now().strftime("%H:%M"),
                   "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
           "blurry_psnr": gpu_psnr((stack - OFFSET) / PHOTONS, sharp)}
    cache["gpu"] = rec
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for precision in precisions:
            r = run_child(work, stack, psf, 0, "ours", "--device", device, "--precision", precision,
                          "--iterations", str(stages), *extra_model, output=work / "ours.npy")
            r["psnr"] = gpu_psnr((np.load(work / "ours.npy") - OFFSET) / PHOTONS, sharp)
            rec["rows"][precision] = r
            save_json(cache_path, cache)
            log(f"GPU {precision}: first call {r['first_sec']:.1f} s, second {r['second_sec']:.1f} s, "
                f"{r['gpu_peak'] / GIB:.1f} GiB on the device, {r['psnr']:.2f} dB")
    return cache


def gpu_report(cache: dict) -> list[str]:
    """Lines of the GPU part: the measured rows, or how to measure them."""
    g = cache.get("gpu")
    size = " × ".join(str(v) for v in GPU_SHAPE)
    if not g:
        return [f"GPU ({size}): not measured yet — no GPU has been lent to this project; "
                "`scripts/gpu_session.sh volume-speed OUT` measures it (`benchmarks/volume_scale.py --device cuda`).",
                ""]
    size = " × ".join(str(v) for v in g["shape"])
    name = next(iter(g["rows"].values()), {}).get("gpu_name", g["device"])
    lines = [f"GPU, {size} (uint16 camera stack, benchmark volume 0 made at that size; {name}, "
             f"{g['run']['date']}; `deblur(..., noise_level=\"auto\", device=\"{g['device']}\")`, "
             f"`{g['model']['file']}`, {g.get('stages', 3)} stages; PSNR over the whole volume):", "",
             "| precision | first call (s, CUDA start included) | second call (s) | peak GPU memory (GiB) | PSNR |",
             "|---|---|---|---|---|",
             f"| blurry | | | | {g['blurry_psnr']:.2f} |"]
    for p, r in g["rows"].items():
        lines.append(f"| {p} | {r['first_sec']:.1f} | {r['second_sec']:.1f} | {r['gpu_peak'] / GIB:.2f} | "
                     f"{r['psnr']:.2f} |")
    return lines + [""]


def speed_summary(rec: dict) -> dict:
    """One speed run in a line of the history: its start, RL's and the cascade's seconds."""
    return {"run": rec["run"], "shape": rec["shape"], "rl_iterations": rec["rl"]["iterations"],
            "rl_sec": rec["rl"]["sec"], "model": rec.get("model"),
            **{f"{p}_sec": rec[p]["sec"] for p in ("fp32", "bf16") if p in rec}}


def _margin_note(model: dict | None) -> str:
    m = (model or {}).get("network_margin")
    return "" if m is None else f", margin {m}"


def _load(meta: dict) -> str:
    load = "not recorded" if meta.get("load") is None else f"{meta['load']:.1f}"
    return f"{meta.get('started', '?')}: {load}"


def report(cache: dict) -> str:
    runs = [cache["speed"]["run"]] if "speed" in cache else []
    for r in cache.get("memory", {}).values():
        if r["run"] not in runs:
            runs.append(r["run"])
    meta = runs[0] if runs else {}
    loads = ", ".join(_load(m) for m in runs)
    lines = [
        SECTION,
        "",
        f"*{meta.get('date', '?')}, {meta.get('processor', '?')}, {meta.get('cpus', '?')} logical CPUs shared with "
        f"other jobs, {meta.get('threads', '?')} thread(s) per process, {len(runs)} run(s) of "
        f"`benchmarks/volume_scale.py` (start time: 1-min load average then — {loads}).*",
        "",
        "Protocol: benchmark volume 0 of `benchmarks/volumetric.py` made at 64 × 256 × 256 voxels (widefield PSF "
        "15 × 21 × 21, 100 photons, 2 e⁻ read noise, 100 ADU offset, uint16); other sizes are crops or "
        "mirrored tilings of it. Every number comes from a fresh child process: seconds of the call, peak "
        "resident memory (`VmHWM`: interpreter, torch, input and output included). Ours: "
        "`deblur(stack, psf, noise_level=\"auto\")`, the volume cascade named below on the CPU. RL: 3D "
        "Richardson–Lucy as in the volumetric benchmark (edge-padded, float64), its iteration count chosen by PSNR "
        "against the phantom (an oracle), then run for exactly that count; skimage: "
        "`skimage.restoration.richardson_lucy(y, psf, num_iter=n, clip=False)` itself on the offset-subtracted "
        "stack / p (no padding) given as float64 or float32, each at its own oracle count. The last column and "
        "the target compare with the fastest of the three.",
        "",
    ]
    sp = cache.get("speed")
    if sp:
        rl = sp["rl"]
        rls = {"RL, edge-padded float64": rl,
               **{f"skimage `richardson_lucy`, {d}": sp[f"skimage_{d}"] for d in SKIMAGE_DTYPES
                  if f"skimage_{d}" in sp}}
        fastest_rl = min(r["sec"] for r in rls.values())
        size = " × ".join(str(v) for v in sp["shape"])
        lines += [
            f"| {size} | seconds | peak RSS (GiB) | PSNR / SSIM | seconds / fastest RL's |",
            "|---|---|---|---|---|",
            f"| blurry | | | {sp['blurry'][0]:.2f} / {sp['blurry'][1]:.3f} | |",
        ]
        for name, r in rls.items():
            lines.append(f"| {name}, best count ({r['iterations']} it) | {r['sec']:.1f} | {r['peak_rss'] / GIB:.2f} | "
                         f"{r['scores'][0]:.2f} / {r['scores'][1]:.3f} | {r['sec'] / fastest_rl:.1f} |")
        ran = [p for p in ("fp32", "bf16") if p in sp]
        for p in ran:
            r = sp[p]
            note = "" if p == "fp32" or sp.get("native_bf16") else " (emulated on this CPU)"
            lines.append(f"| ours, 3 stages, {p}{note} | {r['sec']:.1f} | {r['peak_rss'] / GIB:.2f} | "
                         f"{r['scores'][0]:.2f} / {r['scores'][1]:.3f} | {r['sec'] / fastest_rl:.1f} |")
        if "bf16" not in sp:
            lines += ["", "bf16 (`precision=\"bf16\"`) not run: this CPU has no native bf16 (AVX-512 BF16 or AMX), "
                          "where `precision=\"auto\"` means fp32 and emulated bf16 is several times slower; "
                          "`--precisions fp32 bf16` runs it."]
        fastest = min(sp[p]["sec"] for p in ran)
        history = [h for h in cache.get("speed_runs", []) if h["shape"] == sp["shape"]]
        if len(history) > 1:
            lines += ["", "Every run of this comparison (start time, model width: fp32 seconds / RL seconds = ratio): "
                + "; ".join(
                f"{h['run'].get('started', '?')}, width {(h.get('model') or {}).get('width', 64)}"
                f"{_margin_note(h.get('model'))}: "
                f"{h['fp32_sec']:.0f} / {h['rl_sec']:.1f} = "
                f"{h['fp32_sec'] / h['rl_sec']:.1f}×" for h in history if "fp32_sec" in h)
                + ". The machine is shared, so single timings vary; the table is the last run."]
        ratio = padded_voxels(sp["shape"], (15, 21, 21)) / np.prod(sp["shape"])
        info = sp.get("model") or {"width": 64, "macs_per_voxel_stage": 453_696, "file": "volume_cascade.safetensors"}
        met = fastest <= fastest_rl
        margin = info.get("network_margin")
        if margin is None:
            seen = (f"The networks see every voxel of the padded volume ({ratio:.1f}× the volume's voxels here: the "
                    "PSF's size on every side)")
        else:
            seen = (f"The networks see the volume ± {margin} voxels plus their halo, "
                    f"{network_voxels(sp['shape'], (15, 21, 21), margin) / np.prod(sp['shape']):.2f}× the volume's "
                    f"voxels per direction (the padded volume is {ratio:.1f}×: the PSF's size on every side)")
        lines += [
            "",
            f"Target (the 3-stage cascade no slower than RL at its best count on {size}): "
            f"**{'met' if met else 'not met'}** — {fastest / fastest_rl:.1f}× the fastest RL's time "
            f"({fastest / rl['sec']:.1f}× the edge-padded float64 RL's). {seen}, in three "
            f"directions per stage: with the measured cascade (`{info['file']}`, width {info['width']}) "
            f"{info['macs_per_voxel_stage'] / 1e3:.0f} k multiply-adds per voxel seen and stage; RL's cost is two "
            "FFT convolutions per iteration.",
            "",
        ]
    lines += gpu_report(cache)
    mem = cache.get("memory", {})
    if mem:
        lines += [
            "Peak memory by size (fp32; the large volumes one stage: its peak is a stage's, 1 and 3 stages "
            "agree in the small rows). Seconds here ran next to other jobs and are not comparable between rows.",
            "",
            "| volume (Z × Y × X) | stages | cascade width | padded voxels (M) | peak RSS (GiB) | "
            "RSS before the call (GiB) | growth per padded voxel (B) | tile | seconds |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        width = {id(r): (r.get("model") or {}).get("width", 64) for r in mem.values()}  # rows before session 10: 64
        rows = sorted(mem.values(), key=lambda r: (r["padded_voxels"], r["stages"], -width[id(r)]))
        for r in rows:
            z, y, x = r["shape"]
            growth = (r["peak_rss"] - r["rss_before"]) / r["padded_voxels"]
            lines.append(f"| {z} × {y} × {x} | {r['stages']} | {width[id(r)]} | "
                         f"{r['padded_voxels'] / 1e6:.1f} | "
                         f"{r['peak_rss'] / GIB:.2f} | {r['rss_before'] / GIB:.2f} | {growth:.0f} | "
                         f"{r.get('tile_size', '')} | {r['sec']:.0f} |")
        big = [r for r in rows if r["shape"][1] * r["shape"][2] >= 1024 * 1024 and r["shape"][0] >= 64]
        if big:
            ok = all(r["peak_rss"] < 8 * GIB for r in big)
            peaks = ", ".join(f"{r['peak_rss'] / GIB:.2f} GiB" for r in big)
            lines += ["", f"Target (1024 × 1024 × 64 uint16 on the CPU within 8 GiB peak RSS): "
                          f"**{'met' if ok else 'not met'}** ({peaks})."]
        elif len(rows) > 1:  # the slope between the two largest rows: the fixed part (one network call) drops out
            a, b = rows[-2], rows[-1]
            slope = (b["peak_rss"] - a["peak_rss"]) / max(b["padded_voxels"] - a["padded_voxels"], 1)
            est = b["peak_rss"] + slope * (padded_voxels((64, 1024, 1024), (15, 21, 21)) - b["padded_voxels"])
            lines += ["", f"1024 × 1024 × 64 not measured in this run; extrapolated from the two largest rows "
                          f"({slope:.0f} B per padded voxel) it would peak near {est / GIB:.1f} GiB."]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=HERE.parent / "docs" / "benchmarks.md")
    p.add_argument("--cache", type=Path, default=HERE / "results" / "volume_scale.json")
    p.add_argument("--sizes", nargs="*", type=parse_size, default=[parse_size(s) for s in SIZES],
                   help="memory rows ZxYxX[:stages] (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=None,
                   help="the cascade's precisions in the speed part (default: fp32, and bf16 where native)")
    p.add_argument("--skip-speed", action="store_true", help="only the memory rows")
    p.add_argument("--speed-size", type=parse_size, default=(SPEED_SHAPE, 3),
                   help="the benchmark volume ZxYxX (default 64x256x256; the memory rows keep its Z)")
    p.add_argument("--report-only", action="store_true", help="write the section from the cache")
    p.add_argument("--device", default="cpu",
                   help="cpu (default: the CPU rows), or a GPU (cuda, cuda:N): only the GPU rows (protocol 5)")
    p.add_argument("--gpu-size", type=parse_size, default=(GPU_SHAPE, 3), help="the GPU row's volume ZxYxX")
    # child mode
    p.add_argument("--child", choices=("ours", "rl", "skimage"), help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float64", choices=SKIMAGE_DTYPES, help=argparse.SUPPRESS)
    p.add_argument("--stack", help=argparse.SUPPRESS)
    p.add_argument("--psf", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help="a volume cascade file to measure instead of the shipped one")
    p.add_argument("--iterations", type=int, default=3, help=argparse.SUPPRESS)
    p.add_argument("--rl-iterations", type=int, default=max(RL_ITERATIONS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child_main(args)
    if args.report_only:
        cache = json.loads(args.cache.read_text())
    elif args.device != "cpu":
        import torch

        if not args.device.startswith("cuda") or not torch.cuda.is_available():
            p.error(f"--device {args.device}: the GPU rows need a CUDA device (torch.cuda.is_available() is "
                    f"{torch.cuda.is_available()})")
        cache = measure_gpu(args.cache, args.gpu_size[0], args.gpu_size[1], args.device,
                            tuple(args.precisions or ("fp32", "bf16")), model=args.model)
    else:
        cache = measure(args.cache, args.sizes, args.threads, not args.skip_speed, args.speed_size[0],
                        tuple(args.precisions or default_precisions()), model=args.model)
    replace_section(args.out, report(cache), SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
