"""Multi-channel images: an explicit channel axis, one kernel (PSF) and one noise level per channel.

Fluorescence data has channels that are not colours: ``(C, Y, X)``, ``(Z, C, Y, X)``, ``(Y, X, 4)``
with four fluorophores.  With ``channel_axis`` the engine deblurs each channel as its own image —
its own kernel, noise level and intensity map (channels differ in brightness and noise) — and puts
the results back on that axis.  Without it, the rule of :mod:`.layout` applies (``(Y, X, 3|4)`` is
RGB(A)).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def check_channel_axis(channel_axis, ndim: int) -> int:
    """``channel_axis`` as a non-negative axis of an ``ndim``-D image, not one of the plane's two axes."""
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, (int, np.integer)):
        raise ValueError(f"channel_axis must be an integer axis, got {channel_axis!r}")
    if ndim < 3:
        raise ValueError(f"channel_axis needs an image with at least 3 axes (channels, Y, X), got {ndim}")
    axis = int(channel_axis) + (ndim if channel_axis < 0 else 0)
    if not 0 <= axis < ndim:
        raise ValueError(f"channel_axis {channel_axis} is out of range for an image with {ndim} axes")
    return axis


def per_channel(value, n: int, what: str, is_single) -> list:
    """``value`` for each of ``n`` channels: one value for all (``is_single(value)``), or a sequence of ``n``."""
    if is_single(value):
        return [value] * n
    values = list(value) if isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, str) else None
    if values is None or len(values) != n:
        raise ValueError(f"{what}: give one for all channels or one per channel ({n}), got {value!r}")
    return values


def channel_kernels(kernel, n: int, channel_ndim: int = 2) -> list:
    """The kernel of each of ``n`` channels whose images have ``channel_ndim`` axes.

    One kernel for every channel: a 2D kernel, or — when the channel images have 3 axes or more
    ((Z, Y, X) volumes) — one 3D PSF ``(kz, ky, kx)``.  Otherwise one per channel: a list of n kernels
    (2D or 3D), or for 2D channel images an ``(n, kh, kw)`` array.  A 3D array on volume channels is
    always one PSF, never n stacked 2D kernels (those go as a list), so a PSF whose kz happens to equal
    the channel count is not cut into planes.
    """
    def single(k) -> bool:
        if isinstance(k, (list, tuple)):
            return False
        return np.ndim(k) == 2 or (np.ndim(k) == 3 and channel_ndim >= 3)

    return per_channel(kernel, n, "kernel", single)


def channel_noise_levels(noise_level, n: int, image_shape: tuple[int, ...] | None = None,
                         axis: int | None = None) -> list:
    """One noise level (a number or "auto") for every channel, or one per channel.

    A per-pixel noise map with the image's shape (``image_shape``) is cut along the channel ``axis``;
    a 2D map (one plane's) serves every channel.
    """
    if image_shape is not None and not isinstance(noise_level, str) and np.ndim(noise_level) >= 2:
        m = np.asarray(noise_level)
        if m.shape == tuple(image_shape):
            return [channel_view(m, axis, c) for c in range(n)]
        if m.ndim == 2:
            return [m] * n
        raise ValueError(f"the noise map has shape {m.shape}; with channel_axis it must have the image's shape "
                         f"{tuple(image_shape)} or one plane's (Y, X)")
    return per_channel(noise_level, n, "noise_level", lambda v: isinstance(v, (str, int, float, np.number)))


def channel_view(image, axis: int, c: int):
    """Channel ``c`` of an array-like (a view for numpy, lazy for dask)."""
    return image[(slice(None),) * axis + (c,)]
