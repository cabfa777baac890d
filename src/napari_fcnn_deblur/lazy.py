"""Lazy deblurring of dask arrays: one task per (Y, X) plane.

:func:`napari_fcnn_deblur.deblur` hands dask arrays to :func:`deblur_lazy`,
which returns a lazy float32 dask array of the same shape, in the input's
intensity units, like the eager path.  Every chunk of the result is one whole
(Y, X) plane (one colour channel for RGB(A)); inside its task a plane larger
than one tile runs through the tiled engine of :mod:`.tiling`, so a task's
memory is bounded by the plane, not the stack.

What is computed up front (eagerly, once):

- the intensity map (:mod:`.intensity`): from the whole array when it has at
  most 4 million values (then identical to the eager path), otherwise from a
  strided sample of about 2 million values (plus the exact min/max for float
  images, which decide whether they are already on [0, 1]);
- with ``noise_level="auto"`` the noise estimate, on up to 16 evenly spaced
  planes (as :func:`~.noise_estimation.estimate_noise_level`).

Tasks receive the model as it was passed: give a file path (``model=PATH``)
when the graph runs on a ``distributed`` cluster, so every worker loads (and
caches) the file itself rather than receiving a pickled network.

This module imports dask; ``import napari_fcnn_deblur`` does not.
"""

from __future__ import annotations

import logging
import math
import os

import dask
import dask.array as da
import numpy as np

from .intensity import HIGH_PERCENTILE, LOW_PERCENTILE, IntensityScaling, intensity_scaling
from .kernel_checks import prepare_kernel

logger = logging.getLogger(__name__)

#: Arrays with at most this many values get the exact (eager) intensity map.
EXACT_SIZE = 4_000_000
#: Approximate number of values in the strided sample of larger arrays.
SAMPLE_SIZE = 2_000_000
#: Name prefix of the per-plane tasks (progress bars count these).
TASK_PREFIX = "fcnn-deblur"


def _check_lazy_image(a: da.Array) -> None:
    if (
        a.dtype == bool
        or a.dtype == object
        or not np.issubdtype(a.dtype, np.number)
        or np.issubdtype(a.dtype, np.complexfloating)
    ):
        raise ValueError(f"the image must be a real numeric array (integer or float), got dtype {a.dtype}")
    if a.ndim < 2:
        raise ValueError(f"the image must be at least 2D (Y, X), got shape {a.shape}")
    if any(math.isnan(s) for s in a.shape):
        raise ValueError("the dask array has unknown chunk sizes; call .compute_chunk_sizes() first")
    if a.size == 0:
        raise ValueError(f"the image is empty (shape {a.shape})")


def _is_rgb_shape(shape) -> bool:
    return len(shape) == 3 and shape[-1] in (3, 4) and shape[0] > 4 and shape[1] > 4


def _percentile_scaling(sample: np.ndarray) -> IntensityScaling:
    """The robust percentile map of :func:`~.intensity.intensity_scaling` on a sample."""
    sample = np.asarray(sample).ravel()
    lo, hi = np.percentile(sample.astype(np.float64), [LOW_PERCENTILE, HIGH_PERCENTILE])
    if not hi > lo:
        lo, hi = float(sample.min()), float(sample.max())
    if not hi > lo:
        return IntensityScaling(float(lo), 1.0)
    return IntensityScaling(float(lo), float(hi - lo))


