"""Command line: ``fcnn-deblur {deblur,demo,train,train-noisemap,import-matconvnet,models}``."""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

from ..api import deblur, deblur_stages, default_noise_level, is_volume_kernel
from ..data.psf import KERNEL_PREPS, prepare_psf
from ..engine.channels import check_channel_axis
from ..engine.intensity import intensity_scaling
from ..engine.layout import PlaneLayout
from ..engine.run import DeblurRun, Progress
from ..engine.volume import VolumeRun
from ..io.images import (
    IMAGE_SUFFIXES,
    INTEGER_ONLY_SUFFIXES,
    check_output_path,
    create_zarr_output,
    is_zarr,
    ome_zarr_layout,
    open_zarr_input,
    read_array,
    read_tiff_metadata,
    require,
    spacing_um,
    store_zarr_plane,
    to_output_dtype,
    write_image_atomic,
    write_zarr_block,
    write_zarr_pyramid,
    zarr_output_atomic,
)

# ----------------------------------------------------------------------------- deblur command


#: Files --noise reads as a per-pixel noise s.d. map.
NOISE_MAP_SUFFIXES = (".npy", ".tif", ".tiff")


def _noise_arg(text: str):
    """--noise: a number (s.d. on the [0, 1] scale), 'auto', or a .npy/.tif noise map file (read now)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        pass
    path = Path(text)
    if path.suffix.lower() not in NOISE_MAP_SUFFIXES:
        raise argparse.ArgumentTypeError(
            f"expected a number, 'auto' or a noise map file ({', '.join(NOISE_MAP_SUFFIXES)}), got {text!r}")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"noise map file not found: {path}")
    try:
        return read_array(path)
    except (OSError, ValueError) as err:
        raise argparse.ArgumentTypeError(f"cannot read the noise map {path}: {err}") from None


def _tile_arg(text: str) -> int | None:
    if text.strip().lower() == "auto":
        return None
    return int(text)


def _default_dtype(out: Path, requested: str | None) -> str:
    if requested:
        return requested
    return "input" if out.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp"} else "float32"


def _say(args, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr)


def _progress(args, total: int, desc: str, unit: str = "plane"):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=args.quiet, file=sys.stderr, leave=False)


def _report_noise(args, run: DeblurRun) -> None:
    """The noise (the estimate with --noise auto: always printed) and the model the run uses."""
    msg = f"{'estimated noise level' if run.noise.estimated else 'noise level'}: {run.noise.describe()}; " \
          f"model: {run.model_description}"
    if run.noise.estimated:
        print(msg, file=sys.stderr)
    else:
        _say(args, msg)


def _check_outputs(pairs: list[tuple[Path, Path]], overwrite: bool) -> None:
    """Every output writable and none of them an input, before any work."""
    inputs = {src.resolve() for src, _ in pairs}
    for _, out in pairs:
        if out.resolve() in inputs:
            raise ValueError(f"output {out} is an input file; write the result elsewhere")
        check_output_path(out, overwrite)


def _check_dtype_fits(dst: Path, dtype: str, image: np.ndarray) -> None:
    """8/16-bit formats cannot store float results: refuse before the computation."""
    target = image.dtype if dtype == "input" else np.dtype(dtype)
    if dst.suffix.lower() in INTEGER_ONLY_SUFFIXES and target not in (np.uint8, np.uint16):
        raise ValueError(
            f"{dst.suffix} stores 8/16-bit integers but the result would be {target}: use --dtype uint8/uint16, "
            "or write .tif/.npy for float32"
        )


def _conversion_range(args, image, dtype: str, rgb: bool | None) -> tuple[float, float] | None:
    """The intensity range mapped onto an integer output type other than the input's (rule in
    :func:`~..io.images.to_output_dtype`): ``--intensity-range``, else the one intensity rule's range."""
    if dtype in ("float32", "input") or np.dtype(dtype) == np.dtype(image.dtype):
        return None
    if args.intensity_range is not None:
        return tuple(args.intensity_range)
    s = intensity_scaling(PlaneLayout.of(image.shape, rgb).colour(image))
    return s.offset, s.offset + s.scale


def _job_pairs(image: Path, out: Path) -> list[tuple[Path, Path]]:
    """(input, output) files: one pair, or one per image of a folder (IMAGE folder → OUT folder)."""
    if image.is_dir() and not is_zarr(image):
        if out.exists() and not out.is_dir():
            raise ValueError(f"IMAGE {image} is a folder, so OUT must be a folder too ({out} is a file)")
        files = sorted(
            p
            for p in image.iterdir()
            if not p.name.startswith(".")
            and ((p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) or (p.is_dir() and is_zarr(p)))
        )
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}, .zarr) in {image}")
        return [(p, out / p.name) for p in files]
    if not image.exists():
        raise FileNotFoundError(f"{image} does not exist")
    return [(image, out)]


