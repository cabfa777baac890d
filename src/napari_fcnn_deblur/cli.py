"""Command line: ``fcnn-deblur {deblur,demo,train,import-matconvnet,models}``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np


def _read_array(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path)
    if suffix in {".tif", ".tiff"}:
        import tifffile

        return tifffile.imread(path)
    import imageio.v3 as iio

    return np.asarray(iio.imread(path))


def _to_output_dtype(result: np.ndarray, dtype: str, like: np.ndarray) -> np.ndarray:
    if dtype == "float32":
        return result.astype(np.float32)
    target = like.dtype if dtype == "input" else np.dtype(dtype)
    if np.issubdtype(target, np.integer):
        info = np.iinfo(target)
        return np.clip(np.rint(result), info.min, info.max).astype(target)
    return result.astype(target)


def write_image_atomic(path: Path, array: np.ndarray, overwrite: bool = False) -> None:
    """Write PNG/TIFF/NPY under a temporary name, then rename: never a half-written final file."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial{path.suffix}")
    suffix = path.suffix.lower()
    try:
        if suffix in {".tif", ".tiff"}:
            import tifffile

            tifffile.imwrite(tmp, array)
        elif suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, array)
        else:
            import imageio.v3 as iio

            if array.dtype not in (np.uint8, np.uint16):
                raise ValueError(
                    f"{path.suffix} stores 8/16-bit integers: use --dtype uint8/uint16/input, or write .tif for float32"
                )
            iio.imwrite(tmp, array, extension=suffix)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _cmd_deblur(args) -> int:
    from .api import deblur_stages

    image = _read_array(Path(args.image))
    kernel = _read_array(Path(args.kernel)).astype(np.float64)
    if kernel.ndim == 3 and kernel.shape[-1] in (3, 4):
        kernel = kernel[..., :3].mean(-1)
    out = Path(args.output)
    dtype = args.dtype or ("input" if out.suffix.lower() in {".png", ".jpg", ".jpeg"} else "float32")
    if out.exists() and not args.overwrite:
        print(f"error: {out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    stage_paths = []
    if args.save_stages:
        for s in range(args.iterations + 1):
            p = out.with_name(f"{out.stem}_stage{s}{out.suffix}")
            if p.exists() and not args.overwrite:
                print(f"error: {p} exists; pass --overwrite to replace it", file=sys.stderr)
                return 2
            stage_paths.append(p)
    last = None
    for res in deblur_stages(image, kernel, args.noise, args.iterations, args.device, args.model):
        if not args.quiet:
            print(f"stage {res.stage}/{res.iterations} done (γ = {res.gamma:.4g})", file=sys.stderr)
        if args.save_stages:
            write_image_atomic(stage_paths[res.stage], _to_output_dtype(res.image, dtype, image), args.overwrite)
        last = res
    write_image_atomic(out, _to_output_dtype(last.image, dtype, image), args.overwrite)
    if not args.quiet:
        print(f"wrote {out}", file=sys.stderr)
    return 0


def _cmd_demo(args) -> int:
    """Blur a built-in sample image with a built-in kernel, deblur it, report PSNR, write PNGs."""
    from .api import deblur_stages
    from .model_io import available_models
    from .sample_images import motion_blur_sample

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
    for res in deblur_stages(sample.blurry, sample.kernel, args.noise, args.iterations, args.device, model):
        name = "initial deconvolution" if res.stage == 0 else f"stage {res.stage}"
        print(f"{name}: PSNR {psnr(res.image):.2f} dB")
        iio.imwrite(out / f"stage{res.stage}.png", (np.clip(res.image, 0, 1) * 255).round().astype(np.uint8))
    print(f"images written to {out}/")
    return 0


def _cmd_import(args) -> int:
    from .matconvnet_import import load_matconvnet_cascade
    from .model_io import save_cascade

    cascade = load_matconvnet_cascade(args.folder, args.noise)
    out = Path(args.output)
    if out.exists() and not args.overwrite:
        print(f"error: {out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    save_cascade(cascade, out)
    print(f"wrote {out}: {cascade.n_stages} stages, γ = {[round(g, 4) for g in cascade.gammas.tolist()]}")
    return 0


def _cmd_train(args) -> int:
    import torch

    from .devices import resolve_device
    from .training import TrainConfig, train_all

    cfg = {"cpu": TrainConfig, "gpu": TrainConfig.gpu, "tiny": TrainConfig.tiny}[args.preset]()
    if args.noise:
        cfg.noise_levels = tuple(args.noise)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    train_all(args.data, args.val, args.val_kernels, args.out, cfg, dev, models_dir=args.install_to)
    return 0


def _cmd_models(args) -> int:
    from .model_io import TRAINED_NOISE_LEVELS, load_cascade, shipped_model_path

    for lv in TRAINED_NOISE_LEVELS:
        p = shipped_model_path(lv)
        if p.is_file():
            c = load_cascade(p)
            print(f"noise {lv:g}: {p.name}, {c.n_stages} stages, γ = {[round(g, 4) for g in c.gammas.tolist()]}")
        else:
            print(f"noise {lv:g}: not installed")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fcnn-deblur", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    d = sub.add_parser("deblur", help="deblur an image (PNG/TIFF/NPY) with a known kernel")
    d.add_argument("image")
    d.add_argument("--kernel", "-k", required=True, help="kernel/PSF file (PNG/TIFF/NPY)")
    d.add_argument("--noise", type=float, default=0.01, help="noise s.d. on the [0, 1] scale (default 0.01)")
    d.add_argument("--iterations", type=int, default=3)
    d.add_argument("--device", default="auto")
    d.add_argument("--model", default=None, help="cascade file (.safetensors) instead of the shipped one")
    d.add_argument("-o", "--output", required=True)
    d.add_argument("--dtype", default=None, help="float32 (default for TIFF/NPY), input, uint8 or uint16")
    d.add_argument("--save-stages", action="store_true", help="also write OUT_stage<k> for every stage")
    d.add_argument("--overwrite", action="store_true")
    d.add_argument("--quiet", "-q", action="store_true")
    d.set_defaults(func=_cmd_deblur)

    m = sub.add_parser("demo", help="deblur a built-in motion-blurred sample and report PSNR")
    m.add_argument("-o", "--output", default="fcnn-deblur-demo")
    m.add_argument("--noise", type=float, default=0.01)
    m.add_argument("--iterations", type=int, default=3)
    m.add_argument("--device", default="auto")
    m.add_argument("--model", default=None)
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
    t.add_argument("--preset", choices=["cpu", "gpu", "tiny"], default="cpu")
    t.add_argument("--noise", type=float, nargs="*", help="levels to train (default 0.01 0.03 0.05)")
    t.add_argument("--device", default="auto")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--install-to", default=None, help="copy final models here if they validate higher")
    t.set_defaults(func=_cmd_train)

    ls = sub.add_parser("models", help="list the installed cascades")
    ls.set_defaults(func=_cmd_models)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