def lazy_intensity_scaling(a: da.Array) -> IntensityScaling:
    """Intensity map of a dask array (RGB: of its colour channels), computed now.

    Raises ``ValueError`` for NaN or infinite pixels in a float array.
    """
    if a.dtype == np.uint8:
        return IntensityScaling(0.0, 255.0)
    floating = np.issubdtype(a.dtype, np.floating)
    if a.size <= EXACT_SIZE:
        values = np.asarray(a.compute())
        if floating and not np.all(np.isfinite(values)):
            raise ValueError("the image contains NaN or infinite pixels; replace them (e.g. np.nan_to_num) first")
        return intensity_scaling(values)
    factor = a.size / SAMPLE_SIZE
    step_yx = max(1, int(math.ceil(math.sqrt(factor))))
    steps = [1] * a.ndim
    steps[-2] = steps[-1] = step_yx
    if a.ndim > 2:  # many planes: stride over them too
        per_plane = math.ceil(a.shape[-2] / step_yx) * math.ceil(a.shape[-1] / step_yx)
        n_planes = a.size // (a.shape[-1] * a.shape[-2])
        steps[0] = max(1, int(n_planes * per_plane // SAMPLE_SIZE))
    sample = a[tuple(slice(None, None, s) for s in steps)]
    if floating:
        lo, hi, values = dask.compute(a.min(), a.max(), sample)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError("the image contains NaN or infinite pixels; replace them (e.g. np.nan_to_num) first")
        if lo >= -0.25 and hi <= 1.25:
            return IntensityScaling(0.0, 1.0)
    else:
        values = sample.compute()
    return _percentile_scaling(values)


def lazy_noise_level(a: da.Array, scaling: IntensityScaling, rgb: bool) -> float:
    """Noise s.d. estimate on up to 16 evenly spaced planes (as :func:`~.noise_estimation.estimate_noise_level`)."""
    from .noise_estimation import haar_mad_sigma

    planes = da.moveaxis(a[..., :3], -1, 0) if rgb else a.reshape((-1,) + a.shape[-2:])
    idx = np.unique(np.linspace(0, len(planes) - 1, min(16, len(planes))).round().astype(int))
    picked = planes[idx].compute()
    sig = [haar_mad_sigma(scaling.forward(p)) for p in picked]
    return float(np.median(sig))


def _deblur_block(
    block: np.ndarray,
    kernel: np.ndarray,
    scaling: IntensityScaling,
    noise_level: float,
    iterations: int,
    device,
    model,
    tile_size,
    rgb: bool,
    precision: str = "auto",
    block_info=None,
) -> np.ndarray:
    """One task: deblur the plane(s) of one chunk (whole Y, X), in the input's units, float32."""
    from .api import _model_on, check_precision, run_planes_auto
    from .devices import resolve_device
    from .model_io import get_model

    if rgb and block_info is not None and block_info[0]["chunk-location"][-1] == 3:
        return block.astype(np.float32)  # alpha passes through
    if np.issubdtype(block.dtype, np.floating) and not np.all(np.isfinite(block)):
        raise ValueError("the image contains NaN or infinite pixels; replace them (e.g. np.nan_to_num) first")
    dev = resolve_device(device)
    cascade = _model_on(get_model(model, noise_level), dev)
    if rgb:
        planes = np.moveaxis(block, -1, 0)
    else:
        planes = block.reshape((-1,) + block.shape[-2:])
    result = run_planes_auto(scaling.forward(planes), kernel, cascade, iterations, dev, tile_size,
                             autocast_dtype=check_precision(precision, dev))
    result = scaling.inverse(result)
    if rgb:
        return np.ascontiguousarray(np.moveaxis(result, 0, -1), dtype=np.float32)
    return result.reshape(block.shape).astype(np.float32, copy=False)


def deblur_lazy(image, kernel, noise_level=0.01, iterations=None, device="auto", model=None, tile_size=None,
                intensity_range=None, precision="auto") -> da.Array:
    """Lazy :func:`~napari_fcnn_deblur.deblur` of a dask array (see the module docstring).

    Arguments are checked (and the model loaded once, to check it) now; a
    ``ValueError`` comes before any plane is deblurred.
    """
    from .api import _check_iterations, _check_noise, _is_auto, check_precision
    from .devices import resolve_device
    from .model_io import get_model
    from .tiling import check_tile_size

    a = image if isinstance(image, da.Array) else da.asarray(image)
    _check_lazy_image(a)
    rgb = _is_rgb_shape(a.shape)
    plane_shape = a.shape[:2] if rgb else a.shape[-2:]
    k = prepare_kernel(kernel, plane_shape)
    if not _is_auto(noise_level):
        nl = _check_noise(noise_level)
    dev = resolve_device(device)
    check_precision(precision, dev)
    tile_size = check_tile_size(tile_size)
    if intensity_range is None:
        scaling = lazy_intensity_scaling(a[..., :3] if rgb else a)
    else:
        from .api import _scaling_from_range

        scaling = _scaling_from_range(intensity_range)
    if _is_auto(noise_level):
        nl = float(np.clip(lazy_noise_level(a, scaling, rgb), 0.0, 0.5))
        logger.info("estimated noise level: %.4g (%.2f %% of the [0, 1] range)", nl, 100 * nl)
    cascade = get_model(model, nl)
    it = _check_iterations(iterations, cascade)
    task_model = os.fspath(model) if isinstance(model, (str, os.PathLike)) else model
    task_device = str(dev) if device is None or str(device).strip().lower() != "auto" else "auto"

    if rgb:
        a = a.rechunk((-1, -1, 1))
    else:
        a = a.rechunk((1,) * (a.ndim - 2) + (-1, -1))
    token = dask.base.tokenize(
        a.name,
        k,
        scaling,
        nl,
        it,
        task_device,
        task_model if not hasattr(task_model, "state_dict") else id(task_model),
        tile_size,
        precision,
    )
    return a.map_blocks(
        _deblur_block,
        k,
        scaling,
        nl,
        it,
        task_device,
        task_model,
        tile_size,
        rgb,
        precision,
        dtype=np.float32,
        meta=np.empty((0,) * a.ndim, np.float32),
        name=f"{TASK_PREFIX}-{token}",
    )
