#!/usr/bin/env python
"""Scale benchmark: peak memory and time of large planes (tiled), and a stack on a dask cluster.

Protocol (also written into the report):

1. Large planes.  For each size N (``--sizes``, default 4096 8192) the parent
   makes a float32 N × N test image (skimage's camera tiled to N × N, blurred by a
   19 px camera-shake kernel, 1 % Gaussian noise) and saves it with the kernel.
   A fresh child process loads them and runs ``deblur(image, kernel,
   iterations=3, device="cpu", model=MODEL, tile_size=TILE)`` once; it reports
   its own peak resident memory (``VmHWM`` of /proc/self/status on Linux, else
   ``ru_maxrss``; the Python interpreter, torch, the input and the output
   included), its peak after the imports, and the wall time of the call.  Target: 8192² under
   4 GiB peak RSS.
2. Stack through the CLI.  A (Z, Y, X) uint16 TIFF stack (``--stack``, default
   20,1024,1024; camera crops blurred with the same kernel, 1 % noise) is
   deblurred by ``fcnn-deblur deblur STACK -k K --model MODEL -o OUT.zarr
   --scheduler ADDRESS`` against a ``distributed.LocalCluster`` (processes, one
   thread per worker: distributed sets OMP_NUM_THREADS=1 in its workers) with
   1 and then 2 workers.  The workers are started and have imported torch and
   the package before the clock starts; the time includes the CLI's own start.
   Reported: wall time, speed-up, and whether the two outputs are identical.
3. Widget memory.  (Z, Y, X) uint16 stacks (``--widget-stack``, default
   8,256,256 and 16,256,256; camera crops, same kernel, 1 % noise) are
   deblurred whole with per-stage and gradient results, in a fresh process
   each: (a) as the napari widget's whole-layer run does (its worker,
   ``_widget._deblur_items``: chunks of planes; the last stage in memory, the
   intermediate stages and the gradients in ``.npy`` files shown
   memory-mapped), and (b) keeping every stage in memory
   (``list(deblur_stages(...))``, how the widget ran before).  Reported: the
   peak resident memory above the process's memory just before the run
   (``VmHWM`` reset through ``/proc/self/clear_refs``; torch's buffers
   included), and, from two depths, how much it grows per byte of the stack in
   float32 (the fixed rest is one chunk's working memory, mostly the networks'
   ~1 kB per pixel of a plane or tile).  Target: growth under 2.5 × the float32
   size.

The report replaces the ``## Scale`` section of ``--out`` (parts 1 and 2, when
run) and its ``## Widget memory`` section (part 3), keeping the others.  The
shipped models are used unless ``--model`` is given.

Full run (long on a CPU: tens of minutes)::

    python benchmarks/scale.py --model PATH.safetensors

Quick check::

    python benchmarks/scale.py --model PATH.safetensors --sizes 512 --stack 2,256,256 \
        --widget-stack 4,128,128 8,128,128 --out /tmp/bench.md
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
SECTION = "## Scale"
WIDGET_SECTION = "## Widget memory"
GIB = 1024**3
NOISE = 0.01


# ----------------------------------------------------------------------------- inputs


def test_kernel() -> np.ndarray:
    from napari_fcnn_deblur.data.motion_kernels import random_motion_kernel

    return random_motion_kernel(np.random.default_rng(5), size=19)


def _camera() -> np.ndarray:
    from skimage import data

    return data.camera().astype(np.float32) / 255


def make_plane(shape: tuple[int, int], kernel: np.ndarray, seed: int, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Camera image tiled (mirrored) to ``shape``, blurred ('same', FFT), plus 1 % noise: float32 in ~[0, 1]."""
    from scipy.signal import oaconvolve

    cam = _camera()
    cam = np.block([[cam, cam[:, ::-1]], [cam[::-1], cam[::-1, ::-1]]])  # seamless 1024 × 1024 tile
    reps = (-(-(shape[0] + offset[0]) // cam.shape[0]), -(-(shape[1] + offset[1]) // cam.shape[1]))
    sharp = np.tile(cam, reps)[offset[0] : offset[0] + shape[0], offset[1] : offset[1] + shape[1]]
    blurry = oaconvolve(sharp, kernel.astype(np.float32), mode="same").astype(np.float32)
    del sharp
    rng = np.random.default_rng(seed)
    blurry += rng.normal(0, NOISE, size=blurry.shape).astype(np.float32)
    return blurry


# ----------------------------------------------------------------------------- child: one large plane


def peak_rss() -> int:
    """Peak resident memory of this process in bytes.

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this
    process's own address space.  ``ru_maxrss`` is not used there because
    Linux carries the parent's high-water mark across fork/exec into it.
    Elsewhere: ``resource.getrusage(RUSAGE_SELF).ru_maxrss``.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB elsewhere


def reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (Linux ≥ 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def current_rss() -> int:
    """Resident memory of this process now, in bytes (``VmRSS``; 0 where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def child_main(args) -> int:
    import torch

    from napari_fcnn_deblur import deblur

    if args.threads:
        torch.set_num_threads(args.threads)
    rss_imports = peak_rss()
    image = np.load(args.child_image)
    kernel = np.load(args.kernel)
    t0 = time.perf_counter()
    out = deblur(image, kernel, NOISE, args.iterations, "cpu", args.model, args.tile_size)
    sec = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "sec": sec,
                "peak_rss": peak_rss(),
                "rss_after_imports": rss_imports,
                "finite": bool(np.all(np.isfinite(out))),
                "shape": list(out.shape),
                "threads": torch.get_num_threads(),
            }
        )
    )
    return 0


