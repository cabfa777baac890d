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

    - a list of n kernels (2D or 3D): one per channel;
    - a 2D kernel: the same for every channel;
    - a 3D array ``(k0, kh, kw)``: for 2D channel images ``n`` stacked 2D kernels (k0 = n); for channel
      images of 3 axes or more ((Z, Y, X) volumes, (T, Y, X) stacks) one 3D PSF for every channel — unless
      k0 = n, where both readings fit: that is a ``ValueError`` asking for the list form
      (``[psf] * n`` for one PSF, ``list(kernels)`` for per-channel 2D kernels), never a guess.
    """
    if not isinstance(kernel, (list, tuple)) and np.ndim(kernel) == 3 and channel_ndim >= 3:
        if np.shape(kernel)[0] == n:
            raise ValueError(
                f"the kernel has shape {np.shape(kernel)} and the image {n} channels of {channel_ndim} axes each: "
                f"it could be one 3D PSF for every channel or {n} stacked 2D kernels, one per channel. Give a "
                f"list: [psf] * {n} for the one PSF, or list(kernels) for one 2D kernel per channel"
            )
        return [kernel] * n
    return per_channel(kernel, n, "kernel", lambda k: not isinstance(k, (list, tuple)) and np.ndim(k) == 2)


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
