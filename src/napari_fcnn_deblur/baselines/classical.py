"""Classical non-blind deconvolution baselines (pure numpy / scikit-image).

Used by ``benchmarks/quality.py`` to put the learned cascade in context:

- :func:`hyper_laplacian` — Krishnan & Fergus (NIPS 2009), half-quadratic
  splitting with a hyper-Laplacian gradient prior (α = 2/3 by default);
- :func:`wiener` — scikit-image's regularised Wiener–Hunt filter;
- :func:`richardson_lucy` — scikit-image's Richardson–Lucy iterations;
- :func:`tune_baselines` — picks each method's parameter on a tuning image.

All three methods see the blurry image exactly as the learned cascade does:
it is extended by replicate padding (the kernel size on every side) and
edge-tapered by the engine's own spectral core (:func:`padded_problem`),
deconvolved on that padded domain, and cropped back.  So differences in the
benchmark come from the methods, not from boundary handling.

Conventions: images are 2D float arrays ``(H, W)`` on the [0, 1] scale;
kernels are 2D, non-negative, summing to 1, and their pixel
``(kh // 2, kw // 2)`` is the centre (even sides are padded with a zero
row/column at the end, see :func:`~.kernel_checks.prepare_kernel`).  Outputs
have the shape of the input, are float64 and are *not* clipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from ..core.solver import DeconvProblem, deconvolve, kernel_spectra, pad_and_taper, prepare_problem
from ..core.spectral import image_gradients
from ..engine.kernels import prepare_kernel

__all__ = [
    "padded_problem",
    "solve_w",
    "hyper_laplacian",
    "wiener",
    "richardson_lucy",
    "tune_baselines",
    "HL_LAMBDAS",
    "WIENER_BALANCES",
    "RL_ITERATIONS",
]

#: Default tuning grids of :func:`tune_baselines`.
HL_LAMBDAS: tuple[float, ...] = tuple(float(v) for v in 50 * 2.0 ** np.arange(10))  # 50 … 25600
WIENER_BALANCES: tuple[float, ...] = tuple(float(v) for v in 10.0 ** np.arange(-4.0, 0.51, 0.5))  # 1e-4 … 3
RL_ITERATIONS: tuple[int, ...] = (2, 5, 10, 15, 20, 30, 50, 75, 100, 150)


# ----------------------------------------------------------------------------- boundary handling (the engine's)


class PaddedProblem(NamedTuple):
    """A blurry image as the engine sees it, in float64 (see :func:`padded_problem`)."""

    y_pad: np.ndarray  # (Hp, Wp) replicate-padded, edge-tapered image
    kernel: np.ndarray  # the normalised, odd-sized kernel
    problem: DeconvProblem  # eq. 6 spectra (torch, float64)
    crop: tuple[slice, slice]  # y_pad[crop] is the input's region


def padded_problem(y: np.ndarray, kernel: np.ndarray) -> PaddedProblem:
    """Pad + edge-taper ``y`` exactly like the engine does, in float64.

    Uses the engine's own spectral core (:func:`~napari_fcnn_deblur.core.solver.kernel_spectra`,
    :func:`~napari_fcnn_deblur.core.solver.pad_and_taper`) on float64 tensors.

    Parameters
    ----------
    y : (H, W) float array
        Blurry image on [0, 1].
    kernel : (kh, kw) array
        Blur kernel (normalised and made odd-sized here).
    """
    y = np.asarray(y, np.float64)
    if y.ndim != 2:
        raise ValueError(f"expected a 2D grey image (H, W), got shape {y.shape}")
    k = prepare_kernel(kernel, y.shape).astype(np.float64)
    spectra = kernel_spectra(torch.from_numpy(k), y.shape)
    yt = torch.from_numpy(y)[None]
    y_pad, problem = pad_and_taper(yt, spectra), prepare_problem(yt, spectra=spectra)
    g = spectra.geometry
    crop = (slice(g.before[0], g.before[0] + y.shape[0]), slice(g.before[1], g.before[1] + y.shape[1]))
    return PaddedProblem(y_pad[0].numpy(), k, problem, crop)


# ----------------------------------------------------------------------------- hyper-Laplacian prior (Krishnan & Fergus 2009)


def _largest_root_depressed_cubic(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Largest real root of ``m³ + p m + q = 0`` (Cardano / trigonometric form), element-wise."""
    p = np.asarray(p, np.float64)
    q = np.asarray(q, np.float64)
    disc = (q / 2) ** 2 + (p / 3) ** 3
    sq = np.sqrt(np.maximum(disc, 0.0))
    one = np.cbrt(-q / 2 + sq) + np.cbrt(-q / 2 - sq)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.sqrt(np.maximum(-p / 3, 0.0))
        arg = np.clip(np.where(r > 0, (-q / 2) / np.maximum(r, 1e-300) ** 3, 0.0), -1.0, 1.0)
        three = 2 * r * np.cos(np.arccos(arg) / 3)
    return np.where(disc >= 0, one, three)


