"""Estimating the Gaussian noise level of a blurry image, one rule for every entry point.

Blur removes the finest detail of an image but not the noise added after it,
so the noise s.d. can be read off the finest wavelet scale: the median
absolute deviation of the finest diagonal (Haar) wavelet coefficients / 0.6745
(Donoho & Johnstone, 1994; as ``skimage.restoration.estimate_sigma``, without
needing PyWavelets).  A stack gives the median over up to
:data:`MAX_PLANES` evenly spaced planes (RGB: over its colour channels), read
one at a time, so numpy, dask and zarr arrays of any size are estimated alike.
"""

from __future__ import annotations

import numpy as np

from .intensity import IntensityScaling, intensity_scaling
from .layout import PlaneLayout

#: Most planes read for the estimate of a stack.
MAX_PLANES = 16


def haar_mad_sigma(plane: np.ndarray) -> float:
    """Noise s.d. of a 2D plane from its finest diagonal Haar coefficients (MAD / 0.6745)."""
    p = np.asarray(plane, dtype=np.float64)
    if min(p.shape[-2:]) < 2:
        raise ValueError(f"a plane of {p.shape[0]}×{p.shape[1]} pixels is too small to estimate its noise "
                         "(at least 2×2 needed); give noise_level as a number")
    h, w = (p.shape[0] // 2) * 2, (p.shape[1] // 2) * 2
    p = p[:h, :w]
    # orthonormal Haar HH: unit gain for white noise
    hh = (p[0::2, 0::2] - p[0::2, 1::2] - p[1::2, 0::2] + p[1::2, 1::2]) / 2.0
    return float(np.median(np.abs(hh)) / 0.6745)


def estimate_noise_level(image, scaling: IntensityScaling | None = None, rgb: bool | None = None) -> float:
    """Noise s.d. of ``image`` on the [0, 1] scale used by :func:`napari_fcnn_deblur.deblur`.

    Parameters
    ----------
    image : array-like (numpy, dask, zarr), 2D, RGB(A) (Y, X, 3|4) or a stack (..., Y, X)
    scaling : IntensityScaling, optional
        The map to [0, 1]; default :func:`~.intensity.intensity_scaling` of the image.
    rgb : bool, optional
        Whether ``image`` is RGB(A); default the rule of :mod:`.layout`.
    """
    layout = PlaneLayout.of(image.shape, rgb)
    if scaling is None:
        scaling = intensity_scaling(layout.colour(image))
    n = layout.n_planes
    idx = np.unique(np.linspace(0, n - 1, min(MAX_PLANES, n)).round().astype(int))
    sig = [haar_mad_sigma(scaling.forward(layout.plane(image, int(i)))) for i in idx]
    return float(np.median(sig))
