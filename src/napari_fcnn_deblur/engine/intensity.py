"""Mapping images to the [0, 1] intensity scale the networks were trained on, and back.

One rule for every entry point and every kind of array (numpy, dask, zarr, a
napari layer's data), see :func:`intensity_scaling`:

- float images whose values already lie about in [0, 1] (between -0.25 and
  1.25, leaving room for noise) are used as they are;
- ``uint8`` images are divided by 255 (their full range);
- everything else (uint16, other integers, floats in other ranges) is mapped
  linearly so that the 0.05th percentile goes to 0 and the 99.95th to 1
  (robust to hot pixels); results are mapped back with the inverse map.

Percentiles come from every value of arrays with at most :data:`EXACT_SIZE`
values, otherwise from a strided sample of about :data:`SAMPLE_SIZE` values
(every k-th row and column, and every m-th plane); the [0, 1] test of float
images always uses the exact minimum and maximum.

``noise_level`` always means the noise s.d. on that [0, 1] scale.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

#: Percentiles of the robust map for images not already on [0, 1].
LOW_PERCENTILE = 0.05
HIGH_PERCENTILE = 99.95
#: Arrays with at most this many values use all of them for the percentiles.
EXACT_SIZE = 4_000_000
#: Approximate number of values in the strided sample of larger arrays.
SAMPLE_SIZE = 2_000_000
#: A float image taken as [0, 1] whose values span less than this gets a warning (signal below any noise level).
TINY_RANGE = 1e-3

_NONFINITE = "the image contains NaN or infinite pixels; replace them (e.g. np.nan_to_num) first"


@dataclass(frozen=True)
class IntensityScaling:
    """``scaled = (image - offset) / scale``; ``image = scaled * scale + offset``."""

    offset: float = 0.0
    scale: float = 1.0

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``x`` on the [0, 1] scale: a new float32 array (computed in float32, one array of memory)."""
        out = np.subtract(x, np.float32(self.offset), dtype=np.float32)
        out /= np.float32(self.scale)
        return out

    def inverse(self, x: np.ndarray) -> np.ndarray:
        """``x`` (on the [0, 1] scale) in the image's units: a new float32 array."""
        out = np.multiply(x, np.float32(self.scale), dtype=np.float32)
        out += np.float32(self.offset)
        return out

    @classmethod
    def from_range(cls, intensity_range) -> IntensityScaling:
        """The map sending ``(low, high)`` (image units) to (0, 1), validated."""
        try:
            lo, hi = (float(v) for v in intensity_range)
        except (TypeError, ValueError):
            raise ValueError(f"intensity_range must be (low, high), got {intensity_range!r}") from None
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise ValueError(f"intensity_range must be two finite values with high > low, got {intensity_range!r}")
        limit = float(np.finfo(np.float32).max)
        if max(abs(lo), abs(hi), hi - lo) > limit:
            raise ValueError(f"intensity_range {intensity_range!r} is beyond what float32 holds ({limit:.3g})")
        return cls(lo, hi - lo)


def strided_sample(a) -> np.ndarray:
    """All values of an array-like with ≤ :data:`EXACT_SIZE` values, else a strided sample (numpy)."""
    size = math.prod(a.shape)
    if size <= EXACT_SIZE:
        return np.asarray(a[...])
    step_yx = max(1, int(math.ceil(math.sqrt(size / SAMPLE_SIZE))))
    steps = [1] * len(a.shape)
    steps[-2] = steps[-1] = step_yx
    if len(a.shape) > 2:  # many planes: stride over them too
        per_plane = math.ceil(a.shape[-2] / step_yx) * math.ceil(a.shape[-1] / step_yx)
        n_planes = size // (a.shape[-1] * a.shape[-2])
        steps[0] = max(1, int(n_planes * per_plane // SAMPLE_SIZE))
    return np.asarray(a[tuple(slice(None, None, s) for s in steps)])


def _min_max(a, sample: np.ndarray) -> tuple[float, float]:
    """Exact min and max of an array-like (``sample`` when it is the whole array)."""
    if sample.size == math.prod(a.shape):
        return float(np.min(sample)), float(np.max(sample))
    if isinstance(a, np.ndarray):
        return float(np.min(a)), float(np.max(a))
    import dask
    import dask.array as da

    d = a if isinstance(a, da.Array) else da.from_array(a)
    lo, hi = dask.compute(d.min(), d.max())
    return float(lo), float(hi)


def intensity_scaling(image) -> IntensityScaling:
    """The map from ``image``'s own units to the [0, 1] scale (rule in the module docstring).

    ``image`` is any array-like with ``shape``, ``dtype`` and slicing (numpy,
    dask, zarr); for RGB pass the colour channels only.  Raises ``ValueError``
    for NaN or infinite pixels in a float image.
    """
    dtype = np.dtype(image.dtype)
    if dtype == np.uint8:
        return IntensityScaling(0.0, 255.0)
    sample = strided_sample(image)
    if np.issubdtype(dtype, np.floating):
        lo, hi = _min_max(image, sample)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError(_NONFINITE)
        if lo >= -0.25 and hi <= 1.25:
            if hi - lo < TINY_RANGE:
                warnings.warn(
                    f"the image's values span only {hi - lo:.3g} (from {lo:.3g} to {hi:.3g}); it is taken as already "
                    "on the [0, 1] scale, so its signal is below the noise levels the models know. Pass "
                    "intensity_range=(low, high) (or --intensity-range) to map its own range to [0, 1]",
                    stacklevel=3,
                )
            return IntensityScaling(0.0, 1.0)
    lo, hi = np.percentile(sample.ravel().astype(np.float64), [LOW_PERCENTILE, HIGH_PERCENTILE])
    if not hi > lo:
        lo, hi = float(sample.min()), float(sample.max())
    if not hi > lo:  # constant image: nothing to deblur, keep units
        return IntensityScaling(float(lo), 1.0)
    return IntensityScaling(float(lo), float(hi - lo))
