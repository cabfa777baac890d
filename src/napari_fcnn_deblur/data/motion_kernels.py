"""Random camera-shake kernels for training (Chakrabarti, ECCV 2016, as used by Zhang et al. 2017).

Six points are drawn in a grid of the kernel's size, a smooth spline is fitted
through them, and the pixels the curve passes through get weights drawn from
N(1, 0.5²), clipped at zero; the kernel is normalised to sum 1.
"""

from __future__ import annotations

import numpy as np
from scipy import interpolate


def random_motion_kernel(
    rng: np.random.Generator,
    size: int | None = None,
    min_size: int = 11,
    max_size: int = 31,
    n_points: int = 6,
) -> np.ndarray:
    """One random motion-blur kernel.

    Parameters
    ----------
    rng : numpy Generator
    size : odd int or None
        Kernel side; None draws an odd size in ``[min_size, max_size]``.

    Returns
    -------
    (size, size) float32 array, non-negative, sum 1.
    """
    if size is None:
        size = int(rng.integers(min_size // 2, max_size // 2 + 1)) * 2 + 1
    for _ in range(100):
        pts = rng.uniform(0, size - 1, size=(n_points, 2))
        try:
            tck, _ = interpolate.splprep([pts[:, 0], pts[:, 1]], s=0, k=min(3, n_points - 1))
        except (ValueError, TypeError):
            continue
        t = np.linspace(0, 1, 40 * size)
        cy, cx = interpolate.splev(t, tck)
        iy = np.clip(np.round(cy).astype(int), 0, size - 1)
        ix = np.clip(np.round(cx).astype(int), 0, size - 1)
        kernel = np.zeros((size, size), np.float64)
        idx = np.unique(iy * size + ix)
        kernel.flat[idx] = np.clip(rng.normal(1.0, 0.5, size=len(idx)), 0, None)
        if kernel.sum() > 0:
            return (kernel / kernel.sum()).astype(np.float32)
    raise RuntimeError("could not draw a motion kernel")  # pragma: no cover


def embed_centered(kernel: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad an odd-sized kernel to ``size × size`` keeping its centre pixel in the middle."""
    kh, kw = kernel.shape
    if kh > size or kw > size or kh % 2 == 0 or kw % 2 == 0 or size % 2 == 0:
        raise ValueError(f"cannot embed a {kh}×{kw} kernel in {size}×{size}")
    out = np.zeros((size, size), kernel.dtype)
    oy, ox = (size - kh) // 2, (size - kw) // 2
    out[oy : oy + kh, ox : ox + kw] = kernel
    return out
