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


# ----------------------------------------------------------------------------- TIFF metadata

#: ImageJ metadata entries carried from an input TIFF to its result (display ranges and LUTs are not:
#: they describe the input's values).
IMAGEJ_KEYS = ("spacing", "unit", "finterval", "fps", "xorigin", "yorigin", "zorigin", "Labels", "Properties")
#: OME Pixels attributes carried from an input OME-TIFF to its result.
OME_PIXEL_KEYS = tuple(
    f"{name}{suffix}"
    for name in ("PhysicalSizeX", "PhysicalSizeY", "PhysicalSizeZ", "TimeIncrement")
    for suffix in ("", "Unit")
)


@dataclass(frozen=True)
class TiffMetadata:
    """What an input TIFF says about its pixels, to be written again with the result.

    ``axes`` are tifffile's series axes (e.g. ``"ZCYX"``); ``resolution`` the X/Y resolution tags
    (pixels per ``resolution_unit``: 1 none, 2 inch, 3 cm); ``imagej`` the entries of
    :data:`IMAGEJ_KEYS` (voxel depth ``spacing``, ``unit``, channel/slice ``Labels``...) of an ImageJ
    hyperstack; ``ome`` the physical sizes and channel names of an OME-TIFF.
    """

    axes: str
    shape: tuple[int, ...]
    resolution: tuple[float, float] | None = None
    resolution_unit: int | None = None
    imagej: dict | None = None
    ome: dict | None = None


def _ome_pixels(xml: str) -> dict | None:
    import tifffile

    try:
        image = tifffile.xml2dict(xml)["OME"]["Image"]
        pixels = (image[0] if isinstance(image, list) else image)["Pixels"]
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    out = {k: pixels[k] for k in OME_PIXEL_KEYS if k in pixels}
    channels = pixels.get("Channel")
    channels = channels if isinstance(channels, list) else [channels] if isinstance(channels, dict) else []
    names = [c.get("Name") for c in channels]
    if names and all(isinstance(n, str) for n in names):
        out["Channel"] = {"Name": names}
    return out


def read_tiff_metadata(path: Path) -> TiffMetadata | None:
    """The pixel sizes, units, channel names and axes of a TIFF file (None for other files)."""
    if path.suffix.lower() not in {".tif", ".tiff"}:
        return None
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        page = tif.pages[0]
        res = unit = None
        if "XResolution" in page.tags and "YResolution" in page.tags:
            xr, yr = page.tags["XResolution"].value, page.tags["YResolution"].value
            res = (xr[0] / xr[1], yr[0] / yr[1]) if xr[1] and yr[1] else None
            unit = int(page.tags["ResolutionUnit"].value) if "ResolutionUnit" in page.tags else 2
        imagej = None
        if tif.is_imagej and tif.imagej_metadata:
            imagej = {k: v for k, v in tif.imagej_metadata.items() if k in IMAGEJ_KEYS}
        ome = _ome_pixels(tif.ome_metadata) if tif.is_ome and tif.ome_metadata else None
        return TiffMetadata(series.axes, tuple(series.shape), res, unit, imagej, ome)


def tiff_write_options(meta: TiffMetadata | None, array: np.ndarray) -> dict:
    """``tifffile.imwrite`` keyword arguments that write ``array`` with ``meta`` (an input's metadata):
    OME-XML for an OME-TIFF input, ImageJ hyperstack metadata for an ImageJ input, the resolution tags
    always.  Nothing when the result's shape differs from the input's."""
    opts: dict = {"photometric": tiff_photometric(array)}
    if meta is None or tuple(array.shape) != meta.shape:
        return opts
    if meta.resolution is not None:
        opts["resolution"] = meta.resolution
        opts["resolutionunit"] = meta.resolution_unit
    if meta.ome is not None:
        opts.update(ome=True, metadata={"axes": meta.axes, **meta.ome})
    elif meta.imagej is not None and array.dtype in (np.uint8, np.uint16, np.float32) and "S" not in meta.axes:
        opts.update(imagej=True, metadata={"axes": meta.axes, **meta.imagej})
        opts.pop("resolutionunit", None)  # ImageJ keeps its unit in the metadata
        opts["photometric"] = "minisblack"
    return opts


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


