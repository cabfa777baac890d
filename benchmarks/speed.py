#!/usr/bin/env python
"""Speed benchmark: the cascade against classical methods, and against the machine's own ceiling.

For each image size (default 512×400, 1024×800, 2048×2048, float32) and a 27×27 kernel, 3 iterations:
median wall time of ``--repeats`` runs after one warm-up, for

- the cascade on every device here (CPU, and CUDA when present), fp32 with channels_last
  convolutions, and with bf16 autocast where the device supports it (an opt-in path): the per-level
  cascade (``--model``, default the shipped 1 % one) for ``--iterations`` stages, and the shipped
  noise-map cascade (the default model) with all its stages and boundary refills (``--no-noisemap``
  to skip);
- the project's hyper-Laplacian baseline (α = 2/3), scikit-image's Richardson–Lucy (30 iterations)
  and Wiener, on the CPU.

It also measures the device's ceiling (a large fp32 ``torch.mm``; bf16 where supported), counts the
cascade's FLOPs (2 × the network's MACs per padded pixel — 149,632 for the paper's network — per gradient
image per stage, plus 5 N log₂ N per FFT, two FFT pairs per boundary refill) and prints the achieved GFLOP/s and the fraction of the ceiling.  The table is printed and written
into the ``## Speed`` section of ``--out`` (other sections are kept).

    python benchmarks/speed.py --out docs/benchmarks.md               # all sizes, every device here
    python benchmarks/speed.py --sizes 128x96 --repeats 1 --out /tmp/s.md   # quick check
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from napari_fcnn_deblur.core.denoiser import GradientDenoiser  # noqa: E402

MACS_PER_PIXEL = GradientDenoiser(64, 1).macs_per_pixel  # Table 1: 5·5·64 + 4·(3·3·64·64) + 3·3·64 = 149,632


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up: allocations, autotuning, caches
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_ceiling(device: torch.device, dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    """GFLOP/s of a large square matrix product."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = median_time(lambda: torch.mm(a, b), repeats, device)
    return 2 * n**3 / t / 1e9


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:  # CPUs without native bf16 emulate it slowly: only report where a matmul is not slower than fp32
        return bool(torch.backends.mkldnn.is_available())
    except Exception:
        return False


def cascade_flops(shape: tuple[int, int], kernel_shape: tuple[int, int], iterations: int,
                  macs_per_pixel: int = MACS_PER_PIXEL, refills: int = 0) -> float:
    """FLOPs of one cascade run on an (H, W) plane: the networks' convolutions and the FFTs."""
    from napari_fcnn_deblur.core.spectral import padding_geometry

    hp, wp = padding_geometry(shape, kernel_shape).shape
    n = hp * wp
    conv = 2 * macs_per_pixel * n * 2 * iterations  # two gradient images per stage
    fft = 5 * n * np.log2(n)
    # setup (taper blur, data term, initial solve) + per stage, + two FFT pairs per boundary refill
    n_ffts = 5 + 3 * iterations + 4 * refills * iterations
    return conv + n_ffts * fft