def _cmd_deblur(args) -> int:
    image_path, out = Path(args.image), Path(args.output)
    kernels = []
    for path in args.kernel:
        raw = read_array(Path(path))
        k = raw.astype(np.float64)
        if k.ndim == 3 and k.shape[-1] in (3, 4):
            k = k[..., :3].mean(-1)
        if is_volume_kernel(k):  # a 3D PSF: volumetric deconvolution
            kernels.append(_volume_psf(args, Path(path), raw))
            continue
        try:  # a measured PSF (background, off-centre) is prepared as psf.load_psf does; other kernels untouched
            prepared = prepare_psf(k, args.kernel_prep)
        except ValueError as err:
            raise ValueError(f"kernel {path}: {err}") from None
        if prepared.measured:
            _say(args, f"kernel {path}: measured PSF: {prepared.describe()}")
        kernels.append(prepared.kernel)
    if len(kernels) > 1 and args.channel_axis is None:
        raise ValueError("several --kernel files need --channel-axis (one kernel per channel)")
    kernel = kernels[0] if len(kernels) == 1 else kernels
    args.psf_spacing_found = args.psf_spacing or _file_spacing(Path(args.kernel[0]))
    pairs = _job_pairs(image_path, out)
    if args.skip_existing:
        skipped = [dst for _, dst in pairs if dst.exists()]
        pairs = [(src, dst) for src, dst in pairs if not dst.exists()]
        for dst in skipped:
            _say(args, f"skipped {dst} (exists)")
    _check_outputs(pairs, args.overwrite)
    if args.save_stages:
        if len(pairs) != 1 or is_zarr(image_path) or is_zarr(out) or args.scheduler:
            raise ValueError("--save-stages works on a single image file, without zarr or --scheduler")
        return _deblur_with_stages(args, image_path, out, kernel)
    client = None
    if args.scheduler and args.scheduler not in ("threads", "processes", "sync"):
        distributed = require("distributed")
        client = distributed.Client(args.scheduler)
    failed: list[tuple[Path, str]] = []
    try:
        for src, dst in pairs:
            try:
                if args.scheduler:
                    _deblur_one_lazy(args, src, dst, kernel, client)
                else:
                    _deblur_one(args, src, dst, kernel)
            except (ValueError, OSError, ImportError, RuntimeError) as err:
                if len(pairs) == 1:
                    raise
                print(f"error: {src}: {err}", file=sys.stderr)  # a batch goes on with the other files
                failed.append((src, str(err)))
                continue
            _say(args, f"wrote {dst}")
    finally:
        if client is not None:
            client.close()
    if failed:
        print(f"error: {len(failed)} of {len(pairs)} files failed: {', '.join(p.name for p, _ in failed)}; "
              "re-run with --skip-existing to do only those", file=sys.stderr)
        return 1
    return 0


def _volume_psf(args, path: Path, k: np.ndarray) -> np.ndarray:
    """A 3D PSF file: a measured bead z-stack (background, off-centre; --kernel-prep measured, or auto when its
    data are camera counts or sit on an offset, psf.looks_measured) is prepared by psf3d.prepare_measured_psf_3d; a computed PSF is used as is."""
    from ..data.psf import looks_measured
    from ..data.psf3d import BEAD_NOISE_FLOOR, prepare_measured_psf_3d

    if args.kernel_prep == "raw" or (args.kernel_prep == "auto" and not looks_measured(k)):
        return k.astype(np.float64)
    try:
        prepared = prepare_measured_psf_3d(k, threshold=BEAD_NOISE_FLOOR)
    except ValueError as err:
        raise ValueError(f"kernel {path}: {err}") from None
    _say(args, f"kernel {path}: measured 3D PSF: background and {BEAD_NOISE_FLOOR:g} σ of noise subtracted, recentred, cropped from "
               f"{'×'.join(map(str, k.shape))} to {'×'.join(map(str, prepared.shape))}, normalised")
    return prepared


def _file_spacing(path: Path, zin=None) -> tuple[float, float, float] | None:
    """Voxel size (dz, dy, dx) in µm from a TIFF's (OME / ImageJ) or an OME-Zarr's metadata, if it states all three."""
    if zin is not None:
        return spacing_um(zin)
    meta = read_tiff_metadata(path) if path.is_file() else None
    return None if meta is None else spacing_um(meta)


