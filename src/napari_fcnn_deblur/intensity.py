"""Mapping images to the [0, 1] intensity scale the networks were trained on, and back.

Rule (see :func:`intensity_scaling`):

- float images whose values already lie about in [0, 1] (between -0.25 and
  1.25, leaving room for noise) are used as they are;
- ``uint8`` images are divided by 255 (their full range);
- everything else (uint16, other integers, floats in other ranges) is mapped
  linearly so that the 0.05th percentile goes to 0 and the 99.95th to 1
  (robust to hot pixels); results are mapped back with the inverse map.

``noise_level`` always means the noise s.d. on that [0, 1] scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Percentiles of the robust map for images not already on [0, 1].
LOW_PERCENTILE = 0.05
HIGH_PERCENTILE = 99.95


@dataclass(frozen=True)
class IntensityScaling:
    """``scaled = (image - offset) / scale``; ``image = scaled * scale + offset``."""

    offset: float = 0.0
    scale: float = 1.0

    def forward(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float32) - np.float32(self.offset)) / np.float32(self.scale)).astype(np.float32)

    def inverse(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float32) * np.float32(self.scale) + np.float32(self.offset)).astype(np.float32)


def intensity_scaling(image) -> IntensityScaling:
    """The map from ``image``'s own units to the [0, 1] scale (rule in the module docstring)."""
    a = np.asarray(image)
    if a.dtype == np.uint8:
        return IntensityScaling(0.0, 255.0)
    if np.issubdtype(a.dtype, np.floating):
        lo, hi = float(np.min(a)), float(np.max(a))
        if lo >= -0.25 and hi <= 1.25:
            return IntensityScaling(0.0, 1.0)
    sample = a.ravel()
    if sample.size > 4_000_000:  # percentiles of a strided sample are plenty for large stacks
        sample = sample[:: sample.size // 2_000_000]
    lo, hi = np.percentile(sample.astype(np.float64), [LOW_PERCENTILE, HIGH_PERCENTILE])
    if not hi > lo:
        lo, hi = float(sample.min()), float(sample.max())
    if not hi > lo:  # constant image: nothing to deblur, keep units
        return IntensityScaling(float(lo), 1.0)
    return IntensityScaling(float(lo), float(hi - lo))
