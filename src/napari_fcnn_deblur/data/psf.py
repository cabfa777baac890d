"""Point-spread functions and blur kernels: loading measured PSFs and generating model ones.

Every function returns a float32, odd-sized, non-negative 2D kernel that sums
to 1 with its centre at pixel ``(h // 2, w // 2)``, ready for
:func:`napari_fcnn_deblur.deblur`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage, special


def _odd(n: float) -> int:
    n = int(np.ceil(n))
    return n if n % 2 else n + 1


def _normalise(k: np.ndarray) -> np.ndarray:
    k = np.clip(k, 0, None)
    return (k / k.sum()).astype(np.float32)


def gaussian_psf(sigma: float, size: int | None = None) -> np.ndarray:
    """Gaussian PSF, h(r) ∝ exp(−r² / 2σ²).

    Parameters
    ----------
    sigma : float > 0
        Standard deviation in pixels (FWHM = 2.3548 σ).
    size : odd int, optional
        Side length; default 2·⌈4σ⌉ + 1.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 pixels, got {sigma}")
    size = _odd(2 * np.ceil(4 * sigma) + 1) if size is None else _odd(size)
    r = np.arange(size) - size // 2
    return _normalise(np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2.0 * sigma**2)))


def disk_psf(radius: float, supersample: int = 8) -> np.ndarray:
    """Uniform disk (geometric defocus blur) of ``radius`` pixels, edge anti-aliased by supersampling.

    h(r) = 1 / (π R²) for r ≤ R, 0 outside (the pillbox of out-of-focus geometric optics).
    """
    if not radius > 0:
        raise ValueError(f"radius must be > 0 pixels, got {radius}")
    size = _odd(2 * radius + 1)
    s = supersample
    c = (np.arange(size * s) + 0.5) / s - size / 2
    inside = (c[:, None] ** 2 + c[None, :] ** 2) <= radius**2
    return _normalise(inside.reshape(size, s, size, s).mean(axis=(1, 3)))


def linear_motion_psf(length: float, angle: float = 0.0, supersample: int = 8) -> np.ndarray:
    """Uniform linear motion blur: a line segment of ``length`` pixels at ``angle`` degrees
    (counter-clockwise from the x axis, y pointing up in the displayed image), centred."""
    if not length > 0:
        raise ValueError(f"length must be > 0 pixels, got {length}")
    size = _odd(length + 2)
    th = np.deg2rad(angle)
    k = np.zeros((size, size))
    c = size // 2
    n = max(2, int(np.ceil(length * supersample)))
    t = np.linspace(-length / 2, length / 2, n)
    xs, ys = c + t * np.cos(th), c - t * np.sin(th)
    # bilinear splatting: sub-pixel positions spread their weight on 4 pixels
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    for dy, dx, w in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        yy, xx = np.clip(y0 + dy, 0, size - 1), np.clip(x0 + dx, 0, size - 1)
        np.add.at(k, (yy, xx), w)
    return _normalise(k)


def widefield_psf(na: float, wavelength: float, pixel_size: float, size: int | None = None,
                  supersample: int = 5) -> np.ndarray:
    """In-focus widefield fluorescence PSF (Airy pattern) of an ideal circular pupil.

    h(r) ∝ [2 J₁(v) / v]²,  v = 2π · NA · r / λ

    with r the lateral distance (same unit as λ), NA the numerical aperture
    and λ the emission wavelength. Its first zero lies at r = 0.61 λ / NA.

    Parameters
    ----------
    na : float
        Numerical aperture (e.g. 1.4 for an oil objective).
    wavelength : float
        Emission wavelength, e.g. in nm.
    pixel_size : float
        Pixel size in the sample plane, same unit as ``wavelength``.
    size : odd int, optional
        Side in pixels; default covers 3 Airy radii (at least 7 px).
    """
    if not (na > 0 and wavelength > 0 and pixel_size > 0):
        raise ValueError("na, wavelength and pixel_size must all be > 0")
    airy = 0.61 * wavelength / na / pixel_size  # first zero, in pixels
    size = _odd(max(7, 2 * np.ceil(3 * airy) + 1)) if size is None else _odd(size)
    s = supersample
    c = (np.arange(size * s) + 0.5) / s - size / 2
    r = np.hypot(c[:, None], c[None, :]) * pixel_size
    v = 2 * np.pi * na * r / wavelength
    with np.errstate(invalid="ignore", divide="ignore"):
        h = np.where(v == 0, 1.0, (2 * special.j1(v) / v) ** 2)
    return _normalise(h.reshape(size, s, size, s).mean(axis=(1, 3)))