def _volume_spacing(args, src: Path, zin, kernel, ndim: int) -> tuple:
    """(spacing, psf_spacing) of a volumetric run: --spacing / --psf-spacing, else the files' metadata (µm).
    A PSF without a voxel size is taken on the image's grid.  (None, None) for planes (a 3D PSF with a 2D
    image is the engine's clear error)."""
    if ndim < 3 or not is_volume_kernel(kernel if not isinstance(kernel, list) else kernel[0]):
        return None, None
    spacing = tuple(args.spacing) if args.spacing else _file_spacing(src, zin)
    psf_spacing = tuple(args.psf_spacing_found) if args.psf_spacing_found else None
    if psf_spacing is not None and spacing is None:
        raise ValueError(f"the PSF's voxel size is {psf_spacing} µm but {src.name} states none: pass --spacing DZ DY DX")
    if spacing is not None and psf_spacing is None:
        _say(args, f"{src.name}: voxel size {spacing} µm; the PSF states none and is taken on the image's grid")
        spacing = None
    return spacing, psf_spacing


def _prepare_run(args, image, kernel: np.ndarray, spacing=None, psf_spacing=None) -> "DeblurRun | VolumeRun":
    """The run for one input (eager or dask), with the noise estimate reported when it was asked for."""
    if is_volume_kernel(kernel):
        run = VolumeRun.prepare(image, kernel, _noise(args, kernel), args.iterations, args.device, args.model,
                                args.intensity_range, args.precision, spacing, psf_spacing, args.tile_size)
    else:
        run = DeblurRun.prepare(image, kernel, _noise(args), args.iterations, args.device, args.model,
                                args.tile_size, args.intensity_range, precision=args.precision)
    _report_noise(args, run)
    return run


def _noise(args, kernel=None):
    """--noise as given; its default the API's (:func:`~napari_fcnn_deblur.api.default_noise_level`): 'auto' for
    a 3D PSF (camera z-stacks), 0.01 otherwise — with --channel-axis (a list of kernels) None, so that the API
    decides for each channel by its own kernel."""
    if args.noise is not None:
        return args.noise
    if isinstance(kernel, list):
        return None
    return 0.01 if kernel is None else default_noise_level(kernel)


def _channel_kernels(args, kernel, shape) -> "np.ndarray | list":
    """With --channel-axis one -k file is the kernel of every channel, said as a list (a 3D array alone could
    also read as stacked per-channel 2D kernels: :func:`~napari_fcnn_deblur.engine.channels.channel_kernels`)."""
    if args.channel_axis is None or isinstance(kernel, list):
        return kernel
    return [kernel] * shape[check_channel_axis(args.channel_axis, len(shape))]


def _progress_callback(bar):
    def update(p: Progress) -> None:
        bar.total = p.total
        bar.n = p.done
        bar.refresh()

    return update


def _deblur_one(args, src: Path, dst: Path, kernel: np.ndarray) -> None:
    """Eager path: the whole input in memory, planes deblurred in batches (tiled when large)."""
    zin = open_zarr_input(src) if is_zarr(src) else None
    image = np.asarray(zin.array[...]) if zin is not None else read_array(src)
    _check_dtype_fits(dst, _default_dtype(dst, args.dtype), image)
    spacing, psf_spacing = _volume_spacing(args, src, zin, kernel, image.ndim)
    if args.channel_axis is not None:  # each channel its own image (kernel, noise, intensity map)
        kernel = _channel_kernels(args, kernel, image.shape)
        result = deblur(image, kernel, _noise(args, kernel), args.iterations, args.device, args.model, args.tile_size,
                        args.intensity_range, precision=args.precision, channel_axis=args.channel_axis,
                        spacing=spacing, psf_spacing=psf_spacing)
        layout = PlaneLayout.of(result.shape, rgb=False)
    else:
        run = _prepare_run(args, image, kernel, spacing, psf_spacing)
        if isinstance(run, VolumeRun):
            layout = PlaneLayout.of(image.shape, rgb=False)
            total, unit = int(np.prod(image.shape[:-3])) * (run.iterations + 1), "volume-step"
        else:
            layout = run.layout(image)
            total, unit = layout.n_planes * (run.iterations + 1), "plane-step"
        bar = _progress(args, total, src.name, unit=unit)
        try:
            result = run.deblur(image, _progress_callback(bar))
        finally:
            bar.close()
    dtype = _default_dtype(dst, args.dtype)
    vr = _conversion_range(args, image, dtype, layout.rgb)
    if is_zarr(dst):
        zin = zin or ome_zarr_layout(read_tiff_metadata(src), result.shape, layout.rgb)
        with zarr_output_atomic(dst, args.overwrite) as tmp:
            zarr = require("zarr")
            store, apath = create_zarr_output(
                tmp, result.shape, to_output_dtype(result[:0], dtype, image, vr).dtype, layout.rgb, zin
            )
            arr = zarr.open_array(store, path=apath or "", mode="r+")
            if layout.rgb or result.ndim == 2:
                write_zarr_block(arr, (slice(None),) * result.ndim, to_output_dtype(result, dtype, image, vr))
            else:
                lead = result.shape[:-2]
                for idx in np.ndindex(*lead):
                    write_zarr_block(arr, idx, to_output_dtype(result[idx], dtype, image, vr))
            if zin is not None and zin.levels:
                write_zarr_pyramid(store, zin)
    else:
        write_image_atomic(dst, to_output_dtype(result, dtype, image, vr), args.overwrite, read_tiff_metadata(src))


