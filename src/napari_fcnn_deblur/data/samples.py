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


def poisson_gaussian_noise(clean: np.ndarray, photons: float, read_noise: float,
                           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Photon (Poisson–Gaussian) noise on the [0, 1] scale, and its true per-pixel s.d.

    ``noisy = Poisson(photons · x) / photons + N(0, read_noise²)`` with ``x = max(clean, 0)``
    (``photons`` expected photons at intensity 1, ``read_noise`` an s.d. on the [0, 1] scale): the
    noise level function σ²(x) = x / photons + read_noise² of :mod:`napari_fcnn_deblur.engine.noise`
    (a = 1/photons, b = read_noise²).  Returns (noisy, s.d. map ``sqrt(x / photons + read_noise²)``),
    float64, shape of ``clean``.  The Poisson draws come first, then the Gaussian ones, from ``rng``.
    """
    if not (np.isfinite(photons) and photons > 0 and np.isfinite(read_noise) and read_noise >= 0):
        raise ValueError(f"need photons > 0 and read_noise >= 0, got {photons} and {read_noise}")
    x = np.maximum(np.asarray(clean, np.float64), 0.0)
    noisy = rng.poisson(photons * x) / photons + rng.normal(0.0, read_noise, x.shape)
    return noisy, np.sqrt(x / photons + read_noise * read_noise)


def blur_valid_photons(sharp: np.ndarray, kernel: np.ndarray, photons: float, read_noise: float,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Valid convolution + :func:`poisson_gaussian_noise`; returns (blurry, aligned sharp crop, true s.d. map).

    The s.d. map is computed from the noiseless blurred image (what a noise-map cascade given the
    true noise receives); all three float32.
    """
    blur = fftconvolve(sharp.astype(np.float64), kernel.astype(np.float64), mode="valid")
    y, sd = poisson_gaussian_noise(blur, photons, read_noise, np.random.default_rng(seed))
    oy, ox = kernel.shape[0] // 2, kernel.shape[1] // 2
    gt = sharp[oy : oy + y.shape[0], ox : ox + y.shape[1]]
    return y.astype(np.float32), gt.astype(np.float32), sd.astype(np.float32)


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
