"""Deblurring planes of any size with bounded memory: the networks run in overlapping tiles.

Where the memory goes
---------------------
The FCNN of a stage needs about 0.75–1.5 kB per padded pixel in fp32 (64
channels × 4 bytes × a few live feature maps), 50× more than the FFT
deconvolution (a few complex half-spectra, ~20 B per pixel).  So only the
networks are tiled; the deconvolutions stay global.

Why the deconvolutions are not tiled
------------------------------------
The deconvolution of eq. 6 is a global filter 1 / (γ|K|² + |∇|² + ε) whose
impulse response decays exponentially but *slowly* where γ is large and the
kernel has (near-)zeros in its spectrum, as motion blurs do.  Measured on the
first deconvolution alone (γ = 250, the first γ of the authors' released
cascades), independent overlapping tiles (each padded, edge-tapered and
deconvolved as its own image, windows taken from the whole padded plane)
differed from the untiled result by 1.7·10⁻³ with a 128 px margin for an 11 px
line kernel, by 1.9·10⁻³ with 64 px for a 19 px Levin kernel and still by
1.4·10⁻³ with 384 px for the 27 px one; through the cascade, networks that
pass gradients on (like the soft-threshold test cascade) carry these errors
to the result.  Tiles would need several hundred pixels of overlap (and 3–8×
the work) to agree to 10⁻³.

The tiled path therefore runs the cascade's one stage loop
(:meth:`~napari_fcnn_deblur.core.cascade.Cascade.run`) on one plane at a time
with

1. the padded, edge-tapered plane and ``conj(K)·Y`` on the whole padded FFT
   grid (:func:`~napari_fcnn_deblur.core.solver.prepare_problem`, real FFTs,
   ~20 bytes per padded pixel);
2. every deconvolution on the whole grid (eq. 6, same ε);
3. the gradients and the FCNN of every stage tile by tile (:class:`TiledNetworks`):
   each tile is extended by :data:`~napari_fcnn_deblur.core.denoiser.RECEPTIVE_RADIUS`
   pixels (clipped at the grid's frame, where the network's zero padding is
   then the same as untiled) and only its core is kept, so the tiled networks
   reproduce the untiled ones exactly.

Tiled and untiled results agree to float32 round-off (≈10⁻⁶ on the [0, 1]
scale), whatever the kernel, the γ of each stage and the tile size.  (On
CUDA, cuDNN convolutions use TF32 by default: then tile and whole-plane
convolutions round differently, ~10⁻³ at most on a 4096² plane; with
``torch.backends.cudnn.allow_tf32 = False`` they agree to ~5·10⁻⁶.)  Peak
memory is ≈ :data:`PLANE_BYTES_PER_PIXEL` × padded plane + :data:`BYTES_PER_PIXEL`
× tile pixels (+ the caller's input and output arrays).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from ..core.denoiser import RECEPTIVE_RADIUS, denoise_gradients, tile_windows
from ..core.spectral import padding_geometry

#: Assumed memory of fp32 network inference per padded tile pixel (bytes).
BYTES_PER_PIXEL = 1200
#: Memory of the global FFT part of the tiled path per padded plane pixel (bytes, peak, float32).
PLANE_BYTES_PER_PIXEL = 24
#: Overlap (pixels) of the network tiles on every side: the FCNN's receptive-field radius.
TILE_MARGIN = RECEPTIVE_RADIUS
#: Smallest and largest automatic tile sides (pixels), per device type.
MIN_TILE_SIZE = 128
MAX_TILE_SIZE = {"cpu": 1024, "mps": 2048, "cuda": 4096}
#: Fraction of the free memory the automatic tile size may plan to use.
MEMORY_FRACTION = 0.5


def available_memory(device: "torch.device | str") -> int:
    """Free memory in bytes on ``device`` (CUDA: ``torch.cuda.mem_get_info``; otherwise host RAM)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil comes with distributed
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return 4 << 30


def auto_tile_size(device: "torch.device | str", plane_pixels: int = 0) -> int:
    """Tile side (pixels, multiple of 16) that fits the free memory of ``device``.

    Plans :data:`MEMORY_FRACTION` of the free memory, less the global FFT
    arrays of a plane of ``plane_pixels`` padded pixels, at
    :data:`BYTES_PER_PIXEL` per tile pixel; clipped to
    [:data:`MIN_TILE_SIZE`, :data:`MAX_TILE_SIZE`] (larger tiles are not
    faster on a CPU).
    """
    dev = torch.device(device)
    budget = MEMORY_FRACTION * available_memory(dev) - PLANE_BYTES_PER_PIXEL * plane_pixels
    side = int(math.sqrt(max(budget, 0) / BYTES_PER_PIXEL)) // 16 * 16
    return int(min(max(side, MIN_TILE_SIZE), MAX_TILE_SIZE.get(dev.type, 1024)))