def _radius_grid(box: int, oversample: int = 4) -> np.ndarray:
    """Distance (px) of oversampled sub-pixel positions from the box's centre pixel: (box, box, s²)."""
    c = box // 2
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    coords = (np.arange(box)[:, None] + sub[None, :]).reshape(-1) - c
    r = np.hypot(coords[:, None], coords[None, :])
    return r.reshape(box, oversample, box, oversample).transpose(0, 2, 1, 3).reshape(box, box, -1)


def random_psf(rng: np.random.Generator, box: int = 31) -> np.ndarray:
    """A random smooth microscopy-like PSF in a ``box × box`` frame, centred, sum 1 (training data).

    One of: Gaussian (σ 0.7–4 px), Airy-like jinc² (first zero at 1.5–5 px), defocus disc (radius
    1–6 px, smoothed by a Gaussian of σ 0.3–0.7 px); each averaged over 4×4 sub-pixels.
    """
    r = _radius_grid(box)
    kind = rng.integers(3)
    if kind == 0:
        s = rng.uniform(0.7, 4.0)
        k = np.exp(-0.5 * (r / s) ** 2).mean(-1)
    elif kind == 1:
        r0 = rng.uniform(1.5, 5.0)
        v = 3.8317059702 * r / r0  # first zero of J1
        with np.errstate(invalid="ignore", divide="ignore"):
            jinc = np.where(v > 1e-6, 2 * special.j1(v) / v, 1.0)
        k = (jinc**2).mean(-1)
    else:
        rad = rng.uniform(1.0, 6.0)
        k = (r <= rad).mean(-1)
        k = ndimage.gaussian_filter(k, rng.uniform(0.3, 0.7), mode="constant")
    return _normalise(k)


def center_psf(psf: np.ndarray) -> np.ndarray:
    """Shift a 2D or 3D PSF so its centroid falls on the middle pixel (integer shift, zero-padded, odd size).

    The centroid is rounded to the nearest pixel (voxel) and the array is zero-padded around it to
    the smallest odd size keeping every pixel, so the shift is exact (no interpolation).
    """
    k = np.clip(np.asarray(psf, dtype=np.float64), 0, None)
    if k.ndim not in (2, 3) or k.sum() <= 0:
        raise ValueError("center_psf needs a 2D or 3D PSF with positive mass")
    centre = [int(round(c)) for c in ndimage.center_of_mass(k)]
    # half-widths needed around the centroid to keep every pixel
    half = [max(c, n - 1 - c) for c, n in zip(centre, k.shape)]
    out = np.zeros([2 * h + 1 for h in half])
    out[tuple(slice(h - c, h - c + n) for h, c, n in zip(half, centre, k.shape))] = k
    return _normalise(out)


def crop_psf(psf: np.ndarray, energy: float = 0.999) -> np.ndarray:
    """Crop a centred PSF to the smallest centred odd square holding ``energy`` of its mass."""
    k = np.asarray(psf, dtype=np.float64)
    h, w = k.shape
    cy, cx = h // 2, w // 2
    total = k.sum()
    for r in range(0, max(cy, cx) + 1):
        win = k[max(cy - r, 0) : cy + r + 1, max(cx - r, 0) : cx + r + 1]
        if win.sum() >= energy * total:
            return _normalise(win)
    return _normalise(k)


def load_psf(path: str | os.PathLike, energy: float = 0.999, background: bool = True) -> np.ndarray:
    """Load a measured PSF (TIFF, PNG, NPY) and make it a kernel.

    A 3D PSF (Z, Y, X) is reduced to its focal plane — the plane holding the
    brightest pixel — with a warning.  A constant background (the median of the
    outer frame) is subtracted when ``background`` is true; the PSF is then
    clipped at zero, centred on its centroid, cropped to the centred window
    holding ``energy`` of its mass and normalised to sum 1.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        a = np.load(path)
    elif suffix in {".tif", ".tiff"}:
        import tifffile

        a = tifffile.imread(path)
    else:
        import imageio.v3 as iio

        a = np.asarray(iio.imread(path))
        if a.ndim == 3 and a.shape[-1] in (3, 4):
            a = a[..., :3].mean(axis=-1)
    a = np.squeeze(np.asarray(a, dtype=np.float64))
    if a.ndim == 3:
        z = int(np.unravel_index(np.argmax(a), a.shape)[0])
        warnings.warn(f"{path.name} is a 3D PSF {a.shape}; using its focal plane z={z} (brightest pixel)", stacklevel=2)
        a = a[z]
    if a.ndim != 2:
        raise ValueError(f"{path.name}: a PSF must be 2D or 3D, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{path.name}: the PSF contains NaN or infinite values")
    if background and min(a.shape) >= 5:
        frame = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
        a = a - np.median(frame)
    a = np.clip(a, 0, None)
    if a.sum() <= 0:
        raise ValueError(f"{path.name}: the PSF has no positive mass")
    return crop_psf(center_psf(a), energy)
