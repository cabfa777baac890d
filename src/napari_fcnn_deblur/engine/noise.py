"""The noise of a blurry image: what a run is told or estimates (:class:`NoiseLevel`), one rule for every entry point.

Noise model
-----------
On the [0, 1] intensity scale of the run (:mod:`.intensity`) the noise variance is an affine
function of the noise-free intensity x, the noise level function of Foi et al. (2008)::

    σ²(x) = a·x + b

Gaussian noise of s.d. σ is a = 0, b = σ²; Poisson–Gaussian (photon) noise with p photons at
intensity 1 and read noise σ_r is a = 1/p, b = σ_r² (b < 0 when the camera offset is above the
black level the intensity map sends to 0).  A :class:`NoiseLevel` is one of

- ``"gaussian"``: a scalar σ (a number given as ``noise_level``, or the estimate);
- ``"poisson-gaussian"``: (a, b), estimated; the per-pixel s.d. is
  σ(x̂) = sqrt(max(a·x̂ + b, 0)) on the blurry image smoothed by a :data:`SMOOTH_SIZE` box;
- ``"map"``: a per-pixel s.d. map given by the caller (on the same [0, 1] scale).

The noise-map cascade (:mod:`napari_fcnn_deblur.core.conditioned`) receives that per-pixel s.d.;
a per-level cascade receives the effective level :attr:`NoiseLevel.sigma` (the RMS of the per-pixel
s.d., σ itself for Gaussian noise).

Estimator (:func:`estimate_noise`)
----------------------------------
Blur removes the finest detail of an image but not the noise added after it.  For every 2×2
block of a plane: its finest diagonal Haar coefficient d (orthonormal, so var d = σ² of the block
for white noise) and its local mean x̂ (the plane smoothed by a :data:`SMOOTH_SIZE` box).

- Scalar σ: the median absolute deviation of all d / 0.6745 (Donoho & Johnstone, 1994; as
  ``skimage.restoration.estimate_sigma``), the median over the planes of a stack.
- Noise level function: the blocks sorted by x̂ into bins of equal count (at least
  :data:`MIN_BIN` each); each bin's variance (MAD(d) / 0.6745)² (robust to the edges the blur
  leaves); a line σ² = a·x + b fitted to the bins by iteratively reweighted least squares (weights
  n / σ⁴ of each bin's variance estimate, Tukey's biweight on the standardised residuals).

The image is taken as Poisson–Gaussian when a is significant (more than :data:`A_SIGNIFICANCE`
standard errors above 0) and the fitted s.d. grows by at least :data:`SIGNAL_DEPENDENCE` × from
the 5th to the 95th percentile of the intensities; otherwise as Gaussian with the scalar σ (one
estimator: a ≈ 0 is its Gaussian case).  A stack uses up to :data:`MAX_PLANES` evenly spaced
planes (RGB: its colour channels), read one at a time, so numpy, dask and zarr arrays of any size
are estimated alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter

from .intensity import IntensityScaling, intensity_scaling
from .layout import PlaneLayout

#: Most planes read for the estimate of a stack.
MAX_PLANES = 16
#: Side (pixels) of the box that smooths the blurry image into the intensities x̂ of σ²(x̂).
SMOOTH_SIZE = 5
#: Fewest Haar coefficients per intensity bin of the noise level function fit; most bins.
MIN_BIN = 400
MAX_BINS = 24
#: Fewest bins for a noise level function fit (smaller images get the scalar σ).
MIN_BINS = 6
#: Most 2×2 blocks of one plane used for the fit (a strided sample of larger planes).
MAX_BLOCKS = 1 << 20
#: Poisson–Gaussian only if the s.d. grows at least this much from the 5th to the 95th intensity percentile …
SIGNAL_DEPENDENCE = 1.2
#: … and a is this many standard errors above 0.
A_SIGNIFICANCE = 3.0
#: Largest noise s.d. accepted (on the [0, 1] scale).
MAX_SIGMA = 0.5
#: The per-pixel s.d. of Poisson–Gaussian noise is computed in chunks of whole planes of about this many pixels.
SD_CHUNK_PIXELS = 1 << 22
#: s.d. of a bin's MAD variance estimate is σ²·sqrt(MAD_VARIANCE_FACTOR / n) (MAD efficiency 0.37 for Gaussians).
MAD_VARIANCE_FACTOR = 5.4

KINDS = ("gaussian", "poisson-gaussian", "map")


@dataclass(frozen=True, eq=False)
class NoiseLevel:
    """The noise of an image on the [0, 1] scale of a run.

    Attributes
    ----------
    kind : "gaussian", "poisson-gaussian" or "map"
    sigma : float
        Effective s.d.: σ of Gaussian noise, else the RMS of the per-pixel s.d. (what a per-level
        cascade is chosen by and given).
    a, b : float
        σ²(x) = a·x + b (Gaussian: a = 0, b = σ²; a map: 0, σ_eff²).
    sd_map : float32 array (N, Y, X) or (1, Y, X), or None
        The caller's per-pixel s.d. as planes (kind "map"; one plane = the same for every plane).
    estimated : bool
        Whether it was estimated from the image (``noise_level="auto"``).
    """

    kind: str
    sigma: float
    a: float = 0.0
    b: float = 0.0
    sd_map: np.ndarray | None = None
    estimated: bool = False

    @classmethod
    def gaussian(cls, sigma: float, estimated: bool = False) -> NoiseLevel:
        """Gaussian noise of s.d. ``sigma``."""
        return cls("gaussian", float(sigma), 0.0, float(sigma) ** 2, None, estimated)

    @classmethod
    def poisson_gaussian(cls, a: float, b: float, sigma: float = 0.0, estimated: bool = False) -> NoiseLevel:
        """Poisson–Gaussian noise σ²(x) = a·x + b (``sigma``: its effective s.d. when known, for a per-level
        cascade's choice)."""
        return cls("poisson-gaussian", float(sigma), float(a), float(b), None, estimated)

    @property
    def is_gaussian(self) -> bool:
        """Plain Gaussian noise (one σ everywhere): what the per-level cascades were trained for."""
        return self.kind == "gaussian"

    def sd_at(self, x) -> np.ndarray:
        """s.d. at intensities ``x`` (Gaussian / Poisson–Gaussian): sqrt(max(a·x + b, 0))."""
        return np.sqrt(np.maximum(self.a * np.asarray(x, np.float64) + self.b, 0.0))

    def describe(self) -> str:
        """One line for people: ``σ = 0.0312 (3.12 %)``, ``Poisson–Gaussian a=…, b=… (…)`` or a noise map."""
        if self.kind == "gaussian":
            return f"σ = {self.sigma:.4g} ({100 * self.sigma:.2f} % of the [0, 1] range)"
        if self.kind == "poisson-gaussian":
            mid = float(self.sd_at(0.5))
            return (f"Poisson–Gaussian a={self.a:.3g}, b={self.b:.3g} (σ²(x) = a·x + b: σ = {100 * mid:.2f} % "
                    f"at mid intensity, {100 * self.sigma:.2f} % RMS)")
        return f"per-pixel noise map (RMS σ = {self.sigma:.4g}, {100 * self.sigma:.2f} %)"

    def sd_planes(self, planes: np.ndarray, sl: slice = slice(None)) -> float | np.ndarray:
        """The noise s.d. of ``planes[sl]``: a float (Gaussian) or float32 ``(n, Y, X)``.

        ``planes``: all planes of the image on the [0, 1] scale (a noise map of N planes needs all N).
        """
        if self.kind == "gaussian":
            return self.sigma
        if self.kind == "poisson-gaussian":
            sub = np.asarray(planes[sl], np.float32)
            out = np.empty(sub.shape, np.float32)
            step = max(1, SD_CHUNK_PIXELS // max(1, math.prod(sub.shape[1:])))
            for a in range(0, len(sub), step):  # plane by plane: bounded float64 work arrays, same values
                smooth = uniform_filter(sub[a : a + step], size=(1, SMOOTH_SIZE, SMOOTH_SIZE), mode="reflect")
                out[a : a + step] = self.sd_at(smooth)
            return out
        m = self.sd_map
        if m.shape[-2:] != planes.shape[-2:] or (len(m) != 1 and len(m) != len(planes)):
            raise ValueError(f"this run's noise map covers {len(m)} plane(s) of {m.shape[-2:]}, "
                             f"not these {len(planes)} of {planes.shape[-2:]}: prepare the run for this image")
        if len(m) == 1:
            n = len(range(*sl.indices(len(planes))))
            return np.broadcast_to(m, (n,) + m.shape[1:])
        return m[sl]


def check_sigma(value, what: str = "noise_level") -> float:
    """A noise s.d. (a number in [0, :data:`MAX_SIGMA`] on the [0, 1] scale), validated."""
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{what} must be a number (noise s.d. on the [0, 1] scale), 'auto' or a per-pixel noise map array, "
            f"got {value!r}"
        ) from None
    if not (math.isfinite(s) and 0 <= s <= MAX_SIGMA):
        raise ValueError(
            f"{what} must be between 0 and {MAX_SIGMA} (s.d. on the [0, 1] scale, 0.01 = 1 %), got {value!r}"
        )
    return s


def is_noise_map(noise_level) -> bool:
    """Whether ``noise_level`` is an array (a per-pixel noise map) rather than a number or "auto"."""
    return not isinstance(noise_level, str) and np.ndim(noise_level) > 0


def noise_map_level(noise_map, layout: PlaneLayout) -> NoiseLevel:
    """A caller's per-pixel noise s.d. map, validated, as the :class:`NoiseLevel` of an image of ``layout``.

    The map has the image's shape, or one plane's ``(Y, X)`` (the same for every plane and colour
    channel); its values are s.d.s on the [0, 1] scale, like a numeric ``noise_level``.
    """
    m = np.asarray(noise_map)
    if m.dtype == object or not np.issubdtype(m.dtype, np.number) or np.issubdtype(m.dtype, np.complexfloating):
        raise ValueError(f"a noise map must be a real numeric array, got dtype {m.dtype}")
    shape = tuple(m.shape)
    if shape == layout.shape:
        planes = layout.to_planes(m)
    elif shape == tuple(layout.plane_shape):
        planes = m[None]
    else:
        raise ValueError(
            f"the noise map has shape {shape}; it must have the image's shape {layout.shape} or one plane's "
            f"{tuple(layout.plane_shape)} (the noise s.d. of every pixel on the [0, 1] scale; one level per "
            "channel needs channel_axis)"
        )
    planes = np.array(planes, dtype=np.float32, order="C", copy=True)  # the run's own: the caller's map is never aliased
    if not np.all(np.isfinite(planes)):
        raise ValueError("the noise map contains NaN or infinite values")
    lo, hi = float(planes.min()), float(planes.max())
    if lo < 0 or hi > MAX_SIGMA:
        raise ValueError(f"noise map values must be s.d.s between 0 and {MAX_SIGMA} on the [0, 1] scale "
                         f"(0.01 = 1 %), got {lo:.4g} … {hi:.4g}")
    rms = float(np.sqrt(np.mean(np.square(planes, dtype=np.float64))))
    return NoiseLevel("map", rms, 0.0, rms * rms, planes, False)


# ----------------------------------------------------------------------------- estimation


def block_statistics(plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(local mean x̂, finest diagonal Haar coefficient d) of every 2×2 block of a 2D plane."""
    p = np.asarray(plane, dtype=np.float64)
    if min(p.shape[-2:]) < 2:
        raise ValueError(f"a plane of {p.shape[0]}×{p.shape[1]} pixels is too small to estimate its noise "
                         "(at least 2×2 needed); give noise_level as a number")
    h, w = (p.shape[0] // 2) * 2, (p.shape[1] // 2) * 2
    smooth = uniform_filter(p, size=SMOOTH_SIZE, mode="reflect")[:h, :w]
    p = p[:h, :w]
    # orthonormal Haar HH: unit gain for white noise
    d = (p[0::2, 0::2] - p[0::2, 1::2] - p[1::2, 0::2] + p[1::2, 1::2]) / 2.0
    x = (smooth[0::2, 0::2] + smooth[0::2, 1::2] + smooth[1::2, 0::2] + smooth[1::2, 1::2]) / 4.0
    return x.ravel(), d.ravel()


def mad_sigma(d: np.ndarray) -> float:
    """s.d. of zero-mean coefficients from their median absolute value (/ 0.6745)."""
    return float(np.median(np.abs(d)) / 0.6745)


def haar_mad_sigma(plane: np.ndarray) -> float:
    """Noise s.d. of a 2D plane from its finest diagonal Haar coefficients (MAD / 0.6745)."""
    return mad_sigma(block_statistics(plane)[1])


@dataclass(frozen=True)
class LineFit:
    """σ²(x) = a·x + b fitted to binned variances, with the standard error of a."""

    a: float
    b: float
    se_a: float


def fit_noise_function(x: np.ndarray, d: np.ndarray) -> LineFit | None:
    """The noise level function σ²(x) = a·x + b of blocks (x̂, d); None when there are too few blocks."""
    n_bins = min(MAX_BINS, len(x) // MIN_BIN)
    if n_bins < MIN_BINS:
        return None
    bins = np.array_split(np.argsort(x, kind="stable"), n_bins)
    xb = np.array([x[i].mean() for i in bins])
    vb = np.array([mad_sigma(d[i]) ** 2 for i in bins])
    nb = np.array([len(i) for i in bins], dtype=np.float64)
    design = np.stack([xb, np.ones_like(xb)], axis=1)
    floor = 1e-3 * float(vb.max()) + 1e-16
    pred = np.full_like(vb, np.median(vb))
    robust = np.ones_like(vb)
    for it in range(8):
        sd = np.maximum(pred, floor) * np.sqrt(MAD_VARIANCE_FACTOR / nb)
        if it:
            r = (vb - pred) / sd
            robust = np.where(np.abs(r) < 4.685, (1 - (r / 4.685) ** 2) ** 2, 0.0)
        w = robust / sd**2
        normal = design.T @ (w[:, None] * design)
        coef = np.linalg.solve(normal + 1e-30 * np.eye(2), design.T @ (w * vb))
        pred = design @ coef
    used = robust > 0
    chi2 = float(np.sum(w * (vb - pred) ** 2)) / max(int(used.sum()) - 2, 1)
    cov = np.linalg.inv(normal + 1e-30 * np.eye(2)) * max(chi2, 1.0)
    return LineFit(float(coef[0]), float(coef[1]), float(math.sqrt(max(cov[0, 0], 0.0))))


def sampled_planes(layout: PlaneLayout) -> np.ndarray:
    """Indices of the (up to :data:`MAX_PLANES`, evenly spaced) planes an estimate reads."""
    n = layout.n_planes
    return np.unique(np.linspace(0, n - 1, min(MAX_PLANES, n)).round().astype(int))


def estimate_noise(image, scaling: IntensityScaling | None = None, rgb: bool | None = None) -> NoiseLevel:
    """The noise of ``image`` on the [0, 1] scale of :func:`napari_fcnn_deblur.deblur`: Gaussian or Poisson–Gaussian.

    Parameters
    ----------
    image : array-like (numpy, dask, zarr), 2D, RGB(A) (Y, X, 3|4) or a stack (..., Y, X)
    scaling : IntensityScaling, optional
        The map to [0, 1]; default :func:`~.intensity.intensity_scaling` of the image.
    rgb : bool, optional
        Whether ``image`` is RGB(A); default the rule of :mod:`.layout`.

    Returns
    -------
    NoiseLevel
        ``"gaussian"`` (σ) or ``"poisson-gaussian"`` (a, b), ``estimated`` True (see the module docstring).
    """
    layout = PlaneLayout.of(image.shape, rgb)
    if scaling is None:
        scaling = intensity_scaling(layout.colour(image))
    sigmas, xs, ds = [], [], []
    for i in sampled_planes(layout):
        x, d = block_statistics(scaling.forward(layout.plane(image, int(i))))
        sigmas.append(mad_sigma(d))
        step = max(1, math.ceil(len(x) / MAX_BLOCKS))
        xs.append(x[::step])
        ds.append(d[::step])
    sigma = float(np.clip(np.median(sigmas), 0.0, MAX_SIGMA))
    x, d = np.concatenate(xs), np.concatenate(ds)
    fit = fit_noise_function(x, d)
    if fit is not None and fit.a > A_SIGNIFICANCE * fit.se_a:
        lo, hi = np.percentile(x, [5, 95])
        v_lo, v_hi = fit.a * lo + fit.b, fit.a * hi + fit.b
        if v_hi > 0 and v_hi > SIGNAL_DEPENDENCE**2 * max(v_lo, 0.0):
            rms = float(np.sqrt(np.mean(NoiseLevel.poisson_gaussian(fit.a, fit.b).sd_at(x) ** 2)))
            return NoiseLevel.poisson_gaussian(fit.a, fit.b, min(rms, MAX_SIGMA), estimated=True)
    return NoiseLevel.gaussian(sigma, estimated=True)


def estimate_noise_level(image, scaling: IntensityScaling | None = None, rgb: bool | None = None) -> float:
    """The effective noise s.d. (:attr:`NoiseLevel.sigma`) of :func:`estimate_noise` (arguments as there)."""
    return estimate_noise(image, scaling, rgb).sigma
