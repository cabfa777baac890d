"""Validation and normalisation of blur kernels at the API boundary."""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


def prepare_kernel(kernel, image_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Check a blur kernel and bring it to the engine's convention.

    The engine wants a 2D, non-negative, odd-sized kernel summing to 1 whose
    middle pixel is the centre of the blur.  This function

    - rejects what cannot be a kernel (not 2D, empty, NaN/inf, negative mass,
      all zero, larger than the image) with a ``ValueError``;
    - clips tiny negative values (noise in a measured PSF, below 1 % of the
      peak) to zero;
    - pads even sides with one zero row/column at the end, so the pixel
      ``(h // 2, w // 2)`` stays the centre (the usual convention of
      ``psf2otf`` and of a *valid* convolution);
    - normalises to sum 1 (logged when the sum was not already 1).

    The kernel is *not* shifted to its centroid: a motion kernel's frame
    defines where the result lands.  Use :func:`napari_fcnn_deblur.psf.center_psf`
    for a measured PSF whose peak is off-centre.

    Returns a new float32 array; the input is never modified.
    """
    k = np.asarray(kernel)
    if k.dtype == bool or not (np.issubdtype(k.dtype, np.number)) or np.iscomplexobj(k):
        raise ValueError(f"the kernel must be a real numeric array, got dtype {k.dtype}")
    while k.ndim > 2 and k.shape[0] == 1:  # e.g. a (1, kh, kw) PSF stack of one plane
        k = k[0]
    if k.ndim != 2:
        raise ValueError(
            f"the kernel must be a 2D array (Y, X), got shape {np.shape(kernel)}; "
            "for a 3D PSF pass one plane, for an RGB image convert it to grey"
        )
    if k.size == 0:
        raise ValueError("the kernel is empty")
    k = k.astype(np.float64)
    if not np.all(np.isfinite(k)):
        raise ValueError("the kernel contains NaN or infinite values")
    peak = np.abs(k).max()
    if peak == 0:
        raise ValueError("the kernel is all zero: a blur kernel needs positive total mass")
    neg = k < 0
    if np.any(neg):
        if -k.min() > 0.01 * k.max() or k.sum() <= 0:
            raise ValueError(
                f"the kernel has negative values (down to {k.min():.3g}, peak {k.max():.3g}); "
                "a blur kernel must be non-negative"
            )
        k = np.where(neg, 0.0, k)
    total = k.sum()
    if not np.isfinite(total):  # the sum of huge values overflows: scale first (normalised to sum 1 below anyway)
        k = k / peak
        total = k.sum()
    if total <= 0:
        raise ValueError("the kernel sums to zero: a blur kernel needs positive total mass")
    if image_shape is not None and (k.shape[0] > image_shape[0] or k.shape[1] > image_shape[1]):
        raise ValueError(
            f"the kernel ({k.shape[0]}×{k.shape[1]}) is larger than the image "
            f"({image_shape[0]}×{image_shape[1]}); crop the kernel or use a larger image"
        )
    pad = ((0, 1 - k.shape[0] % 2), (0, 1 - k.shape[1] % 2))
    if pad != ((0, 0), (0, 0)):
        k = np.pad(k, pad)
    if abs(total - 1.0) > 1e-3:
        logger.info("kernel normalised to sum 1 (its sum was %.4g)", total)
    return (k / total).astype(np.float32)