def solve_w(v: np.ndarray, beta: float, alpha: float = 2 / 3) -> np.ndarray:
    """Element-wise minimiser of ``|w|^α + β/2 (w − v)²`` (the w-subproblem of [1]_).

    Parameters
    ----------
    v : array
        Current gradients of the latent image.
    beta : float
        Half-quadratic penalty weight β > 0.
    alpha : {2/3, 1/2, 1}
        Exponent of the hyper-Laplacian prior.

    Returns
    -------
    w : float64 array, shape of ``v``.

    Notes
    -----
    With ``w = sign(v) tᵏ`` (``k = 1/α``, ``t ≥ 0``) the stationarity
    condition becomes a polynomial in ``t`` with no root or two positive
    roots, the larger being the non-zero local minimum [1]_:

    - α = 2/3: ``t⁴ − |v| t + 2/(3β) = 0`` (the paper's quartic), solved
      analytically by Ferrari's method (its resolvent cubic
      ``m³ − c m − v²/8 = 0`` by Cardano), polished by two Newton steps;
    - α = 1/2: ``t³ − |v| t + 1/(2β) = 0``, solved in trigonometric form;
    - α = 1: soft thresholding at ``1/β``.

    The result is that root's ``w`` or 0, whichever has the lower cost (the
    cost is not convex), so it is the exact global minimiser up to round-off.

    References
    ----------
    .. [1] D. Krishnan, R. Fergus, "Fast Image Deconvolution using
           Hyper-Laplacian Priors", NIPS 2009.
    """
    v = np.asarray(v, np.float64)
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    a = np.abs(v)
    if math.isclose(alpha, 1.0):
        return np.sign(v) * np.maximum(a - 1.0 / beta, 0.0)
    if math.isclose(alpha, 2 / 3):
        c = 2.0 / (3.0 * beta)
        a_min = (4.0 / 3.0 * c * 4.0 ** (1 / 3)) ** 0.75  # below it g(t) > 0 for all t ≥ 0: w = 0
    elif math.isclose(alpha, 0.5):
        q = 1.0 / (2.0 * beta)
        a_min = 3.0 * (q / 2) ** (2 / 3)  # below it the cubic has no positive root: w = 0
    else:
        raise ValueError(f"alpha must be 2/3, 1/2 or 1, got {alpha}")
    out = np.zeros_like(a)
    idx = np.nonzero(a >= a_min * (1 - 1e-12))  # usually a small fraction of the gradients
    av = a[idx]
    if av.size == 0:
        return out
    with np.errstate(invalid="ignore", divide="ignore"):
        if math.isclose(alpha, 2 / 3):
            m = _largest_root_depressed_cubic(np.full_like(av, -c), -(av**2) / 8)
            s = np.sqrt(np.maximum(2 * m, 0.0))
            inner = -(s**2) + 2 * av / np.where(s > 0, s, np.inf)
            t = (s + np.sqrt(np.maximum(inner, 0.0))) / 2
            valid = s > 0
            for _ in range(2):  # Newton polish on g(t) = t⁴ − a t + c
                g = t**4 - av * t + c
                dg = 4 * t**3 - av
                t = np.where(valid & (np.abs(dg) > 1e-12), t - g / np.where(dg == 0, 1.0, dg), t)
            w = t**3
        else:
            r = np.sqrt(av / 3)
            arg = np.clip(-(q / 2) / np.where(r > 0, r, np.inf) ** 3, -1.0, 1.0)
            t = 2 * r * np.cos(np.arccos(arg) / 3)
            valid = av > 0
            w = t**2
    w = np.where(valid & np.isfinite(w), w, 0.0)
    cost_w = np.abs(w) ** alpha + beta / 2 * (w - av) ** 2
    cost_0 = beta / 2 * av**2
    out[idx] = np.where(cost_w < cost_0, w, 0.0)
    return np.sign(v) * out