def _deblur_one_lazy(args, src: Path, dst: Path, kernel: np.ndarray, client) -> None:
    """dask path: one task per plane on the chosen scheduler; zarr outputs are written by the tasks."""
    da = require("dask.array")
    dask = require("dask")
    from ..engine.lazy import TASK_PREFIX, deblur_lazy

    zin = open_zarr_input(src) if is_zarr(src) else None
    if zin is not None:
        lazy_in = da.from_zarr(zin.array)
        like_dtype = zin.array.dtype
    else:
        image = read_array(src)
        lazy_in = da.from_array(
            image, chunks=image.shape if image.ndim == 2 else (1,) * (image.ndim - 2) + image.shape[-2:]
        )
        like_dtype = image.dtype
    _check_dtype_fits(dst, _default_dtype(dst, args.dtype), np.zeros(0, like_dtype))
    spacing, psf_spacing = _volume_spacing(args, src, zin, kernel, lazy_in.ndim)
    if args.channel_axis is not None or spacing is not None or is_volume_kernel(kernel):
        kernel = _channel_kernels(args, kernel, lazy_in.shape)
        result = deblur(lazy_in, kernel, _noise(args, kernel), args.iterations, args.device, args.model,
                        args.tile_size, args.intensity_range, precision=args.precision, channel_axis=args.channel_axis,
                        spacing=spacing, psf_spacing=psf_spacing)
        rgb = False
    else:
        run = _prepare_run(args, lazy_in, kernel)
        result = deblur_lazy(run, lazy_in)
        rgb = run.options.rgb
    dtype = _default_dtype(dst, args.dtype)
    vr = _conversion_range(args, lazy_in, dtype, rgb)
    target = to_output_dtype(np.zeros(1, np.float32), dtype, np.zeros(1, like_dtype), vr).dtype
    result = result.map_blocks(to_output_dtype, dtype, np.zeros(0, like_dtype), vr, dtype=target)
    if rgb:
        result = result.rechunk((-1, -1, -1))
    n_planes = int(np.prod(result.numblocks))
    scheduler = None if client is not None else args.scheduler

    def run(tasks) -> list:
        bar = _progress(args, n_planes, src.name)
        try:
            if client is not None:
                distributed = require("distributed")
                futures = client.compute(tasks)
                by_key = {f.key: i for i, f in enumerate(futures)}
                out = [None] * len(futures)
                for fut in distributed.as_completed(futures):
                    out[by_key[fut.key]] = fut.result()
                    bar.update(1)
                return out
            from dask.callbacks import Callback

            class _Count(Callback):
                def _posttask(self, key, result, dsk, state, worker_id):
                    name = key[0] if isinstance(key, tuple) else key
                    if str(name).startswith(TASK_PREFIX):
                        bar.update(1)

            with _Count():
                return list(dask.compute(*tasks, scheduler=scheduler))
        finally:
            bar.close()

    blocks = result.to_delayed()
    starts = [np.cumsum((0,) + c[:-1]) for c in result.chunks]
    if is_zarr(dst):
        zin = zin or ome_zarr_layout(read_tiff_metadata(src), result.shape, rgb)
        with zarr_output_atomic(dst, args.overwrite) as tmp:
            store, apath = create_zarr_output(tmp, result.shape, target, rgb, zin)
            tasks = []
            for idx in np.ndindex(*blocks.shape):
                region = tuple(
                    slice(int(starts[ax][i]), int(starts[ax][i] + result.chunks[ax][i])) for ax, i in enumerate(idx)
                )
                tasks.append(dask.delayed(store_zarr_plane)(blocks[idx], store, apath, region))
            run(tasks)
            if zin is not None and zin.levels:
                write_zarr_pyramid(store, zin)
    else:
        out = np.empty(result.shape, target)
        idxs = list(np.ndindex(*blocks.shape))
        for idx, block in zip(idxs, run([blocks[i] for i in idxs]), strict=True):
            region = tuple(
                slice(int(starts[ax][i]), int(starts[ax][i] + result.chunks[ax][i])) for ax, i in enumerate(idx)
            )
            out[region] = block
        write_image_atomic(dst, out, args.overwrite, read_tiff_metadata(src))