def run_plane(size: int, model: str, tile_size: int | None, iterations: int, threads: int | None, work: Path) -> dict:
    kernel = test_kernel()
    img_path, k_path = work / f"plane{size}.npy", work / "kernel.npy"
    np.save(img_path, make_plane((size, size), kernel, seed=size))
    np.save(k_path, kernel)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-image", str(img_path), "--kernel", str(k_path)]
    cmd += ["--model", model, "--iterations", str(iterations)]
    if tile_size:
        cmd += ["--tile-size", str(tile_size)]
    if threads:
        cmd += ["--threads", str(threads)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    img_path.unlink()
    if r.returncode != 0:
        raise RuntimeError(f"child for {size}² failed:\n{r.stderr[-3000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res.update(size=size, process_sec=wall)
    return res


# ----------------------------------------------------------------------------- widget memory


def child_widget_main(args) -> int:
    """One whole-stack run with per-stage and gradient results (``--child-mode widget | in-memory``)."""
    import torch

    from napari_fcnn_deblur import deblur, deblur_stages

    if args.threads:
        torch.set_num_threads(args.threads)
    stack = np.load(args.child_widget_stack)
    kernel = np.load(args.kernel)
    deblur(stack[0, :64, :64], kernel, NOISE, 1, "cpu", args.model)  # warm: torch's first-call costs are not the run's
    keep = []
    if args.child_mode == "widget":
        from napari_fcnn_deblur import _widget as widget

        folder = widget._ScratchFolder()
        job = widget._Job("stack", stack, False, kernel, NOISE, args.iterations, "cpu", Path(args.model), (), False,
                          gradients=True, scratch=folder.new_run())
        run = widget._deblur_items(job)
    else:
        run = deblur_stages(stack, kernel, NOISE, args.iterations, "cpu", args.model)
    exact = reset_peak_rss()
    base = current_rss()
    t0 = time.perf_counter()
    for item in run:  # what the widget's layers hold: every stage (and its gradients) until the end
        if getattr(item, "message", None):
            raise SystemExit(item.message)
        keep.append(item)
    sec = time.perf_counter() - t0
    print(json.dumps({"sec": sec, "peak_above_start": peak_rss() - base, "exact_peak": exact,
                      "float32_bytes": stack.size * 4, "stages": len(keep), "threads": torch.get_num_threads()}))
    return 0


def run_widget_stack(zyx: tuple[int, int, int], model: str, iterations: int, threads: int | None, work: Path) -> dict:
    kernel = test_kernel()
    z, y, x = zyx
    stack = np.empty(zyx, np.uint16)
    for i in range(z):
        plane = make_plane((y, x), kernel, seed=2000 + i, offset=(37 * i, 53 * i))
        stack[i] = np.clip(np.rint(plane * 4000 + 100), 0, 65535).astype(np.uint16)
    src, k_path = work / "widget_stack.npy", work / "kernel.npy"
    np.save(src, stack)
    np.save(k_path, kernel)
    del stack
    runs = {}
    for mode in ("widget", "in-memory"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child-widget-stack", str(src), "--kernel", str(k_path),
               "--child-mode", mode, "--model", model, "--iterations", str(iterations)]
        if threads:
            cmd += ["--threads", str(threads)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"widget-memory child ({mode}) failed:\n{r.stderr[-3000:]}")
        runs[mode] = json.loads(r.stdout.strip().splitlines()[-1])
    src.unlink()
    return {"shape": list(zyx), "runs": runs}


def widget_report(args, results: list[dict], env: str) -> str:
    lines = [
        WIDGET_SECTION,
        "",
        f"Made by `benchmarks/scale.py` on {datetime.date.today().isoformat()} ({env}).  Model: "
        f"`{Path(args.model).name if args.model else 'shipped'}`, {args.iterations} stages, CPU.",
        "",
        "uint16 stacks deblurred whole with every stage and its gradients kept, in a fresh process per row.  Peak: "
        "the process's peak resident memory above its memory just before the run (`VmHWM` reset through "
        "`/proc/self/clear_refs`; numpy and torch buffers; the stack itself was loaded before).",
        "",
        "| run | kept in memory | stack | float32 size | peak above start | × float32 size | time |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    what = {
        "widget": ("napari widget, whole layer (its worker `_widget._deblur_items`)",
                   "last stage; intermediate stages and gradients on disk (memory-mapped)"),
        "in-memory": ("`list(deblur_stages(...))` (how the widget ran before)", "every stage and gradient"),
    }
    for mode, (name, kept) in what.items():
        for res in results:
            r, shape = res["runs"][mode], " × ".join(map(str, res["shape"]))
            f32 = r["float32_bytes"]
            exact = "" if r["exact_peak"] else " (upper bound: VmHWM not reset)"
            lines.append(f"| {name} | {kept} | {shape} | {f32 / 2**20:.1f} MiB | {r['peak_above_start'] / 2**20:.0f} MiB"
                         f"{exact} | {r['peak_above_start'] / f32:.2f} × | {r['sec']:.0f} s |")
    if len(results) >= 2:
        lo, hi = results[0]["runs"], results[-1]["runs"]
        lines.append("")
        for mode, (name, _) in what.items():
            d_f32 = hi[mode]["float32_bytes"] - lo[mode]["float32_bytes"]
            slope = (hi[mode]["peak_above_start"] - lo[mode]["peak_above_start"]) / d_f32
            fixed = lo[mode]["peak_above_start"] - slope * lo[mode]["float32_bytes"]
            lines.append(f"- {name}: peak ≈ {fixed / 2**20:.0f} MiB + {slope:.2f} × the stack's float32 size.")
            if mode == "widget":
                ok = slope < 2.5
                lines.append(f"  Target (growth under 2.5 × the float32 size): **{'met' if ok else 'not met'}**; "
                             f"an 800 MB uint16 stack (1.6 GB in float32) would need ≈ "
                             f"{(fixed + slope * 1.6e9) / 1e9:.1f} GB.")
            else:
                lines.append(f"  An 800 MB uint16 stack would need ≈ {(fixed + slope * 1.6e9) / 1e9:.1f} GB.")
    lines.append("")
    cmd = "python benchmarks/scale.py" + (f" --model {args.model}" if args.model else "")
    cmd += f" --sizes --stack none --widget-stack {' '.join(args.widget_stack)}"
    cmd += f" --threads {args.threads}" if args.threads else ""
    lines += [f"Command: `{cmd}`.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- stack on a cluster


def run_stack(zyx: tuple[int, int, int], model: str, iterations: int, work: Path, workers=(1, 2)) -> dict:
    import tifffile
    import zarr
    from distributed import Client, LocalCluster

    kernel = test_kernel()
    z, y, x = zyx
    stack = np.empty(zyx, np.uint16)
    for i in range(z):
        plane = make_plane((y, x), kernel, seed=1000 + i, offset=(37 * i, 53 * i))
        stack[i] = np.clip(np.rint(plane * 4000 + 100), 0, 65535).astype(np.uint16)
    src, k_path = work / "stack.tif", work / "kernel.npy"
    tifffile.imwrite(src, stack, photometric="minisblack")
    np.save(k_path, kernel)
    del stack
    runs = {}
    for n in workers:
        out = work / f"out_{n}w.zarr"
        with (
            LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=40
            ) as cluster,
            Client(cluster) as client,
        ):
            client.run(lambda: __import__("napari_fcnn_deblur.engine.lazy") and None)  # warm: torch + package imported
            torch_threads = client.run(lambda: __import__("torch").get_num_threads())
            cmd = [sys.executable, "-m", "napari_fcnn_deblur.cli", "deblur", str(src), "-k", str(k_path)]
            cmd += ["--model", model, "--iterations", str(iterations), "-o", str(out), "-q"]
            cmd += ["--scheduler", cluster.scheduler_address]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True)
            sec = time.perf_counter() - t0
            if r.returncode != 0:
                raise RuntimeError(f"CLI with {n} worker(s) failed:\n{r.stderr[-3000:]}")
        runs[n] = {"sec": sec, "torch_threads": sorted(set(torch_threads.values()))}
    outs = [zarr.open_array(str(work / f"out_{n}w.zarr"), mode="r")[...] for n in workers]
    diff = float(max(np.abs(o.astype(np.float64) - outs[0]).max() for o in outs))
    identical = all(np.array_equal(o, outs[0]) for o in outs)
    return {"shape": list(zyx), "runs": runs, "identical": identical, "max_abs_diff": diff, "dtype": str(outs[0].dtype)}


# ----------------------------------------------------------------------------- report


def replace_section(path: Path, body: str, heading: str = SECTION) -> None:
    sys.path.insert(0, str(HERE))
    from report_files import replace_section as _replace

    _replace(path, body, heading)


def machine() -> str:
    import torch

    try:
        import psutil

        ram = f"{psutil.virtual_memory().total / GIB:.0f} GiB RAM"
    except ImportError:  # pragma: no cover
        ram = "RAM unknown"
    cpu = platform.processor() or platform.machine()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} logical CPUs, {ram}; "
        f"Python {platform.python_version()}, torch {torch.__version__}; 1-min load average at start {load:.1f}"
    )


