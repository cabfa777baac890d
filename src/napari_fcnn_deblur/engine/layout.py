"""How an input array maps to a batch of 2D planes ``(N, Y, X)`` and back.

Rule: an array ``(Y, X, 3)`` or ``(Y, X, 4)`` with both sides larger than 4
is RGB(A) and deblurred per colour channel (alpha passes through unchanged);
every other array ``(..., Y, X)`` is a stack of planes.  A caller that knows
better (a napari RGB layer, which may also have leading axes ``(..., Y, X, 3|4)``)
says so with ``rgb=True``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def is_rgb_shape(shape) -> bool:
    """Whether an array of ``shape`` is taken as RGB(A) (see the module docstring)."""
    return len(shape) == 3 and shape[-1] in (3, 4) and shape[0] > 4 and shape[1] > 4


@dataclass(frozen=True)
class PlaneLayout:
    """The plane view of an array of ``shape`` (RGB(A) when ``rgb``)."""

    shape: tuple[int, ...]
    rgb: bool

    @classmethod
    def of(cls, shape, rgb: bool | None = None) -> PlaneLayout:
        """The layout of an array of ``shape``; ``rgb`` None applies the module's rule."""
        shape = tuple(int(s) for s in shape)
        return cls(shape, is_rgb_shape(shape) if rgb is None else bool(rgb))

    @property
    def lead(self) -> tuple[int, ...]:
        """Axes before the plane (and, for RGB(A), before the colour axis)."""
        return self.shape[:-3] if self.rgb else self.shape[:-2]

    @property
    def plane_shape(self) -> tuple[int, int]:
        return self.shape[-3:-1] if self.rgb else self.shape[-2:]

    @property
    def n_planes(self) -> int:
        return math.prod(self.lead) * (3 if self.rgb else 1)

    def colour(self, a):
        """The values that are deblurred (RGB(A): the colour channels), as a view or a lazy slice."""
        return a[..., :3] if self.rgb else a

    def plane(self, a, i: int) -> np.ndarray:
        """Plane ``i`` of an array-like (numpy, dask, zarr), read now as numpy."""
        if self.rgb:
            i, c = divmod(i, 3)
            return np.asarray(a[np.unravel_index(i, self.lead) + (Ellipsis, c)] if self.lead else a[..., c])
        return np.asarray(a[np.unravel_index(i, self.lead)] if self.lead else a)

    def to_planes(self, a: np.ndarray) -> np.ndarray:
        """``(N, Y, X)`` planes (RGB(A): the colour channels of each leading index, in order)."""
        if self.rgb:
            a = np.moveaxis(a[..., :3], -1, -3)
        return a.reshape((-1,) + a.shape[-2:])

    def from_planes(self, planes: np.ndarray, original: np.ndarray | None = None) -> np.ndarray:
        """float32 array of ``shape`` from ``(N, Y, X)`` planes (RGBA: alpha from ``original``, else 0)."""
        if self.rgb:
            out = np.moveaxis(planes.reshape(self.lead + (3,) + self.plane_shape), -3, -1)
            if self.shape[-1] == 4:  # alpha passes through unchanged
                alpha = np.zeros(self.shape[:-1] + (1,), np.float32) if original is None else original[..., 3:4]
                out = np.concatenate([out, np.asarray(alpha, np.float32)], axis=-1)
            return np.ascontiguousarray(out, dtype=np.float32)
        return planes.reshape(self.shape).astype(np.float32, copy=False)
