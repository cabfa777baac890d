"""Validation and normalisation of blur kernels at the API boundary."""

from __future__ import annotations

import logging
import math

import numpy as np

logger = logging.getLogger(__name__)


def prepare_kernel(kernel, image_shape: tuple[int, ...] | None = None, ndim: int = 2) -> np.ndarray:
    """Check a blur kernel and bring it to the engine's convention.

    The engine wants a non-negative, odd-sized kernel of ``ndim`` axes (2: (Y, X) for planes,
    3: (Z, Y, X) for volumes) summing to 1 whose middle pixel is the centre of the blur.  This function

    - rejects what cannot be a kernel (wrong number of axes, empty, NaN/inf, negative mass,
      all zero, larger than the image) with a ``ValueError``;
    - clips tiny negative values (noise in a measured PSF, below 1 % of the
      peak) to zero;
    - pads even sides with one zero row/column (plane) at the end, so the pixel
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
    while k.ndim > ndim and k.shape[0] == 1:  # e.g. a (1, kh, kw) PSF stack of one plane
        k = k[0]
    if k.ndim != ndim:
        if ndim == 2:
            raise ValueError(
                f"the kernel must be a 2D array (Y, X), got shape {np.shape(kernel)}; "
                "for a 3D PSF give a z-stack (Z, Y, X) image to deconvolve volumetrically, or pass one plane"
            )
        raise ValueError(f"a volume's PSF must be a 3D array (Z, Y, X), got shape {np.shape(kernel)}")
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
    if image_shape is not None and any(a > b for a, b in zip(k.shape, image_shape[-ndim:])):
        what = "image" if ndim == 2 else "volume"
        raise ValueError(
            f"the kernel ({'×'.join(map(str, k.shape))}) is larger than the {what} "
            f"({'×'.join(map(str, image_shape[-ndim:]))}); crop the kernel or use a larger {what}"
        )
    pad = tuple((0, 1 - n % 2) for n in k.shape)
    if any(p[1] for p in pad):
        k = np.pad(k, pad)
    if abs(total - 1.0) > 1e-3:
        logger.info("kernel normalised to sum 1 (its sum was %.4g)", total)
    return (k / total).astype(np.float32)


def check_spacing(spacing, ndim: int, what: str = "spacing") -> tuple[float, ...] | None:
    """A voxel/pixel size of ``ndim`` positive finite numbers ((dz,) dy, dx), or None."""
    if spacing is None:
        return None
    names = "(dz, dy, dx)" if ndim == 3 else "(dy, dx)"
    try:
        vals = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be {ndim} sizes {names}, got {spacing!r}") from None
    if len(vals) != ndim or not all(math.isfinite(v) and v > 0 for v in vals):
        raise ValueError(f"{what} must be {ndim} positive sizes {names}, got {spacing!r}")
    return vals


def kernel_on_grid(kernel, image_shape: tuple[int, ...] | None, ndim: int = 2, spacing=None,
                   psf_spacing=None) -> np.ndarray:
    """:func:`prepare_kernel`, after resampling a PSF recorded at ``psf_spacing`` to the image's ``spacing``.

    Both are pixel/voxel sizes in one unit, ``ndim`` values each ((dz,) dy, dx).  A PSF spacing
    without the image's is refused (the PSF would be used on the wrong grid); equal spacings (within
    0.1 %) leave the kernel as it is.  Resampling keeps the PSF's physical size and its centre
    (:func:`napari_fcnn_deblur.data.psf3d.resample_psf`).
    """
    spacing = check_spacing(spacing, ndim, "spacing")
    psf_spacing = check_spacing(psf_spacing, ndim, "psf_spacing")
    if psf_spacing is not None:
        if spacing is None:
            raise ValueError("psf_spacing was given but not the image's spacing: the PSF cannot be resampled to "
                             "the image's grid")
        if not np.allclose(psf_spacing, spacing, rtol=1e-3):
            from ..data.psf3d import resample_psf

            k = prepare_kernel(kernel, None, ndim)  # validated and odd before resampling
            kernel = resample_psf(k, psf_spacing, spacing)
            logger.info("PSF resampled from spacing %s to %s: shape %s", psf_spacing, spacing, kernel.shape)
    return prepare_kernel(kernel, image_shape, ndim)
