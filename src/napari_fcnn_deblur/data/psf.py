"""Point-spread functions and blur kernels: loading measured PSFs and generating model ones.

Every function returns a float32, odd-sized, non-negative 2D kernel that sums
to 1 with its centre at pixel ``(h // 2, w // 2)``, ready for
:func:`napari_fcnn_deblur.deblur`.

A *measured* PSF (the image of a sub-resolution bead, cropped from a camera
frame) is not a kernel yet: it sits on the camera offset, its centroid is
rarely on the middle pixel and its crop is larger than the PSF.
:func:`prepare_measured_psf` is the one preparation for it (background
subtraction, recentring, cropping, normalising) used by :func:`load_psf`, the
command line's ``--kernel-prep`` and the napari widget's *PSF preparation*;
:func:`prepare_psf` decides, for ``"auto"``, whether a kernel is such a
measurement (:func:`looks_measured`).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
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


#: What :func:`prepare_psf` can do with a kernel: decide (``auto``), always prepare it as a measured PSF
#: (``measured``), or leave it as it is (``raw``).
KERNEL_PREPS = ("auto", "measured", "raw")

#: ``auto`` takes a kernel for a measurement when its frame's background, or its most negative value, is
#: beyond this fraction of its peak (computed kernels decay to below 0.1 % of their peak at their border:
#: Gaussian 5e-5, Airy of :func:`widefield_psf` at most 7e-4, motion and Levin kernels 0).
BACKGROUND_FRACTION = 1e-3

#: After background subtraction, pixels below this many robust noise s.d. of the frame are set to 0
#: (the noise would otherwise stay as a positive pedestal after clipping, ≈ 0.4 σ per pixel, and keep
#: the crop from working).
NOISE_FLOOR = 3.0
#: A 3D PSF in floating point counts as measured (``auto``) when it sits on an offset above this
#: fraction of its peak (computed PSFs: at most ~0.12 % in small boxes).
BACKGROUND_FRACTION_3D = 1e-2


@dataclass(frozen=True)
class PreparedPsf:
    """A kernel and what the preparation did to it.

    Attributes
    ----------
    kernel : numpy.ndarray
        The kernel to deblur with: float32, odd-sized, centred, sum 1 when ``measured``; otherwise the
        input array itself, untouched (the engine's :func:`~napari_fcnn_deblur.engine.kernels.prepare_kernel`
        checks and normalises it as any kernel).
    measured : bool
        Whether the measured-PSF preparation was applied.
    background : float
        The constant subtracted (input units; 0 when none).
    noise_floor : float
        Pixels below this value (input units, above the background) were set to 0: ``NOISE_FLOOR`` times the
        frame's robust noise s.d. (0 when none).
    centroid_offset : tuple of float
        (dy, dx) of the centroid from the input's middle pixel ``(h // 2, w // 2)``, in pixels, after
        background subtraction.
    shift : tuple of int
        (dy, dx) the PSF was moved by to put its centroid on the middle pixel (integer, exact).
    input_shape : tuple of int
        Shape of the input (2D; the focal plane's for a 3D PSF).
    focal_plane : int or None
        The plane of a 3D PSF that was used (the one holding the brightest pixel).
    """

    kernel: np.ndarray
    measured: bool = False
    background: float = 0.0
    noise_floor: float = 0.0
    centroid_offset: tuple[float, float] = (0.0, 0.0)
    shift: tuple[int, int] = (0, 0)
    input_shape: tuple[int, ...] = ()
    focal_plane: int | None = None

    def describe(self) -> str:
        """What was done, in words, e.g. ``"background 100 subtracted, values under 9 (3 σ of its noise) set to 0,
        recentred by (-1, +1) px (centroid was (+1.2, -0.8) px off the middle), cropped from 31 × 31 to 25 × 25,
        normalised to sum 1"``."""
        if not self.measured:
            return "used as it is"
        parts = []
        if self.focal_plane is not None:
            parts.append(f"focal plane z={self.focal_plane} of the 3D PSF")
        parts.append(f"background {self.background:.4g} subtracted" if self.background else "no background")
        if self.noise_floor:
            parts.append(f"values under {self.noise_floor:.3g} ({NOISE_FLOOR:g} σ of its noise) set to 0")
        dy, dx = self.centroid_offset
        if self.shift != (0, 0):
            parts.append(f"recentred by ({self.shift[0]:+d}, {self.shift[1]:+d}) px "
                         f"(centroid was ({dy:+.1f}, {dx:+.1f}) px off the middle)")
        else:
            parts.append(f"centred already (centroid ({dy:+.1f}, {dx:+.1f}) px off the middle)")
        (h0, w0), (h, w) = self.input_shape[-2:], self.kernel.shape
        if (h, w) == (h0, w0):
            parts.append(f"{h} × {w}")
        elif h <= h0 and w <= w0:
            parts.append(f"cropped from {h0} × {w0} to {h} × {w}")
        else:
            parts.append(f"{h0} × {w0} zero-padded to {h} × {w} to keep every pixel around the centre")
        parts.append("normalised to sum 1")
        return ", ".join(parts)


def _frame(a: np.ndarray) -> np.ndarray | None:
    """The outer 1-pixel frame of a 2D array, or the six faces of a 3D one (None when a side is < 5 px:
    too small to have one)."""
    if a.ndim not in (2, 3) or min(a.shape) < 5:
        return None
    faces = []
    for ax in range(a.ndim):
        faces += [np.take(a, 0, axis=ax).ravel(), np.take(a, -1, axis=ax).ravel()]
    return np.concatenate(faces)


def frame_background(psf: np.ndarray) -> float:
    """Background level of a 2D PSF crop: the median of its outer 1-pixel frame (0 when a side is < 5 px)."""
    frame = _frame(np.asarray(psf, dtype=np.float64))
    return 0.0 if frame is None else float(np.median(frame))


def frame_noise(psf: np.ndarray) -> float:
    """Robust noise s.d. of a 2D PSF crop's frame: 1.4826 × its median absolute deviation (0 when a side is < 5 px)."""
    frame = _frame(np.asarray(psf, dtype=np.float64))
    return 0.0 if frame is None else float(1.4826 * np.median(np.abs(frame - np.median(frame))))


def looks_measured(kernel: np.ndarray) -> bool:
    """Whether a 2D kernel (or a 3D PSF: by an offset under all of it, its 1st percentile) looks like a measured PSF rather than a computed kernel (the ``auto`` rule).

    It does when its frame has a background — :func:`frame_background` above
    :data:`BACKGROUND_FRACTION` of its peak, but below the peak (a flat box kernel has no background) —
    or when it has negative values below −:data:`BACKGROUND_FRACTION` of its peak (noise around a
    background that was already subtracted).  A computed kernel (Gaussian, Airy, motion, Levin…) decays
    to (almost) zero at its border and has no negative values, so it is used as it is: a motion
    kernel's frame, not its centroid, says where the result lands.
    """
    raw = np.asarray(kernel)
    k = raw.astype(np.float64)
    if k.ndim not in (2, 3) or k.size == 0 or not np.all(np.isfinite(k)):
        return False
    peak = float(k.max())
    if peak <= 0:
        return False
    if float(k.min()) < -BACKGROUND_FRACTION * peak:
        return True
    if k.ndim == 3:
        # a computed widefield PSF carries defocused light up to its box's faces (up to ~0.12 % of the peak in
        # a 5×9×9 box): a 3D PSF counts as measured when it is camera counts (integers) or sits on an offset
        # (its 1st percentile) of more than BACKGROUND_FRACTION_3D of its peak
        if np.issubdtype(raw.dtype, np.integer):
            return True
        return BACKGROUND_FRACTION_3D * peak < float(np.percentile(k, 1)) < peak
    else:
        bg = frame_background(k)
    return BACKGROUND_FRACTION * peak < bg < peak


def prepare_measured_psf(psf: np.ndarray, energy: float = 0.999, background: bool = True) -> PreparedPsf:
    """Make a kernel of a measured PSF: background subtraction, recentring, cropping, normalising.

    A 3D PSF (Z, Y, X) is reduced to its focal plane, the plane holding the
    brightest pixel.  With ``background``, the constant background (camera
    offset: :func:`frame_background`) is subtracted and the pixels below
    :data:`NOISE_FLOOR` times the frame's noise (:func:`frame_noise`) are set to
    0 (without it, clipped noise would stay as a pedestal); the PSF is clipped at 0,
    shifted so its centroid is on the middle pixel (:func:`center_psf`: an exact
    integer shift, zero-padded), cropped to the centred window holding
    ``energy`` of its mass (:func:`crop_psf`) and normalised to sum 1.

    Parameters
    ----------
    psf : array (Y, X) or (Z, Y, X)
        The measured PSF, any real dtype (camera counts are fine); axes of length 1 are dropped.
    energy : float in (0, 1]
        Fraction of the mass the cropped kernel keeps.
    background : bool
        Subtract the frame's background.

    Returns
    -------
    PreparedPsf
        The kernel (float32, odd-sized, centred, sum 1) and what was done.

    Raises
    ------
    ValueError
        Not 2D/3D, NaN or infinite values, or no positive mass (after background subtraction).
    """
    a = np.asarray(psf)
    if a.dtype == bool or not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise ValueError(f"a PSF must be a real numeric array, got dtype {a.dtype}")
    a = np.squeeze(a.astype(np.float64))
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    focal = None
    if a.ndim == 3:
        focal = int(np.unravel_index(np.argmax(a), a.shape)[0])
        a = a[focal]
    if a.ndim != 2:
        raise ValueError(f"a PSF must be 2D or 3D, got shape {np.shape(psf)}")
    if not np.all(np.isfinite(a)):
        raise ValueError("the PSF contains NaN or infinite values")
    bg = frame_background(a) if background else 0.0
    floor = NOISE_FLOOR * frame_noise(a) if background else 0.0
    if bg:
        a = a - bg
    if floor:
        a = np.where(a < floor, 0.0, a)
    a = np.clip(a, 0, None)
    if a.sum() <= 0:
        what = f" after subtracting its background {bg:.4g}" if bg else ""
        raise ValueError(f"the PSF has no positive mass{what}")
    centroid = ndimage.center_of_mass(a)
    offset = tuple(float(c - n // 2) for c, n in zip(centroid, a.shape))
    shift = tuple(n // 2 - int(round(c)) for c, n in zip(centroid, a.shape))
    kernel = crop_psf(center_psf(a), energy)
    return PreparedPsf(kernel, True, bg, floor, offset, shift, a.shape, focal)


def prepare_psf(kernel: np.ndarray, mode: str = "auto", energy: float = 0.999) -> PreparedPsf:
    """Prepare a kernel read from a file or a layer as ``mode`` says (one of :data:`KERNEL_PREPS`).

    ``"measured"``: :func:`prepare_measured_psf` (a 3D PSF: its focal plane,
    as :func:`load_psf`).  ``"raw"``: the kernel as it is.  ``"auto"``: a 2D
    kernel that :func:`looks_measured` is prepared as a measured PSF; any other
    kernel is returned untouched (the very same array), so computed kernels give
    exactly the results they gave before, and a 3D PSF stays 3D (the engine
    deconvolves volumes with it).  Problems of an untouched kernel (NaN, wrong
    shape…) are left to the engine's kernel check.
    """
    if mode not in KERNEL_PREPS:
        raise ValueError(f"the kernel preparation must be one of {', '.join(KERNEL_PREPS)}, got {mode!r}")
    if mode == "measured":
        return prepare_measured_psf(kernel, energy)
    a = np.asarray(kernel)
    if mode == "raw" or not (np.issubdtype(a.dtype, np.number) and a.dtype != bool and not np.iscomplexobj(a)):
        return PreparedPsf(kernel)
    if np.squeeze(a).ndim == 2 and looks_measured(np.squeeze(a)):  # 3D PSFs: psf3d.prepare_measured_psf_3d
        return prepare_measured_psf(a, energy)
    return PreparedPsf(kernel)


def load_psf(path: str | os.PathLike, energy: float = 0.999, background: bool = True) -> np.ndarray:
    """Load a measured PSF (TIFF, PNG, NPY) and make it a kernel (:func:`prepare_measured_psf`).

    A 3D PSF (Z, Y, X) is reduced to its focal plane — the plane holding the
    brightest pixel — with a warning.  A constant background (the median of the
    outer frame) is subtracted when ``background`` is true, and pixels under the
    frame's noise floor are set to 0; the PSF is then clipped at zero, centred on
    its centroid, cropped to the centred window holding ``energy`` of its mass and
    normalised to sum 1.
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
    try:
        prepared = prepare_measured_psf(a, energy, background)
    except ValueError as err:
        raise ValueError(f"{path.name}: {err}") from None
    if prepared.focal_plane is not None:
        shape = np.squeeze(np.asarray(a)).shape
        warnings.warn(f"{path.name} is a 3D PSF {shape}; using its focal plane z={prepared.focal_plane} "
                      "(brightest pixel)", stacklevel=2)
    return prepared.kernel