def check_tile_size(tile_size) -> int | None:
    """``tile_size`` validated (None = automatic)."""
    if tile_size is None:
        return None
    if isinstance(tile_size, bool) or not isinstance(tile_size, (int, np.integer)):
        raise ValueError(f"tile_size must be an integer number of pixels or None (automatic), got {tile_size!r}")
    if tile_size < 2 * TILE_MARGIN + 16:
        raise ValueError(f"tile_size must be at least {2 * TILE_MARGIN + 16} pixels, got {tile_size}")
    return int(tile_size)


def needs_tiling(plane_shape, kernel_shape, tile_size: int) -> bool:
    """True if the padded plane has more pixels than one ``tile_size`` × ``tile_size`` tile."""
    hp, wp = padding_geometry(tuple(plane_shape), tuple(kernel_shape)).shape
    return hp * wp > tile_size * tile_size


def plane_fits(plane_shape, kernel_shape, device: torch.device, tile_size: int) -> bool:
    """Whether the global FFT arrays of a plane and one tile fit the free memory of ``device``."""
    hp, wp = padding_geometry(tuple(plane_shape), tuple(kernel_shape)).shape
    need = PLANE_BYTES_PER_PIXEL * hp * wp + BYTES_PER_PIXEL * tile_size * tile_size
    return need < 0.9 * available_memory(device)


def fft_device(plane_shape, kernel_shape, device: torch.device, tile_size: int) -> torch.device:
    """Where the global FFT part of a tiled plane runs: ``device`` when it fits there next to a tile, else the CPU."""
    if device.type != "cpu" and not plane_fits(plane_shape, kernel_shape, device, tile_size):
        return torch.device("cpu")
    return device


@dataclass(frozen=True)
class TiledNetworks:
    """Apply a stage's network to the gradients of padded planes tile by tile (a ``denoise`` of
    :meth:`~napari_fcnn_deblur.core.cascade.Cascade.run`).

    Same result as the whole-grid application: each tile (at most
    ``tile_size`` wide, sent to ``device``) is a :func:`~napari_fcnn_deblur.core.denoiser.tile_windows`
    window with a :data:`TILE_MARGIN` halo; the circular backward differences
    take the row/column before the window (wrapping at the frame).  No
    plane-sized gradient array is ever made; the outputs live where the
    latent image lives.  ``conditions``: per-pixel input channels of conditioned networks on the
    padded grid, ``(N, Hp, Wp)`` each (the noise-map cascade's, see
    :func:`~napari_fcnn_deblur.core.conditioned.network_condition`), cut into the same tiles.
    """

    tile_size: int
    device: torch.device
    channels_last: bool = True
    autocast_dtype: torch.dtype | None = None
    conditions: tuple[torch.Tensor, ...] = ()

    def __call__(self, net: torch.nn.Module, x: torch.Tensor, ndim: int) -> list[torch.Tensor]:
        if ndim != 2:
            raise ValueError(f"tiled networks run on planes, got a {ndim}D grid")
        n, hp, wp = x.shape
        core = max(self.tile_size - 2 * TILE_MARGIN, 16)
        zs = [torch.empty_like(x), torch.empty_like(x)]
        for i in range(n):
            for (wr, wc), keep in tile_windows((hp, wp), core, TILE_MARGIN):
                rows = torch.arange(wr.start - 1, wr.stop, device=x.device) % hp
                cols = torch.arange(wc.start - 1, wc.stop, device=x.device) % wp
                xw = x[i].index_select(0, rows).index_select(1, cols).to(self.device)
                grads = [(xw[1:, 1:] - xw[1:, :-1])[None], (xw[1:, 1:] - xw[:-1, 1:])[None]]
                del xw
                conds = [c[i, wr, wc][None].to(self.device) for c in self.conditions]
                outs = denoise_gradients(net, grads, self.channels_last, self.autocast_dtype, conditions=conds)
                dst = (i, slice(wr.start + keep[0].start, wr.start + keep[0].stop),
                       slice(wc.start + keep[1].start, wc.start + keep[1].stop))
                for z, o in zip(zs, outs):
                    z[dst] = o[(0,) + keep].to(x.device)
                del outs
        return zs
