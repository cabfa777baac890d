"""Estimating the Gaussian noise level of a blurry image.

Blur removes the finest detail of an image but not the noise added after it,
so the noise s.d. can be read off the finest wavelet scale: the median
absolute deviation of the finest diagonal (Haar) wavelet coefficients / 0.6745
(Donoho & Johnstone, 1994; as ``skimage.restoration.estimate_sigma``, without
needing PyWavelets).
"""

from __future__ import annotations

import numpy as np

from .intensity import intensity_scaling


def estimate_noise_level(image) -> float:
    """Noise s.d. of ``image`` on the [0, 1] scale used by :func:`napari_fcnn_deblur.deblur`.

    ``image``: 2D, RGB (Y, X, 3) or a stack (..., Y, X); a stack gives the median
    of up to 16 evenly spaced planes.
    """
    a = np.asarray(image)
    rgb = a.ndim == 3 and a.shape[-1] in (3, 4)
    scaling = intensity_scaling(a[..., :3] if rgb else a)
    if rgb:
        planes = np.moveaxis(a[..., :3], -1, 0)
    else:
        planes = a.reshape((-1,) + a.shape[-2:])
    idx = np.unique(np.linspace(0, len(planes) - 1, min(16, len(planes))).round().astype(int))
    sig = [haar_mad_sigma(scaling.forward(planes[i])) for i in idx]
    return float(np.median(sig))


def haar_mad_sigma(plane: np.ndarray) -> float:
    """Noise s.d. of a 2D plane from its finest diagonal Haar coefficients (MAD / 0.6745)."""
    p = np.asarray(plane, dtype=np.float64)
    h, w = (p.shape[0] // 2) * 2, (p.shape[1] // 2) * 2
    p = p[:h, :w]
    # orthonormal Haar HH: unit gain for white noise
    hh = (p[0::2, 0::2] - p[0::2, 1::2] - p[1::2, 0::2] + p[1::2, 1::2]) / 2.0
    return float(np.median(np.abs(hh)) / 0.6745)