def parse_size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(h), int(w)  # "512x400" = 512 wide, 400 high


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["512x400", "1024x800", "2048x2048"], help="W×H")
    ap.add_argument("--kernel-size", type=int, default=27)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default=None, help="cascade file (default: the shipped 1 %% model)")
    ap.add_argument("--devices", nargs="*", default=None, help="default: every device here")
    ap.add_argument("--no-noisemap", action="store_true",
                    help="skip the rows of the shipped noise-map cascade (the default model)")
    ap.add_argument("--skip-baselines", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="markdown file; its '## Speed' section is replaced")
    args = ap.parse_args(argv)

    from napari_fcnn_deblur.data.psf import linear_motion_psf
    from napari_fcnn_deblur.engine.devices import available_devices
    from napari_fcnn_deblur.engine.run import DeblurRun
    from napari_fcnn_deblur.io.models import NOISEMAP_MODEL, get_model, noisemap_model_path

    devices = [torch.device(d) for d in (args.devices or [d for d in available_devices() if d != "mps"])]
    # (label, cascade on the CPU, stages run); the noise-map cascade runs all its stages and refills
    models = [(f"cascade, {args.iterations} stages", get_model(args.model, 0.01), args.iterations)]
    if not args.no_noisemap and noisemap_model_path().is_file():
        nm = get_model(NOISEMAP_MODEL, 0.01)
        models.append((f"noise-map cascade (default model), {nm.n_stages} stages, {nm.refills} refills", nm,
                       nm.n_stages))
    kernel = linear_motion_psf(args.kernel_size - 2, 30.0)
    assert kernel.shape == (args.kernel_size, args.kernel_size)
    rng = np.random.default_rng(0)

    rows, ceil_rows = [], []
    for dev in devices:
        fp32 = matmul_ceiling(dev, torch.float32)
        bf = matmul_ceiling(dev, torch.bfloat16) if bf16_supported(dev) else None
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
        ceil_rows.append((dev.type, name, torch.get_num_threads() if dev.type == "cpu" else None, fp32, bf))
        print(f"{dev}: {name}; matmul fp32 {fp32:.0f} GFLOP/s" + (f", bf16 {bf:.0f}" if bf else ""), flush=True)
        for name_m, cascade_cpu, stages in models:
            cascade = cascade_cpu if dev.type == "cpu" else __import__("copy").deepcopy(cascade_cpu).to(dev)
            for size in args.sizes:
                h, w = parse_size(size)
                plane = rng.random((1, h, w), dtype=np.float32)
                flops = cascade_flops((h, w), kernel.shape, stages, cascade.denoisers[0].macs_per_pixel,
                                      cascade.refills)
                variants = [("fp32", None, "fp32")]
                if bf:
                    variants.append(("bf16 autocast", torch.bfloat16, "bf16"))
                for label, ac, precision in variants:
                    # the ceiling is re-measured next to each row: this shared machine's speed drifts by ±30 %
                    ceiling = matmul_ceiling(dev, ac or torch.float32)
                    try:
                        # the whole plane in one network call per stage (no memory-bounded tiles), as deblur
                        # does below the tile size
                        run = DeblurRun.prepare(plane[0], kernel, iterations=stages, device=dev, model=cascade,
                                                tile_size=1 << 16, intensity_range=(0.0, 1.0), precision=precision)
                        t = median_time(lambda plane=plane, run=run: run.run_planes(plane), args.repeats, dev)
                    except RuntimeError as err:  # e.g. out of memory
                        print(f"  {size} {name_m} {label}: failed ({err})", flush=True)
                        continue
                    gf = flops / t / 1e9
                    rows.append((f"{name_m}, {label}", dev.type, size, t, gf, gf / ceiling, ceiling))
                    print(f"  {size} {name_m} {label}: {t:.3f} s, {gf:.0f} GFLOP/s "
                          f"({100 * gf / ceiling:.0f} % of matmul)", flush=True)
    if not args.skip_baselines:
        from napari_fcnn_deblur.baselines.classical import hyper_laplacian, richardson_lucy, wiener

        for size in args.sizes:
            h, w = parse_size(size)
            y = rng.random((h, w)).astype(np.float64)
            for label, fn in (
                ("hyper-Laplacian α=2/3 (project baseline)", lambda y=y: hyper_laplacian(y, kernel, 1600.0)),
                ("Richardson–Lucy, 30 iterations (skimage)", lambda y=y: richardson_lucy(y, kernel, 30)),
                ("Wiener (skimage)", lambda y=y: wiener(y, kernel, 0.01)),
            ):
                t = median_time(fn, args.repeats, torch.device("cpu"))
                rows.append((label, "cpu", size, t, None, None, None))
                print(f"  {size} {label}: {t:.3f} s", flush=True)

    lines = [
        "## Speed",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `python benchmarks/speed.py` (torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads): median of {args.repeats} runs after a warm-up, random "
        f"float32 images, a {args.kernel_size}×{args.kernel_size} kernel, {args.iterations} iterations of the "
        "per-level cascade; the noise-map cascade (the default model) runs all its stages and boundary refills. "
        "GFLOP/s counts the cascade's convolutions (2 × the network's MACs per padded pixel per gradient image "
        "per stage) and FFTs (two FFT pairs per refill); the fraction is of the same device's matmul rate in the same precision, measured just before that row (this shared machine drifts by up to ±30 % between minutes).",
        "",
        "| device | processor | CPU threads | matmul fp32 GFLOP/s | matmul bf16 GFLOP/s |",
        "|---|---|---:|---:|---:|",
    ]
    for d, name, thr, fp32, bf in ceil_rows:
        lines.append(f"| {d} | {name} | {thr or ''} | {fp32:.0f} | {'' if bf is None else f'{bf:.0f}'} |")
    lines += ["", "| method | device | image (W×H) | seconds | GFLOP/s | matmul GFLOP/s next to it | fraction of ceiling |",
              "|---|---|---|---:|---:|---:|---:|"]
    for label, d, size, t, gf, frac, ceil in rows:
        lines.append(f"| {label} | {d} | {size} | {t:.3f} | {'' if gf is None else f'{gf:.0f}'} | "
                     f"{'' if ceil is None else f'{ceil:.0f}'} | {'' if frac is None else f'{100 * frac:.0f} %'} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out is not None:
        from report_files import replace_section

        replace_section(args.out, table, "## Speed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