def _deblur_with_stages(args, image_path: Path, out: Path, kernel: np.ndarray) -> int:
    image = read_array(image_path)
    dtype = _default_dtype(out, args.dtype)
    _check_dtype_fits(out, dtype, image)
    # checked and the model loaded first: the stage count (default: all of the model's) names the files
    if args.channel_axis is not None:
        kernel = _channel_kernels(args, kernel, image.shape)
        stages = deblur_stages(image, kernel, _noise(args, kernel), args.iterations, args.device, args.model,
                               intensity_range=args.intensity_range, precision=args.precision,
                               channel_axis=args.channel_axis)
        first = next(stages)
        n_stages, stages = first.iterations, itertools.chain([first], stages)
    else:
        spacing, psf_spacing = _volume_spacing(args, image_path, None, kernel, image.ndim)
        run = _prepare_run(args, image, kernel, spacing, psf_spacing)
        n_stages, stages = run.iterations, run.stages(image)
    vr = _conversion_range(args, image, dtype, None if args.channel_axis is None else False)
    meta = read_tiff_metadata(image_path)
    stage_paths = []
    for s in range(n_stages + 1):
        p = out.with_name(f"{out.stem}_stage{s}{out.suffix}")
        if p.resolve() == image_path.resolve():
            raise ValueError(f"stage file {p} would overwrite the input; choose another output name")
        check_output_path(p, args.overwrite)
        stage_paths.append(p)
    last = None
    for res in stages:
        _say(args, f"stage {res.stage}/{res.iterations} done (γ = {res.gamma:.4g})")
        write_image_atomic(stage_paths[res.stage], to_output_dtype(res.image, dtype, image, vr), args.overwrite, meta)
        last = res
    write_image_atomic(out, to_output_dtype(last.image, dtype, image, vr), args.overwrite, meta)
    _say(args, f"wrote {out}")
    return 0


def _cmd_demo(args) -> int:
    """Blur a built-in sample image with a built-in kernel, deblur it, report PSNR, write PNGs."""
    from ..api import deblur_stages
    from ..data.samples import motion_blur_sample
    from ..io.models import available_models

    sample = motion_blur_sample(noise_level=args.noise)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None and not available_models():
        print("error: no trained model is installed; pass --model PATH", file=sys.stderr)
        return 2

    def psnr(a):
        gt = sample.sharp
        return 10 * np.log10(1.0 / np.mean((np.clip(a, 0, 1) - gt) ** 2))

    print(f"blurry input: PSNR {psnr(sample.blurry):.2f} dB")
    import imageio.v3 as iio

    iio.imwrite(out / "blurry.png", (np.clip(sample.blurry, 0, 1) * 255).round().astype(np.uint8))
    iio.imwrite(out / "sharp.png", (sample.sharp * 255).round().astype(np.uint8))
    for res in deblur_stages(sample.blurry, sample.kernel, args.noise, args.iterations, args.device, model,
                             precision=args.precision):
        name = "initial deconvolution" if res.stage == 0 else f"stage {res.stage}"
        print(f"{name}: PSNR {psnr(res.image):.2f} dB")
        iio.imwrite(out / f"stage{res.stage}.png", (np.clip(res.image, 0, 1) * 255).round().astype(np.uint8))
    print(f"images written to {out}/")
    return 0