def write_image_atomic(path: Path, array: np.ndarray, overwrite: bool = False,
                       tiff_metadata: TiffMetadata | None = None) -> None:
    """Write PNG/TIFF/NPY under a temporary name, then rename: never a half-written final file.

    The temporary file is created exclusively, with a random name, in the output's folder (so a link
    planted under a predictable name cannot redirect the write).  A TIFF output carries
    ``tiff_metadata`` (the input's pixel sizes, units, channel names: :func:`tiff_write_options`).
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

            tifffile.imwrite(tmp, array, **tiff_write_options(tiff_metadata, array))
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
    group_attrs: dict | None = None  # multiscales metadata for the output (every level)
    levels: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (path, shape) of the lower-resolution levels


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
        levels = tuple((d["path"], tuple(node[d["path"]].shape)) for d in ms0["datasets"][1:])
        if ome:  # OME-Zarr 0.5 (zarr v3); display settings ("omero") do not fit the output
            out_attrs = {"ome": {**{k: v for k, v in ome.items() if k != "omero"}, "multiscales": [ms0]}}
        else:  # OME-Zarr 0.4 (zarr v2)
            out_attrs = {"multiscales": [ms0]}
        return ZarrInput(node[ds0["path"]], fmt, ds0["path"], out_attrs, levels)
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


def downsample_mean(block: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``block`` averaged over integer factors (the rounded size ratios) to ``shape``: a trailing partial
    window is averaged over what it has (OME-Zarr pyramids round level sizes either way)."""
    out = np.asarray(block, dtype=np.float64)
    for ax, n in enumerate(shape):
        f = max(1, round(out.shape[ax] / n))
        if f > 1:
            edges = np.arange(0, out.shape[ax], f)
            out = np.add.reduceat(out, edges, axis=ax) / np.diff(np.append(edges, out.shape[ax])).reshape(
                [-1 if a == ax else 1 for a in range(out.ndim)])
        if out.shape[ax] < n:  # pad by repeating the edge
            pad = [(0, n - out.shape[ax]) if a == ax else (0, 0) for a in range(out.ndim)]
            out = np.pad(out, pad, mode="edge")
        out = out[tuple(slice(0, n) if a == ax else slice(None) for a in range(out.ndim))]
    return out


#: Units of TIFF metadata as OME-Zarr (UDUNITS-2) names.
OME_UNITS = {"um": "micrometer", "µm": "micrometer", "\u03bcm": "micrometer", "micron": "micrometer",
             "microns": "micrometer", "micrometer": "micrometer", "nm": "nanometer", "nanometer": "nanometer",
             "mm": "millimeter", "millimeter": "millimeter", "cm": "centimeter", "m": "meter", "s": "second",
             "sec": "second", "ms": "millisecond", "min": "minute", "h": "hour"}
#: An OME-Zarr output of a TIFF input gets 2× (Y, X) levels while the smaller side is above this.
PYRAMID_MIN_SIDE = 512
PYRAMID_MAX_LEVELS = 5


def tiff_pixel_sizes(meta: TiffMetadata) -> tuple[dict[str, float], dict[str, str]]:
    """Physical pixel sizes ``{"x": .., "y": .., "z": .., "t": ..}`` and their OME-Zarr units from a TIFF's
    metadata (OME physical sizes, else ImageJ spacing/unit and the resolution tags); only what it states."""
    sizes: dict[str, float] = {}
    units: dict[str, str] = {}
    if meta.ome:
        for ax in "XYZ":
            if f"PhysicalSize{ax}" in meta.ome:
                sizes[ax.lower()] = float(meta.ome[f"PhysicalSize{ax}"])
                units[ax.lower()] = OME_UNITS.get(str(meta.ome.get(f"PhysicalSize{ax}Unit", "µm")), "micrometer")
        if "TimeIncrement" in meta.ome:
            sizes["t"] = float(meta.ome["TimeIncrement"])
            units["t"] = OME_UNITS.get(str(meta.ome.get("TimeIncrementUnit", "s")), "second")
        return sizes, units
    unit = None
    if meta.imagej:
        unit = OME_UNITS.get(str(meta.imagej.get("unit", "")).strip())
        if "spacing" in meta.imagej:
            sizes["z"] = float(meta.imagej["spacing"])
        if "finterval" in meta.imagej:
            sizes["t"], units["t"] = float(meta.imagej["finterval"]), "second"
    elif meta.resolution_unit in (2, 3):
        unit = "micrometer"
    if meta.resolution is not None and all(r > 0 for r in meta.resolution) and unit is not None:
        per_unit = {2: 25400.0, 3: 10000.0}.get(meta.resolution_unit or 1, 1.0)  # inch/cm → µm
        if meta.imagej:
            per_unit = 1.0
        sizes["x"], sizes["y"] = per_unit / meta.resolution[0], per_unit / meta.resolution[1]
    if "z" in sizes or "x" in sizes:
        for ax in "xyz":
            if ax in sizes and unit is not None:
                units[ax] = unit
    return sizes, units


#: Micrometres per unit of the lengths in TIFF / OME-Zarr metadata.
UM_PER_UNIT = {"micrometer": 1.0, "nanometer": 1e-3, "millimeter": 1e3, "centimeter": 1e4, "meter": 1e6}