def report(args, planes: list[dict], stack: dict | None, tile_size: int, env: str) -> str:
    lines = [SECTION, ""]
    lines.append(
        f"Made by `benchmarks/scale.py` on {datetime.date.today().isoformat()} ({env}).  Model: "
        f"`{Path(args.model).name if args.model else 'shipped'}`, {args.iterations} stages, CPU."
    )
    lines.append("")
    if planes:
        lines += [
            "### Large planes (tiled)",
            "",
            "One float32 plane (tiled camera image, 19 px camera-shake kernel, 1 % noise) deblurred by "
            f'`deblur(..., device="cpu", tile_size={args.tile_size or "None"})` in a fresh process; the networks '
            f"ran in tiles of {tile_size} px (+7 px overlap), the FFT deconvolutions on the whole plane "
            "(see `napari_fcnn_deblur.engine.tiles`).  Peak RSS is the child process's own high-water mark (`VmHWM`; "
            "interpreter, torch and the input and output arrays included).",
            "",
            "| image | time | throughput | peak RSS | peak RSS after imports | torch threads |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in planes:
            mpx = r["size"] ** 2 / 1e6
            lines.append(
                f"| {r['size']} × {r['size']} float32 | {r['sec']:.0f} s | {mpx / r['sec']:.3f} Mpx/s | "
                f"{r['peak_rss'] / GIB:.2f} GiB | {r['rss_after_imports'] / GIB:.2f} GiB | {r['threads']} |"
            )
        big = [r for r in planes if r["size"] == 8192]
        if big:
            ok = big[0]["peak_rss"] < 4 * GIB
            lines += [
                "",
                f"Target 8192² under 4 GiB peak RSS: **{'met' if ok else 'not met'}** "
                f"({big[0]['peak_rss'] / GIB:.2f} GiB).",
            ]
        lines.append("")
    if stack:
        z, y, x = stack["shape"]
        runs = stack["runs"]
        base = runs[min(runs)]["sec"]
        lines += [
            "### Stack through the CLI on a dask cluster",
            "",
            f"A ({z}, {y}, {x}) uint16 TIFF stack → `fcnn-deblur deblur stack.tif -k kernel.npy --model MODEL "
            f"--iterations {args.iterations} -o out.zarr --scheduler ADDRESS` against a `distributed.LocalCluster` "
            "(processes, 1 thread per worker); workers warm (torch imported) before the clock starts.",
            "",
            "| workers | wall time | speed-up | torch threads per worker |",
            "|---:|---:|---:|---:|",
        ]
        for n, r in sorted(runs.items()):
            threads = ", ".join(str(t) for t in r["torch_threads"])
            lines.append(f"| {n} | {r['sec']:.1f} s | {base / r['sec']:.2f}× | {threads} |")
        same = "identical" if stack["identical"] else f"not identical (max |Δ| = {stack['max_abs_diff']:.3g})"
        lines += ["", f"Outputs ({stack['dtype']}) of the runs: **{same}**.", ""]
    cmd = "python benchmarks/scale.py" + (f" --model {args.model}" if args.model else "")
    cmd += f" --sizes {' '.join(map(str, args.sizes))}" if args.sizes else " --sizes"
    cmd += f" --stack {args.stack}" if args.stack else " --stack none"
    cmd += f" --tile-size {args.tile_size}" if args.tile_size else ""
    cmd += f" --threads {args.threads}" if args.threads else ""
    lines += [f"Command: `{cmd}`.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=None, help="cascade file (.safetensors); default: the shipped models")
    ap.add_argument("--sizes", type=int, nargs="*", default=[4096, 8192], help="plane sides (default 4096 8192)")
    ap.add_argument("--stack", default="20,1024,1024", help="Z,Y,X of the CLI stack test, or 'none'")
    ap.add_argument("--widget-stack", nargs="*", default=["8,256,256", "16,256,256"],
                    help="Z,Y,X of the widget memory stacks (two depths give the growth per byte), or none")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--tile-size", type=int, default=None, help="tile side for the planes (default: automatic)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in the plane runs (default: torch's)")
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"), help="its '## Scale' section is replaced")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    # child mode (internal)
    ap.add_argument("--child-image", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--kernel", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-widget-stack", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-mode", default="widget", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def resolve_model(model: str | None) -> str:
    """A cascade file to use everywhere (workers load it themselves)."""
    if model:
        if not Path(model).is_file():
            raise SystemExit(f"error: model file not found: {model}")
        return str(Path(model).resolve())
    from napari_fcnn_deblur.io.models import available_models, nearest_trained_level

    models = available_models()
    level = nearest_trained_level(NOISE)
    if level not in models:
        raise SystemExit(
            "error: no shipped model is installed (src/napari_fcnn_deblur/models/ is empty); "
            "pass --model PATH (a .safetensors cascade, e.g. from `fcnn-deblur train` or `fcnn-deblur import-matconvnet`)"
        )
    return str(models[level])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child_image:
        return child_main(args)
    if args.child_widget_stack:
        return child_widget_main(args)
    args.model = resolve_model(args.model)
    stack_shape = None
    widget_shapes = []
    if args.stack and args.stack.lower() != "none":
        stack_shape = tuple(int(v) for v in args.stack.split(","))
        if len(stack_shape) != 3:
            raise SystemExit("error: --stack takes Z,Y,X")
    for text in args.widget_stack if args.widget_stack != ["none"] else []:
        shape = tuple(int(v) for v in text.split(","))
        if len(shape) != 3 or shape[0] < 2:
            raise SystemExit("error: --widget-stack takes Z,Y,X (Z ≥ 2) values")
        widget_shapes.append(shape)
    import torch

    from napari_fcnn_deblur.engine.tiles import auto_tile_size

    env = machine()
    from napari_fcnn_deblur.engine.devices import check_precision

    # the runs use deblur's default precision="auto": say what it meant here
    env += ", networks in " + ("bf16" if check_precision("auto", torch.device("cpu")) else "fp32") + ' (precision="auto")'
    tile = args.tile_size or auto_tile_size(torch.device("cpu"))
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        planes = []
        for n in args.sizes:
            print(f"plane {n} × {n} …", flush=True)
            r = run_plane(n, args.model, args.tile_size, args.iterations, args.threads, work)
            print(f"  {r['sec']:.1f} s, peak RSS {r['peak_rss'] / GIB:.2f} GiB", flush=True)
            planes.append(r)
        stack = None
        if stack_shape:
            print(f"stack {stack_shape} through the CLI on LocalCluster(1 and 2 workers) …", flush=True)
            stack = run_stack(stack_shape, args.model, args.iterations, work)
            for n, r in stack["runs"].items():
                print(f"  {n} worker(s): {r['sec']:.1f} s", flush=True)
            print(f"  identical outputs: {stack['identical']} (max |Δ| {stack['max_abs_diff']:.3g})", flush=True)
        widget = []
        for shape in widget_shapes:
            print(f"widget memory: stack {shape}, whole layer with gradients …", flush=True)
            widget.append(run_widget_stack(shape, args.model, args.iterations, args.threads, work))
            for mode, r in widget[-1]["runs"].items():
                print(f"  {mode}: peak {r['peak_above_start'] / 2**20:.0f} MiB above start", flush=True)
    if planes or stack:
        body = report(args, planes, stack, tile, env)
        print(body)
        replace_section(args.out, body)
        print(f"wrote the '{SECTION}' section of {args.out}")
    if widget:
        body = widget_report(args, widget, env)
        print(body)
        replace_section(args.out, body, WIDGET_SECTION)
        print(f"wrote the '{WIDGET_SECTION}' section of {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