def _cmd_import(args) -> int:
    from ..io.matconvnet import load_matconvnet_cascade
    from ..io.models import save_cascade

    out = Path(args.output)
    if out.exists() and not args.overwrite:  # before the import's work
        print(f"error: {out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    cascade = load_matconvnet_cascade(args.folder, args.noise)
    save_cascade(cascade, out)
    print(f"wrote {out}: {cascade.n_stages} stages, γ = {[round(g, 4) for g in cascade.gammas.tolist()]}")
    return 0


def _cmd_train(args) -> int:
    import torch

    from ..engine.devices import resolve_device
    from ..training.stagewise import TrainConfig, train_all

    cfg = {"cpu": TrainConfig, "cpu-finetune": TrainConfig.cpu_finetune, "gpu": TrainConfig.gpu,
           "tiny": TrainConfig.tiny, "cpu-extend": TrainConfig.cpu_extend}[args.preset]()
    if args.noise:
        cfg.noise_levels = tuple(args.noise)
    if args.seed is not None:
        cfg.seed = args.seed
    if args.finetune_minutes is not None:
        cfg.finetune_seconds = 60.0 * args.finetune_minutes
    if args.finetune_loss is not None:
        cfg.finetune_loss = args.finetune_loss
    if args.stage_minutes is not None:
        cfg.stage_seconds = 60.0 * args.stage_minutes
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    train_all(args.data, args.val, args.val_kernels, args.out, cfg, dev, models_dir=args.install_to,
              init_dir=args.init_from)
    return 0


def _cmd_train_noisemap(args) -> int:
    from ..engine.devices import resolve_device
    from ..training.noisemap import run_from_args

    return run_from_args(args, resolve_device(args.device))


def _file_size(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 1e5 else f"{n_bytes / 1e3:.1f} kB"


def _percent(levels) -> str:
    return ", ".join(f"{100 * v:g}" for v in levels) + " %"


def _nearest_range(level: float, levels) -> str:
    """The Gaussian σ range whose nearest trained level is ``level`` (ties go to the higher level)."""
    levels = sorted(levels)
    i = levels.index(level)
    lo = (levels[i - 1] + level) / 2 if i > 0 else None
    hi = (level + levels[i + 1]) / 2 if i + 1 < len(levels) else None
    if lo is None and hi is None:
        return "any σ"
    if lo is None:
        return f"σ < {100 * hi:g} %"
    if hi is None:
        return f"σ ≥ {100 * lo:g} %"
    return f"{100 * lo:g} % ≤ σ < {100 * hi:g} %"


def _default_rule_lines(noisemap_installed: bool) -> tuple[list[str], dict[float, list[float]] | None]:
    """Lines saying what ``model=None`` picks, and {per-level cascade's level: Gaussian σ of the table it wins at}
    (None: the per-level cascades are the default everywhere)."""
    from ..io.models import available_models, default_rule, nearest_trained_level

    if not noisemap_installed:
        return ["default (model=None): the nearest per-level cascade instead (this one is not installed)"], None
    try:
        table = default_rule()
    except ValueError as err:
        return [f"default (model=None): at every noise level ({err})"], {}
    if table is None:
        return ["default (model=None): at every noise level (the file holds no measured table)"], {}
    lost = [(s, a - b) for s, a, b in zip(table["sigma"], table["noisemap_db"], table["per_level_db"]) if a < b]
    wins: dict[float, list[float]] = {}
    for s, _ in lost:
        wins.setdefault(nearest_trained_level(s), []).append(s)
    measured = (f"measured {table.get('date', '?')} by {table.get('measured_by', '?')} at Gaussian σ = "
                f"{_percent(table['sigma'])}; interpolated in log σ between them")
    if not lost or not available_models():
        why = "no per-level cascade is installed" if lost else "no per-level cascade measured better"
        return [f"default (model=None): at every noise level ({why})", f"  table: {measured}"], {}
    return [
        "default (model=None): used for Poisson–Gaussian noise, noise maps and Gaussian noise except near "
        f"σ = {_percent([s for s, _ in lost])}, where the nearest per-level cascade measured better "
        f"(by {', '.join(f'{-d:.2f}' for _, d in lost)} dB)",
        f"  table: {measured}",
    ], wins


def _cmd_models(args) -> int:
    """List every installed cascade: the noise-map (default), the per-level and the volume cascades."""
    from ..io.models import (
        NOISEMAP_MODEL,
        PER_LEVEL_MODEL,
        TRAINED_NOISE_LEVELS,
        load_cascade,
        noisemap_model_path,
        read_metadata,
        shipped_model_path,
        volume_model_path,
    )

    def describe(title: str, path: Path, purpose: list[str], gammas: bool = False, always: list[str] = ()) -> None:
        print(title)
        if not path.is_file():
            print(f"  not installed (expected {path})")
            for line in always:
                print(f"  {line}")
            return
        meta = read_metadata(path)
        cascade = load_cascade(path)
        extra = f", γ = {[round(g, 4) for g in cascade.gammas.tolist()]}" if gammas else ""
        print(f"  file: {path} ({_file_size(path.stat().st_size)})")
        print(f"  format: {meta['format']}, {cascade.n_stages} stages, width {cascade.width}{extra}")
        for line in [*purpose, *always]:
            print(f"  {line}")

    nm_path = noisemap_model_path()
    rule, per_level_wins = _default_rule_lines(nm_path.is_file())
    describe(f"noise-map cascade (the default; model='{NOISEMAP_MODEL}')", nm_path,
             ["for: 2D images at any noise level and type: Gaussian σ, Poisson–Gaussian (photon) noise, "
              "a per-pixel noise map or --noise auto; the networks see the noise s.d. of every pixel"], always=rule)
    for lv in TRAINED_NOISE_LEVELS:
        if per_level_wins is None:
            default = "; also the default (model=None) there"
        else:
            wins = per_level_wins.get(lv)
            default = f"; default (model=None) for Gaussian σ near {_percent(wins)}" if wins else ""
        describe(f"per-level cascade {100 * lv:g} % (model='{PER_LEVEL_MODEL}')", shipped_model_path(lv),
                 [f"for: 2D images with Gaussian noise of s.d. near {100 * lv:g} % (the paper's setting); "
                  f"model='{PER_LEVEL_MODEL}' picks it for {_nearest_range(lv, TRAINED_NOISE_LEVELS)}{default}"],
                 gammas=True)
    describe("volume cascade (3D PSFs)", volume_model_path(),
             ["for: volumes (Z, Y, X) with a 3D PSF (a z-stack kernel): deconvolved in 3D, any noise "
              "(noise maps, --noise auto by default); used whenever the PSF is 3D"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ..engine.devices import PRECISIONS

    precision_choices = ["auto", *PRECISIONS]
    ap = argparse.ArgumentParser(prog="fcnn-deblur", description=__doc__)
    from .. import __version__

    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    d = sub.add_parser(
        "deblur",
        help="deblur an image, a stack, a zarr array or a folder of images with a known kernel",
        description=(
            "Deblur IMAGE (PNG/TIFF/NPY file, TIFF stack, zarr or OME-Zarr .zarr, or a folder of these) into OUT "
            "(a file, a .zarr, or a folder when IMAGE is a folder). Outputs are written under a temporary name "
            "and renamed when complete."
        ),
    )
    d.add_argument("image")
    d.add_argument("--kernel", "-k", required=True, action="append",
                   help="kernel/PSF file (PNG/TIFF/NPY); with --channel-axis, give one per channel (repeat -k)")
    d.add_argument("--kernel-prep", choices=KERNEL_PREPS, default="auto",
                   help="measured: subtract the PSF's background (median of its border), recentre it on its "
                        "centroid, crop it to 99.9 %% of its mass, normalise (as psf.load_psf); raw: use the file as "
                        "it is; auto (default): 'measured' for a kernel or 3D bead stack with a background, an offset, "
                        "camera counts or negative values (3D: background, noise floor and centroid as "
                        "psf3d.prepare_measured_psf_3d), 'raw' for computed kernels (zero border: used unchanged)")
    d.add_argument("--channel-axis", type=int, default=None,
                   help="axis of the image holding channels: each deblurred on its own (own kernel with several -k, "
                        "own noise estimate and intensity map); default: (Y, X, 3|4) is RGB(A), anything else a stack")
    d.add_argument(
        "--noise",
        type=_noise_arg,
        default=None,
        help="noise s.d. on the [0, 1] scale (default 0.01; 'auto' with a 3D PSF); 'auto' to estimate (and print) it: a σ, or "
             "Poisson–Gaussian a, b (σ²(x) = a·x + b) for photon noise; or a .npy/.tif file with the noise s.d. "
             "of every pixel (the image's shape or one plane's, on the [0, 1] scale)",
    )
    d.add_argument("--iterations", type=int, default=None,
                   help="FCNN stages to run (default: all stages of the model)")
    d.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("DZ", "DY", "DX"),
                   help="voxel size of the image in µm (default: from its OME-TIFF / ImageJ TIFF / OME-Zarr metadata); "
                        "with a 3D PSF whose voxel size differs, the PSF is resampled to the image's grid")
    d.add_argument("--psf-spacing", type=float, nargs=3, default=None, metavar=("DZ", "DY", "DX"),
                   help="voxel size of the 3D PSF in µm (default: from the PSF file's metadata; none: the image's grid)")
    d.add_argument("--device", default="auto")
    d.add_argument("--model", default=None,
                   help="'noisemap' (one model for any noise), 'per-level' (the shipped 1/3/5 %% cascade nearest to "
                        "the noise level) or a cascade file (.safetensors); default: the noise-map cascade, or the "
                        "per-level one for Gaussian noise at levels where it validates better")
    d.add_argument("-o", "--output", required=True)
    d.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "input", "uint8", "uint16"],
        help="output type: float32 (default for TIFF/NPY/zarr; values as computed), input (default for PNG/JPEG; "
             "the input's type and units), uint8 or uint16 (another type: the intensity range mapped to [0, 1] for "
             "the networks -- see --intensity-range -- becomes the type's full range)",
    )
    d.add_argument(
        "--intensity-range",
        nargs=2,
        type=float,
        default=None,
        metavar=("LOW", "HIGH"),
        help="intensities (in the image's units) mapped to 0 and 1 for the networks (default: [0, 1] floats as "
             "they are, uint8 /255, others their 0.05-99.95 percentiles); also the range --dtype maps",
    )
    d.add_argument(
        "--tile-size",
        type=_tile_arg,
        default=None,
        help="side in pixels of the tiles the networks run in on large planes and volumes (default: from free "
             "memory)",
    )
    d.add_argument(
        "--scheduler",
        default=None,
        help="run through dask: 'threads', 'processes', or the address of a dask.distributed scheduler",
    )
    d.add_argument("--save-stages", action="store_true", help="also write OUT_stage<k> for every stage")
    d.add_argument("--precision", choices=precision_choices, default="auto",
                   help="arithmetic of the networks; auto = bf16 where the CPU/GPU has it natively (2-3x faster)")
    d.add_argument("--overwrite", action="store_true")
    d.add_argument("--skip-existing", action="store_true",
                   help="leave outputs that exist alone and do the rest (resumes an interrupted batch)")
    d.add_argument("--quiet", "-q", action="store_true")
    d.set_defaults(func=_cmd_deblur)

    m = sub.add_parser("demo", help="deblur a built-in motion-blurred sample and report PSNR")
    m.add_argument("-o", "--output", default="fcnn-deblur-demo")
    m.add_argument("--noise", type=float, default=0.01)
    m.add_argument("--iterations", type=int, default=None,
                   help="FCNN stages to run (default: all stages of the model)")
    m.add_argument("--device", default="auto")
    m.add_argument("--model", default=None)
    m.add_argument("--precision", choices=precision_choices, default="auto")
    m.set_defaults(func=_cmd_demo)

    i = sub.add_parser("import-matconvnet", help="convert a released MatConvNet cascade folder to a .safetensors file")
    i.add_argument("folder", help="a noise0.0X folder, or the release's models/ folder with --noise")
    i.add_argument("--noise", type=float, default=None)
    i.add_argument("-o", "--output", required=True)
    i.add_argument("--overwrite", action="store_true")
    i.set_defaults(func=_cmd_import)

    t = sub.add_parser("train", help="train the cascades (resumable: re-run the same command)")
    t.add_argument("--data", required=True, help="folder of sharp training images")
    t.add_argument("--val", required=True, help="folder of sharp validation images")
    t.add_argument("--val-kernels", required=True, help="folder of validation kernels (.npy/.png)")
    t.add_argument("--out", required=True, help="run folder: checkpoints, logs, final models")
    t.add_argument("--preset", choices=["cpu", "cpu-finetune", "cpu-extend", "gpu", "tiny"], default="cpu",
                   help="cpu: stage-wise recipe; cpu-finetune: end-to-end only (with --init-from); "
                        "cpu-extend: append and train a 4th stage (with --init-from); gpu; tiny: a check")
    t.add_argument("--noise", type=float, nargs="*", help="levels to train (default 0.01 0.03 0.05)")
    t.add_argument("--device", default="auto")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--install-to", default=None, help="copy final models here if they validate higher")
    t.add_argument("--seed", type=int, default=None, help="data seed (use a new one when continuing a run)")
    t.add_argument("--finetune-minutes", type=float, default=None,
                   help="wall-clock budget of the end-to-end fine-tuning phase per level (presets that have one)")
    t.add_argument("--finetune-loss", choices=["l1", "l2"], default=None,
                   help="loss on the final image when fine-tuning end to end (default l1, eq. 8; l2 = the released code's)")
    t.add_argument("--stage-minutes", type=float, default=None,
                   help="wall-clock budget of each stage-wise phase (0 = the preset's step counts)")
    t.add_argument("--init-from", default=None, help="folder of fcnn_noise0.0X.safetensors to continue training from")
    t.set_defaults(func=_cmd_train)

    from ..training.noisemap import add_arguments as noisemap_arguments

    tn = sub.add_parser("train-noisemap",
                        help="train the noise-map-conditioned cascade (resumable: re-run the same command)")
    noisemap_arguments(tn)
    tn.set_defaults(func=_cmd_train_noisemap)

    ls = sub.add_parser("models", help="list the installed cascades")
    ls.set_defaults(func=_cmd_models)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, ImportError) as err:  # OSError: missing files, folders given as files, ...
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (outputs finished so far are complete; unfinished ones were not written)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
