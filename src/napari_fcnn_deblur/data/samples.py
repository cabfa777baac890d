"""Built-in, offline sample cases (blurry image + kernel + sharp ground truth), Qt-free.

Used by ``fcnn-deblur demo``, the napari sample-data contributions and tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.signal import fftconvolve

from .motion_kernels import random_motion_kernel
from .psf import gaussian_psf


@dataclass
class Sample:
    """A blurred case: ``blurry`` is the *valid* blur of a sharp image plus noise; ``sharp`` is
    the crop of the sharp image aligned with ``blurry`` (same shape), all float32 in [0, 1]."""

    blurry: np.ndarray
    kernel: np.ndarray
    sharp: np.ndarray
    name: str


def blur_valid(sharp: np.ndarray, kernel: np.ndarray, noise_level: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Valid convolution + Gaussian noise; returns (blurry, aligned sharp crop)."""
    y = fftconvolve(sharp.astype(np.float64), kernel.astype(np.float64), mode="valid")
    y = y + np.random.default_rng(seed).normal(0.0, noise_level, y.shape)
    oy, ox = kernel.shape[0] // 2, kernel.shape[1] // 2
    gt = sharp[oy : oy + y.shape[0], ox : ox + y.shape[1]]
    return y.astype(np.float32), gt.astype(np.float32)


def motion_blur_sample(noise_level: float = 0.01, kernel_size: int = 21, seed: int = 3) -> Sample:
    """scikit-image's bundled 'camera' (512×512) blurred by a random camera-shake kernel."""
    from skimage import data

    sharp = data.camera().astype(np.float32) / 255.0
    kernel = random_motion_kernel(np.random.default_rng(seed), kernel_size)
    blurry, gt = blur_valid(sharp, kernel, noise_level, seed)
    return Sample(blurry, kernel, gt, "camera, motion blur")


def fluorescence_phantom(shape: tuple[int, int] = (384, 384), seed: int = 7) -> np.ndarray:
    """A fluorescence-like sharp image in [0, 1]: nuclei, punctate spots and filaments on a dark background."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros(shape)
    for _ in range(14):  # nuclei: textured ellipses with soft edges
        cy, cx = rng.uniform(20, h - 20), rng.uniform(20, w - 20)
        a, b, th = rng.uniform(14, 30), rng.uniform(10, 22), rng.uniform(0, np.pi)
        u = ((yy - cy) * np.cos(th) + (xx - cx) * np.sin(th)) / a
        v = (-(yy - cy) * np.sin(th) + (xx - cx) * np.cos(th)) / b
        inside = 1.0 / (1.0 + np.exp((np.sqrt(u**2 + v**2) - 1.0) * 12))
        img += inside * rng.uniform(0.25, 0.45)
    texture = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    img *= 1.0 + 1.5 * texture
    for _ in range(40):  # filaments: random smooth curves, 1 px wide
        p = rng.uniform(0, [h, w])
        ang = rng.uniform(0, 2 * np.pi)
        inten = rng.uniform(0.3, 0.7)
        for _ in range(int(rng.uniform(40, 160))):
            ang += rng.normal(0, 0.08)
            p = p + [np.sin(ang), np.cos(ang)]
            iy, ix = int(round(p[0])), int(round(p[1]))
            if 0 <= iy < h and 0 <= ix < w:
                img[iy, ix] = max(img[iy, ix], inten)
    n = 250  # punctate spots (vesicles), sub-resolution
    sy, sx = rng.integers(0, h, n), rng.integers(0, w, n)
    img[sy, sx] = np.maximum(img[sy, sx], rng.uniform(0.4, 1.0, n))
    img = ndimage.gaussian_filter(img, 0.6) + 0.04
    return np.clip(img / img.max() * 0.95, 0, 1).astype(np.float32)


def fluorescence_sample(noise_level: float = 0.01, psf_sigma: float = 2.0, seed: int = 7) -> Sample:
    """A fluorescence-like phantom blurred by a Gaussian widefield-like PSF (σ = ``psf_sigma`` px)."""
    sharp = fluorescence_phantom(seed=seed)
    psf = gaussian_psf(psf_sigma)
    blurry, gt = blur_valid(sharp, psf, noise_level, seed)
    return Sample(blurry, psf, gt, "fluorescence phantom, Gaussian PSF")
