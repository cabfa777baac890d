"""Synthetic 3D fluorescence phantoms and camera-like blurred z-stacks, for training and benchmarks.

A phantom is a float32 ``(Z, Y, X)`` volume on [0, 1] (1 = the brightest emitter), deterministic
from its seed.  Sizes are in voxels (structures are drawn on an isotropic voxel grid; an anisotropic
z-stack's PSF carries the physical voxel size).  Five structure types:

``filaments``      persistent random 3D curves ~1 voxel thick (microtubules, actin).
``puncta``         sub-resolution and small spots (vesicles, single molecules, beads).
``membranes``      thin curved sheets: level sets of a smooth random field (ER, plasma membrane).
``hollow_nuclei``  ellipsoids with a bright rim and a dim, textured interior (nuclear envelope).
``dense_texture``  granular, log-normal cytoplasm-like texture filling a soft random region.

Training and benchmark phantoms are kept apart: benchmarks use seeds ≥ :data:`BENCHMARK_SEED_START`
(10⁶) and also the held-out structure types :data:`HELD_OUT_STRUCTURES` (``hollow_nuclei``);
:func:`random_phantom_3d` draws its seeds below 10⁶ and, by default, only
:data:`TRAINING_STRUCTURES`.

:func:`blur_volume` turns a phantom into camera data: blur by a 3D PSF, Poisson shot noise,
Gaussian read noise, a camera offset.  numpy/scipy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.signal import fftconvolve

STRUCTURES = ("filaments", "puncta", "membranes", "hollow_nuclei", "dense_texture")
#: Structure types only benchmarks use (never drawn by :func:`random_phantom_3d` by default).
HELD_OUT_STRUCTURES = ("hollow_nuclei",)
TRAINING_STRUCTURES = tuple(s for s in STRUCTURES if s not in HELD_OUT_STRUCTURES)
#: Benchmark phantoms use seeds ``BENCHMARK_SEED_START + i``; training seeds stay below it.
BENCHMARK_SEED_START = 10**6


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation length ~``scale`` voxels.

    Smoothed on a grid coarser by ``f = ⌊scale / 3⌋`` (≥ 1), then linearly upsampled (fast for large σ).
    """
    f = max(1, int(scale // 3))
    small = tuple(int(np.ceil(s / f)) + 1 for s in shape)
    g = ndimage.gaussian_filter(rng.standard_normal(small), scale / f, mode="wrap")
    if f > 1:
        g = ndimage.zoom(g, f, order=1)
    g = g[tuple(slice(0, s) for s in shape)]
    return (g - g.mean()) / (g.std() + 1e-12)


def _filaments(rng, shape, density):
    vol = np.zeros(shape)
    n = max(1, int(round(density * np.prod(shape) / 8000)))
    steps = int(rng.integers(80, 400))
    pos = rng.uniform(0, 1, (n, 3)) * np.array(shape)
    d = rng.standard_normal((n, 3))
    bright = rng.uniform(0.4, 1.0, n)
    length = rng.integers(steps // 4, steps + 1, n)  # per-filament length, in half-voxel steps
    for t in range(steps):
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        pos = pos + 0.5 * d
        d = d + rng.normal(0, 0.12, d.shape)  # persistence length ~ 1 / 0.12² half-steps
        idx = np.round(pos).astype(int)
        ok = np.all((idx >= 0) & (idx < np.array(shape)), axis=1) & (t < length)
        np.maximum.at(vol, tuple(idx[ok].T), bright[ok])
    return ndimage.gaussian_filter(vol, 0.6)


def _puncta(rng, shape, density):
    vol = np.zeros(shape)
    n = max(1, int(round(density * np.prod(shape) / 2000)))
    idx = tuple(rng.integers(0, s, n) for s in shape)
    np.maximum.at(vol, idx, rng.uniform(0.3, 1.0, n))
    small = ndimage.gaussian_filter(vol, 0.5)
    big = np.zeros(shape)  # a few larger vesicles
    m = max(1, n // 10)
    np.maximum.at(big, tuple(rng.integers(0, s, m) for s in shape), rng.uniform(0.3, 1.0, m))
    big = ndimage.gaussian_filter(big, 1.5)
    return small / max(small.max(), 1e-12) + big / max(big.max(), 1e-12) * 0.7


def _membranes(rng, shape, density):
    f = _smooth_field(rng, shape, 4 + 12 * (1 - density))
    grad = np.sqrt(sum(g**2 for g in np.gradient(f)))
    dist = f / (grad + 1e-6)  # ≈ signed distance (voxels) to the level set f = 0
    sheet = np.exp(-0.5 * (dist / 0.8) ** 2)
    return sheet * (0.6 + 0.4 * np.clip(0.5 + 0.25 * _smooth_field(rng, shape, 10.0), 0, 1))


def _hollow_nuclei(rng, shape, density):
    vol = np.zeros(shape)
    shape_a = np.array(shape, float)
    lateral = np.clip(shape_a[1:].min() / 6, 4, 20)
    axial = np.clip(shape_a[0] / 3, 3, 12)
    n = max(1, int(round(density * 0.5 * np.prod(shape) / (4 / 3 * np.pi * lateral**2 * axial))))
    texture = _smooth_field(rng, shape, 2.0)
    for _ in range(n):
        a = np.array([axial, lateral, lateral]) * rng.uniform(0.6, 1.2, 3)
        c = rng.uniform(0, 1, 3) * shape_a
        lo = np.maximum(np.floor(c - a - 3), 0).astype(int)
        hi = np.minimum(np.ceil(c + a + 4), shape_a).astype(int)
        if np.any(hi <= lo):
            continue
        box = tuple(slice(i, j) for i, j in zip(lo, hi))
        zz, yy, xx = np.meshgrid(*(np.arange(i, j) - ci for i, j, ci in zip(lo, hi, c)), indexing="ij")
        th = rng.uniform(0, np.pi)
        u = np.stack([zz, yy * np.cos(th) + xx * np.sin(th), -yy * np.sin(th) + xx * np.cos(th)])
        q = sum((u[i] / a[i]) ** 2 for i in range(3))
        dist = (q - 1) / (2 * np.sqrt(sum((u[i] / a[i] ** 2) ** 2 for i in range(3))) + 1e-6)  # ≈ to the surface
        rim = np.exp(-0.5 * (dist / 0.9) ** 2)
        inside = 1 / (1 + np.exp(dist * 3)) * rng.uniform(0.1, 0.3) * (1 + 0.5 * texture[box])
        vol[box] = np.maximum(vol[box], rim * rng.uniform(0.6, 1.0) + inside)
    return vol


def _dense_texture(rng, shape, density):
    region = 1 / (1 + np.exp(-4 * (_smooth_field(rng, shape, 12.0) - (1 - 2 * density))))
    grain = np.exp(0.7 * _smooth_field(rng, shape, 1.2) + 0.4 * _smooth_field(rng, shape, 4.0))
    tex = region * grain
    return np.minimum(tex / np.percentile(tex, 99.5), 1.0)  # tame the log-normal's tail


_GENERATORS = {"filaments": _filaments, "puncta": _puncta, "membranes": _membranes,
               "hollow_nuclei": _hollow_nuclei, "dense_texture": _dense_texture}


def phantom_3d(shape: Sequence[int], structure: str, density: float = 0.5, brightness: float = 1.0,
               seed: int = 0) -> np.ndarray:
    """One synthetic 3D fluorescence structure, deterministic from ``seed``.

    Parameters
    ----------
    shape : (Z, Y, X) ints ≥ 4
        Volume shape in voxels.
    structure : str
        One of :data:`STRUCTURES`.
    density : float in [0, 1]
        How much of the volume the structure fills (number of filaments / spots / nuclei, spacing
        of the membranes, filled fraction of the texture); 0.5 is a typical cell.
    brightness : float in (0, 1]
        The phantom's maximum value.
    seed : int ≥ 0
        Random seed; benchmarks use seeds ≥ :data:`BENCHMARK_SEED_START`.

    Returns
    -------
    numpy.ndarray, float32, shape ``shape``, values in [0, brightness], maximum = ``brightness``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"shape must be three sizes >= 4 (Z, Y, X), got {shape}")
    if structure not in _GENERATORS:
        raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
    if not (0 <= density <= 1 and 0 < brightness <= 1):
        raise ValueError(f"need 0 <= density <= 1 and 0 < brightness <= 1, got {density}, {brightness}")
    vol = np.clip(_GENERATORS[structure](np.random.default_rng(seed), shape, float(density)), 0, None)
    peak = vol.max()
    if peak <= 0:  # cannot happen for the built-in structures; keep the contract anyway
        return np.zeros(shape, np.float32)
    return np.clip(vol / peak * brightness, 0, 1).astype(np.float32)


def random_phantom_3d(shape: Sequence[int], rng: np.random.Generator,
                      structures: Sequence[str] = TRAINING_STRUCTURES, max_structures: int = 3,
                      background: tuple[float, float] = (0.0, 0.05)) -> np.ndarray:
    """A mix of 1 to ``max_structures`` different structure types with random density and brightness.

    Each type is drawn with density ~ U(0.2, 0.9), brightness ~ U(0.3, 1) and a seed below
    :data:`BENCHMARK_SEED_START` (so training mixes never reuse a benchmark phantom); the layers are
    summed with a constant background ~ U(*background) and the result is scaled down to [0, 1] if
    it exceeds 1.

    Parameters
    ----------
    shape : (Z, Y, X) ints ≥ 4
    rng : numpy.random.Generator
        Source of all randomness (the result is deterministic given its state).
    structures : sequence of str
        Types to choose from (default :data:`TRAINING_STRUCTURES`, i.e. without the held-out ones).
    max_structures : int ≥ 1
        Most types in one phantom.
    background : (low, high)
        Range of the constant background (autofluorescence) level.

    Returns
    -------
    numpy.ndarray, float32, shape ``shape``, values in [0, 1].
    """
    structures = list(structures)
    if not structures or any(s not in _GENERATORS for s in structures):
        raise ValueError(f"structures must be a non-empty subset of {STRUCTURES}, got {structures}")
    count = int(rng.integers(1, min(max_structures, len(structures)) + 1))
    chosen = rng.choice(len(structures), size=count, replace=False)
    vol = np.full(tuple(int(s) for s in shape), rng.uniform(*background))
    for i in sorted(chosen):
        vol += phantom_3d(shape, structures[i], density=rng.uniform(0.2, 0.9), brightness=rng.uniform(0.3, 1.0),
                          seed=int(rng.integers(0, BENCHMARK_SEED_START)))
    return (vol / max(1.0, vol.max())).astype(np.float32)


def blur_volume(volume: np.ndarray, psf: np.ndarray, photons: float = 200.0, read_noise: float = 2.0,
                offset: float = 100.0, rng: np.random.Generator | None = None, mode: str = "valid",
                uint16: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Simulate a camera z-stack of ``volume`` seen through ``psf``.

    ``expected = photons · (volume ⊛ psf)``, ``data = Poisson(expected) + N(0, read_noise²) + offset``,
    in camera units with a gain of 1 ADU per photoelectron, so a region of blurred intensity ``v``
    has mean ``photons · v + offset`` and variance ``photons · v + read_noise²``.

    Parameters
    ----------
    volume : array (Z, Y, X)
        Sharp fluorescence, intensity 1 = ``photons`` photoelectrons per voxel (e.g. a phantom).
    psf : array (Kz, Ky, Kx)
        Non-negative kernel (normalised to sum 1 here), centred on its middle voxel.
    photons : float > 0
        Expected photoelectrons per voxel at (blurred) intensity 1.
    read_noise : float ≥ 0
        Gaussian read-noise standard deviation, in photoelectrons (= ADU, gain 1).
    offset : float
        Camera offset (bias) added to every voxel, ADU.
    rng : numpy.random.Generator, optional
        Noise source (default: a fresh ``default_rng()``).
    mode : {"valid", "same"}
        ``"valid"`` (default, what the training engine uses): only the voxels whose whole PSF
        footprint lies inside ``volume``, shape ``volume.shape − psf.shape + 1``, no border
        assumption; ``"same"``: same shape as ``volume``, zero outside it (darker borders).
    uint16 : bool
        Round and clip to [0, 65535] and return uint16 (like a camera); else float32.

    Returns
    -------
    data : numpy.ndarray (float32 or uint16)
        The noisy camera stack.
    sharp : numpy.ndarray, float32
        The part of ``volume`` aligned voxel for voxel with ``data`` (``volume`` itself for "same").
    """
    x = np.asarray(volume, dtype=np.float64)
    k = np.clip(np.asarray(psf, dtype=np.float64), 0, None)
    if x.ndim != 3 or k.ndim != 3:
        raise ValueError(f"volume and psf must both be 3D, got {x.shape} and {k.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(k)) and k.sum() > 0):
        raise ValueError("volume and psf must be finite and the psf must have positive mass")
    if mode not in ("valid", "same"):
        raise ValueError(f"mode must be 'valid' or 'same', got {mode!r}")
    if mode == "valid" and any(s < n for s, n in zip(x.shape, k.shape)):
        raise ValueError(f"valid blur needs a volume at least as large as the psf: {x.shape} < {k.shape}")
    if not (np.isfinite(photons) and photons > 0 and read_noise >= 0 and np.isfinite(offset)):
        raise ValueError(f"need photons > 0, read_noise >= 0, a finite offset; got {photons}, {read_noise}, {offset}")
    rng = np.random.default_rng() if rng is None else rng
    blurred = np.clip(fftconvolve(x, k / k.sum(), mode=mode), 0, None)
    data = rng.poisson(photons * blurred) + rng.normal(0.0, read_noise, blurred.shape) + offset
    if mode == "valid":
        o = [n // 2 for n in k.shape]
        sharp = x[tuple(slice(c, c + n) for c, n in zip(o, blurred.shape))]
    else:
        sharp = x
    data = np.clip(np.round(data), 0, 65535).astype(np.uint16) if uint16 else data.astype(np.float32)
    return data, sharp.astype(np.float32)