def hyper_laplacian(
    y: np.ndarray,
    kernel: np.ndarray,
    lam: float,
    alpha: float = 2 / 3,
    beta0: float = 1.0,
    beta_rate: float = 2 * math.sqrt(2),
    beta_max: float = 256.0,
    inner: int = 1,
) -> np.ndarray:
    """Non-blind deconvolution with a hyper-Laplacian gradient prior [1]_.

    Minimises ``λ/2 ‖k ⊗ x − y‖² + Σ |∇ₕx|^α + |∇ᵥx|^α`` by half-quadratic
    splitting: auxiliary gradients ``w`` with penalty ``β/2 ‖∇x − w‖²``,
    β increased from ``beta0`` by ``beta_rate`` while below ``beta_max``
    (the paper's schedule: 6 outer iterations), alternating ``inner`` times
    per β between the w-subproblem (:func:`solve_w`, exact) and the
    x-subproblem (closed form in the Fourier domain, eq. 6 of the cascade with γ = λ/β)::

        x = F⁻¹[(conj(K) Y + (β/λ) Σ conj(Dₗ) Wₗ) / (|K|² + (β/λ) Σ |Dₗ|²)]

    Parameters
    ----------
    y : (H, W) float array
        Blurry, noisy image on the [0, 1] scale.
    kernel : (kh, kw) array
        Blur kernel (normalised to sum 1 and made odd-sized here).
    lam : float
        Data-term weight λ (larger for less noise; ~2000 for 1 % noise).
    alpha : {2/3, 1/2, 1}
        Prior exponent (2/3 is the paper's recommendation for natural images).
    beta0, beta_rate, beta_max : float
        Continuation schedule of the splitting weight β.
    inner : int
        Alternations per β value.

    Returns
    -------
    (H, W) float64 array: the deblurred image (not clipped).

    Notes
    -----
    Boundaries are handled as in the learned cascade: replicate padding and
    edge tapering (:func:`padded_problem`), circular FFTs on the padded
    domain, then cropping.  Gradients are the engine's circular backward
    differences; the iterations start from the padded blurry image.

    References
    ----------
    .. [1] D. Krishnan, R. Fergus, "Fast Image Deconvolution using
           Hyper-Laplacian Priors", NIPS 2009.
    """
    if not lam > 0:
        raise ValueError(f"lam must be > 0, got {lam}")
    p = padded_problem(y, kernel)
    x = torch.from_numpy(p.y_pad)[None]
    beta = float(beta0)
    while beta < beta_max:
        # the x-subproblem is eq. 6 with γ = λ/β and no ε (its denominator is positive)
        for _ in range(inner):
            ws = [torch.from_numpy(solve_w(g[0].numpy(), beta, alpha))[None] for g in image_gradients(x)]
            x = deconvolve(p.problem, lam / beta, ws, epsilon=0.0)
        beta *= beta_rate
    return x[0].numpy()[p.crop]


# ----------------------------------------------------------------------------- scikit-image wrappers


def wiener(y: np.ndarray, kernel: np.ndarray, balance: float) -> np.ndarray:
    """Regularised Wiener–Hunt deconvolution (:func:`skimage.restoration.wiener`).

    Parameters
    ----------
    y : (H, W) float array
        Blurry image on [0, 1].
    kernel : (kh, kw) array
        Blur kernel (normalised, made odd-sized).
    balance : float
        Weight of the regulariser (scikit-image's default Laplacian) against
        the data term; larger = smoother.

    Returns
    -------
    (H, W) float64 array (not clipped).

    Notes
    -----
    Runs on the engine's replicate-padded, edge-tapered image
    (:func:`padded_problem`) and is cropped back, so it sees the same
    boundary handling as the cascade (scikit-image itself assumes periodic
    boundaries).  scikit-image's own clipping to [-1, 1] is turned off.
    """
    from skimage.restoration import wiener as _sk_wiener

    p = padded_problem(y, kernel)
    return np.asarray(_sk_wiener(p.y_pad, p.kernel, balance, clip=False), np.float64)[p.crop]


