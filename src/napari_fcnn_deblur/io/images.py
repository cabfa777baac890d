"""Reading and writing images: PNG/TIFF/NPY files (written atomically) and zarr / OME-Zarr arrays."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Image files a folder run picks up (plus ``.zarr`` folders).
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy", ".bmp"}


def read_array(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path)
    if suffix in {".tif", ".tiff"}:
        import tifffile

        return tifffile.imread(path)
    if suffix == ".zarr":
        return np.asarray(open_zarr_input(path).array[...])
    import imageio.v3 as iio

    return np.asarray(iio.imread(path))


def to_output_dtype(result: np.ndarray, dtype: str, like, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """``result`` (in the input's intensity units) converted to the output type ``dtype``.

    The rule:

    - ``"float32"``: the values as they are;
    - ``"input"``, or the input's own integer type: the input's units kept, rounded and clipped to the
      type's range;
    - another integer type (``"uint8"``, ``"uint16"``): ``value_range = (low, high)`` in the input's units
      (the intensity range the run mapped to [0, 1]) goes linearly onto the type's full range
      (0–255, 0–65 535), rounded and clipped.  E.g. a float image on [0, 1] to uint8 is ×255, uint8 to
      uint16 ×257, uint16 microscopy data to uint8 its robust 0.05–99.95 percentile range to 0–255.

    ``like`` is anything with the input's ``dtype``.
    """
    if dtype == "float32":
        return result.astype(np.float32)
    source = np.dtype(like.dtype)
    target = source if dtype == "input" else np.dtype(dtype)
    if not np.issubdtype(target, np.integer):
        return result.astype(target)
    info = np.iinfo(target)
    if target != source:
        if value_range is None:
            raise ValueError(f"converting {source} to {target} needs the intensity range (low, high) to map")
        lo, hi = (float(v) for v in value_range)
        result = (np.asarray(result, np.float64) - lo) * (float(info.max) / (hi - lo))
    return np.clip(np.rint(result), info.min, info.max).astype(target)


def is_zarr(path: Path) -> bool:
    return path.suffix.lower() == ".zarr"


def tiff_photometric(array: np.ndarray) -> str | None:
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        return None  # tifffile's default: RGB(A), contiguous
    return "minisblack" if array.ndim >= 3 else None


#: Suffixes the image writer knows, and those that store only 8/16-bit integers.
WRITABLE_SUFFIXES = {".tif", ".tiff", ".npy", ".png", ".jpg", ".jpeg", ".bmp"}
INTEGER_ONLY_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


def check_output_path(path: Path, overwrite: bool = False) -> None:
    """Refuse, before any work, an output that cannot be written: no or unknown suffix, an existing
    folder, a parent that is a file, or an existing file without ``overwrite``."""
    suffix = path.suffix.lower()
    if suffix not in WRITABLE_SUFFIXES | {".zarr"}:
        known = ", ".join(sorted(WRITABLE_SUFFIXES | {".zarr"}))
        raise ValueError(f"output {path}: {'no' if not suffix else 'unknown'} file type {suffix!r}; use one of {known}")
    if path.is_dir() and suffix != ".zarr":
        raise ValueError(f"output {path} is an existing folder; give a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"output {path}: {parent} is a file, not a folder")
            break
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")


def write_image_atomic(path: Path, array: np.ndarray, overwrite: bool = False) -> None:
    """Write PNG/TIFF/NPY under a temporary name, then rename: never a half-written final file.

    The temporary file is created exclusively, with a random name, in the output's folder (so a link
    planted under a predictable name cannot redirect the write).
    """
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    suffix = path.suffix.lower()
    try:
        if suffix in {".tif", ".tiff"}:
            import tifffile

            tifffile.imwrite(tmp, array, photometric=tiff_photometric(array))
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


# ----------------------------------------------------------------------------- zarr


@dataclass
class ZarrInput:
    """A zarr array to read, and what an output written like it needs (OME-Zarr layout)."""

    array: object  # zarr.Array
    zarr_format: int
    array_path: str | None = None  # path of the level-0 array inside an OME-Zarr group
    group_attrs: dict | None = None  # multiscales metadata for the output (level 0 only)


def require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{module} is needed for this (zarr files, --scheduler); install it with "
            "`pip install 'napari-fcnn-deblur[dask]'`"
        ) from err


def open_zarr_input(path: Path) -> ZarrInput:
    """Open a zarr array or an OME-Zarr image (its full-resolution level) for reading."""
    zarr = require("zarr")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    node = zarr.open(str(path), mode="r")
    fmt = int(node.metadata.zarr_format)
    if isinstance(node, zarr.Array):
        return ZarrInput(node, fmt)
    attrs = dict(node.attrs)
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else None
    multiscales = (ome or attrs).get("multiscales")
    if multiscales:
        ms0 = dict(multiscales[0])
        ds0 = ms0["datasets"][0]
        ms0["datasets"] = [ds0]
        if ome:  # OME-Zarr 0.5 (zarr v3); display settings ("omero") do not fit the output
            out_attrs = {"ome": {**{k: v for k, v in ome.items() if k != "omero"}, "multiscales": [ms0]}}
        else:  # OME-Zarr 0.4 (zarr v2)
            out_attrs = {"multiscales": [ms0]}
        return ZarrInput(node[ds0["path"]], fmt, ds0["path"], out_attrs)
    arrays = list(node.array_keys())
    if len(arrays) != 1:
        raise ValueError(f"{path} is a zarr group with {len(arrays)} arrays and no OME multiscales; pass one array")
    return ZarrInput(node[arrays[0]], fmt, arrays[0], None)


def partial_zarr(path: Path) -> Path:
    return path.with_name(f".{path.stem}.partial.zarr")


@contextlib.contextmanager
def zarr_output_atomic(path: Path, overwrite: bool = False):
    """Yield a temporary ``.NAME.partial.zarr`` path to write; renamed to ``path`` only on success."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_zarr(path)
    if tmp.exists():  # left by a killed run
        shutil.rmtree(tmp)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def output_chunks(shape: tuple[int, ...], rgb: bool) -> tuple[int, ...]:
    if rgb:
        return (min(shape[0], 2048), min(shape[1], 2048), shape[2])
    return (1,) * (len(shape) - 2) + (min(shape[-2], 2048), min(shape[-1], 2048))


def create_zarr_output(tmp: Path, shape, dtype, rgb: bool, like: ZarrInput | None = None) -> tuple[str, str | None]:
    """Create the output array in ``tmp`` (an OME-Zarr group if the input was one); returns (store, array path)."""
    zarr = require("zarr")
    fmt = like.zarr_format if like is not None else 3
    kwargs = dict(shape=tuple(shape), dtype=np.dtype(dtype), chunks=output_chunks(tuple(shape), rgb), zarr_format=fmt)
    if fmt == 2:
        kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
    if like is not None and like.group_attrs is not None:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=fmt)
        root.attrs.update(like.group_attrs)
        kwargs.pop("zarr_format")  # the group's
        root.create_array(like.array_path, **kwargs)
        return str(tmp), like.array_path
    zarr.create_array(str(tmp), **kwargs)
    return str(tmp), None


def store_zarr_plane(block: np.ndarray, store: str, array_path: str | None, region: tuple) -> int:
    """Write one block into the output zarr array (runs in a worker with --scheduler)."""
    import zarr

    arr = zarr.open_array(store, path=array_path or "", mode="r+")
    arr[region] = block
    return 1


def write_zarr_block(arr, region, block: np.ndarray) -> None:
    """Write one plane (or block) into an open zarr array."""
    arr[region] = block