def spacing_um(source) -> tuple[float, float, float] | None:
    """Voxel size (dz, dy, dx) in µm stated by a TIFF's metadata (:class:`TiffMetadata`) or an OME-Zarr input
    (:class:`ZarrInput`, level 0's scale and its axes' units); None unless all three are stated."""
    if isinstance(source, TiffMetadata):
        sizes, units = tiff_pixel_sizes(source)
    elif isinstance(source, ZarrInput) and source.group_attrs:
        attrs = source.group_attrs.get("ome", source.group_attrs)
        try:
            ms = attrs["multiscales"][0]
            axes = [a["name"] if isinstance(a, dict) else str(a) for a in ms["axes"]]
            scale = next(t["scale"] for t in ms["datasets"][0]["coordinateTransformations"] if t["type"] == "scale")
        except (KeyError, IndexError, StopIteration, TypeError):
            return None
        sizes = {a: float(v) for a, v in zip(axes, scale)}
        units = {a["name"]: a.get("unit", "micrometer") for a in ms["axes"] if isinstance(a, dict)}
    else:
        return None
    if not all(a in sizes for a in "zyx"):
        return None
    try:
        return tuple(sizes[a] * UM_PER_UNIT[units.get(a, "micrometer")] for a in "zyx")  # type: ignore[return-value]
    except KeyError:  # a unit that is not a length
        return None


def ome_zarr_layout(meta: TiffMetadata | None, shape: tuple[int, ...], rgb: bool) -> ZarrInput | None:
    """An OME-Zarr 0.5 layout (axes, physical scales, a 2× pyramid) for a result of ``shape`` whose input
    was a TIFF with ``meta``; None (a plain zarr array) when the TIFF's axes are not OME-Zarr's order."""
    if meta is None or rgb or tuple(shape) != meta.shape:
        return None
    axes = meta.axes.lower()
    order = "tczyx"
    if len(set(axes)) != len(axes) or any(a not in order for a in axes) or list(axes) != sorted(axes, key=order.index):
        return None
    sizes, units = tiff_pixel_sizes(meta)
    kinds = {"t": "time", "c": "channel"}
    ome_axes = []
    for a in axes:
        entry = {"name": a, "type": kinds.get(a, "space")}
        if a in units:
            entry["unit"] = units[a]
        ome_axes.append(entry)
    scale0 = [sizes.get(a, 1.0) for a in axes]
    shapes = [tuple(shape)]
    while min(shapes[-1][-2:]) > PYRAMID_MIN_SIDE and len(shapes) < PYRAMID_MAX_LEVELS:
        shapes.append(shapes[-1][:-2] + tuple((n + 1) // 2 for n in shapes[-1][-2:]))
    datasets = []
    for i, sh in enumerate(shapes):
        scale = [s * (shape[a] / sh[a]) for a, s in enumerate(scale0)]
        datasets.append({"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    ms = {"version": "0.5", "name": "deblurred", "axes": ome_axes, "datasets": datasets}
    attrs: dict = {"ome": {"version": "0.5", "multiscales": [ms]}}
    names = (meta.ome or {}).get("Channel", {}).get("Name")
    if "c" in axes and names and len(names) == shape[axes.index("c")]:
        attrs["ome"]["omero"] = {"channels": [{"label": n, "active": True} for n in names]}
    return ZarrInput(None, 3, "0", attrs, tuple((str(i), sh) for i, sh in enumerate(shapes) if i))


def write_zarr_pyramid(store: str, like: ZarrInput) -> None:
    """Write the lower-resolution levels of an OME-Zarr output (the input's paths, shapes, chunks and
    coordinate transforms), each the local mean of the level above; plane by plane along the leading axes."""
    zarr = require("zarr")
    root = zarr.open_group(store, mode="r+")
    prev = root[like.array_path]
    for path, shape in like.levels:
        chunks = tuple(min(c, n) for c, n in zip(prev.chunks, shape, strict=True))
        arr = root.create_array(path, shape=shape, dtype=prev.dtype, chunks=chunks)
        lead = len(shape) - 2
        for idx in np.ndindex(*shape[:lead]):
            src = tuple(
                slice(round(i * prev.shape[a] / shape[a]), round((i + 1) * prev.shape[a] / shape[a]))
                for a, i in enumerate(idx)
            )
            block = downsample_mean(prev[src], (1,) * lead + tuple(shape[lead:]))
            if np.issubdtype(prev.dtype, np.integer):
                info = np.iinfo(prev.dtype)
                block = np.clip(np.rint(block), info.min, info.max)
            arr[idx] = block.astype(prev.dtype).reshape(shape[lead:])
        prev = arr


def store_zarr_plane(block: np.ndarray, store: str, array_path: str | None, region: tuple) -> int:
    """Write one block into the output zarr array (runs in a worker with --scheduler)."""
    import zarr

    arr = zarr.open_array(store, path=array_path or "", mode="r+")
    arr[region] = block
    return 1


def write_zarr_block(arr, region, block: np.ndarray) -> None:
    """Write one plane (or block) into an open zarr array."""
    arr[region] = block