def richardson_lucy(y: np.ndarray, kernel: np.ndarray, iterations: int) -> np.ndarray:
    """Richardson–Lucy deconvolution (:func:`skimage.restoration.richardson_lucy`).

    Parameters
    ----------
    y : (H, W) float array
        Blurry image on [0, 1].
    kernel : (kh, kw) array
        Blur kernel (normalised, made odd-sized).
    iterations : int
        Number of RL iterations (the only regularisation: stop early).

    Returns
    -------
    (H, W) float64 array (not clipped).

    Notes
    -----
    Runs on the engine's replicate-padded, edge-tapered image
    (:func:`padded_problem`) and is cropped back, like the cascade.  RL
    models Poisson data and needs non-negative values, so the padded image
    is clipped below at 0 first (noise makes a few pixels negative).
    scikit-image's own clipping to [-1, 1] is turned off.
    """
    from skimage.restoration import richardson_lucy as _sk_rl

    if int(iterations) < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    p = padded_problem(y, kernel)
    out = _sk_rl(np.maximum(p.y_pad, 0.0), p.kernel, num_iter=int(iterations), clip=False)
    return np.asarray(out, np.float64)[p.crop]


# ----------------------------------------------------------------------------- tuning


def _psnr(est: np.ndarray, gt: np.ndarray) -> float:
    mse = float(np.mean((np.clip(est, 0, 1) - gt) ** 2))
    return 10 * math.log10(1.0 / max(mse, 1e-20))


def _blur_case(sharp: np.ndarray, kernel: np.ndarray, noise_level: float, seed: int):
    """Valid blur + Gaussian noise; returns (blurry, odd kernel, aligned sharp crop)."""
    from scipy.signal import fftconvolve

    k = np.asarray(kernel, np.float64)
    k = np.pad(k, ((0, 1 - k.shape[0] % 2), (0, 1 - k.shape[1] % 2)))
    k = k / k.sum()
    y = fftconvolve(np.asarray(sharp, np.float64), k, mode="valid")
    y = y + np.random.default_rng(seed).normal(0.0, noise_level, y.shape)
    oy, ox = k.shape[0] // 2, k.shape[1] // 2
    gt = np.asarray(sharp, np.float64)[oy : oy + y.shape[0], ox : ox + y.shape[1]]
    return y, k, gt


def tune_baselines(
    sharp: np.ndarray,
    kernels: Sequence[np.ndarray],
    noise_level: float,
    lambdas: Sequence[float] = HL_LAMBDAS,
    balances: Sequence[float] = WIENER_BALANCES,
    rl_iterations: Sequence[int] = RL_ITERATIONS,
    alpha: float = 2 / 3,
    seed: int = 0,
) -> dict:
    """Pick each baseline's parameter for one noise level by grid search.

    Each kernel blurs ``sharp`` (valid convolution, Gaussian noise of s.d.
    ``noise_level``, seeded), every grid value is run on every case, and the
    value with the highest mean PSNR (output clipped to [0, 1], against the
    aligned crop of ``sharp``) wins.  Use a tuning image that is *not* in the
    evaluation set.

    Parameters
    ----------
    sharp : (H, W) float array on [0, 1]
        Tuning image.
    kernels : sequence of (kh, kw) arrays
        Blur kernels (normalised here).
    noise_level : float
        Noise s.d. on [0, 1].
    lambdas, balances, rl_iterations : sequences
        Grids of the hyper-Laplacian λ, the Wiener balance and the
        Richardson–Lucy iteration count.
    alpha : float
        Hyper-Laplacian exponent.
    seed : int
        Noise seed (case i uses ``seed + i``).

    Returns
    -------
    dict
        ``{"hl_lambda": float, "wiener_balance": float, "rl_iterations": int,
        "scores": {"hl": {value: mean PSNR}, "wiener": {...}, "rl": {...}}}``.
    """
    cases = [_blur_case(sharp, k, noise_level, seed + i) for i, k in enumerate(kernels)]
    if not cases:
        raise ValueError("need at least one kernel")

    def mean_psnr(fn) -> float:
        return float(np.mean([_psnr(fn(y, k), gt) for y, k, gt in cases]))

    hl = {float(lam): mean_psnr(lambda y, k, lam=lam: hyper_laplacian(y, k, lam, alpha=alpha)) for lam in lambdas}
    wi = {float(b): mean_psnr(lambda y, k, b=b: wiener(y, k, b)) for b in balances}
    rl = {int(n): mean_psnr(lambda y, k, n=n: richardson_lucy(y, k, n)) for n in rl_iterations}
    return {
        "hl_lambda": max(hl, key=hl.get),
        "wiener_balance": max(wi, key=wi.get),
        "rl_iterations": max(rl, key=rl.get),
        "scores": {"hl": hl, "wiener": wi, "rl": rl},
    }
