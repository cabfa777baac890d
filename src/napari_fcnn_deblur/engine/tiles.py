"""Deblurring planes and volumes of any size with bounded memory: the networks run in overlapping tiles.

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

Volumes
-------
A volume ``(Z, Y, X)`` runs the same way (:mod:`.volume`): the deconvolutions on the whole padded
volume, the networks in z-whole X/Y tiles with the same halo — the lateral network on slabs of the
tile's XY planes (x and y gradients), the axial network on the YZ slices of the tile's core columns
(z gradients, the whole z extent) — at most :attr:`TiledNetworks.call_pixels` pixels per network
call and direction.  Every volumetric run goes this way, also when one tile covers the
volume: the whole-grid application (:func:`~napari_fcnn_deblur.core.denoiser.denoise_gradients`)
would hold the three gradient volumes, their network inputs (gradient and noise-map channels) and
plane-batch copies at once, ~22 volume-sized arrays, where the tiles hold one slab's.  Peak memory
is then ≈ :data:`VOLUME_BYTES_PER_VOXEL` × padded volume + one network call's work.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..core.denoiser import RECEPTIVE_RADIUS, denoise_gradients, tile_windows
from ..core.spectral import padding_geometry, zero_outside

#: Assumed memory of fp32 network inference per padded tile pixel (bytes).
BYTES_PER_PIXEL = 1200
#: Memory of the global FFT part of the tiled path per padded plane pixel (bytes, peak, float32).
PLANE_BYTES_PER_PIXEL = 24
#: Memory of a volumetric run per padded voxel (bytes, peak, float32, networks apart): the kernel's
#: spectra, ``conj(K)·Y``, the padded noise map, the latent volume, the three denoised gradients and
#: eq. 6's work arrays (48 B measured at 64 × 1024 × 1024, ``docs/engine.md`` Volumes; rounded up).
VOLUME_BYTES_PER_VOXEL = 64
#: Overlap (pixels) of the network tiles on every side: the FCNN's receptive-field radius.
TILE_MARGIN = RECEPTIVE_RADIUS
#: Extra pixels around a :attr:`TiledNetworks.region` the networks run on: the receptive radius plus the
#: one pixel a backward difference reaches, so that every kept output sees only true gradients.
REGION_HALO = RECEPTIVE_RADIUS + 1
#: Smallest and largest automatic tile sides (pixels), per device type.
MIN_TILE_SIZE = 128
MAX_TILE_SIZE = {"cpu": 1024, "mps": 2048, "cuda": 4096}
#: Fraction of the free memory the automatic tile size may plan to use.
MEMORY_FRACTION = 0.5
#: Fewest pixels of planes or slices per network call in a volume's tiles (at most one plane when
#: planes are larger): smaller calls are bound by per-call overhead, not by memory (~80 MB here).
MIN_CALL_PIXELS = 256 * 256
#: Most pixels of small planes or slices per network call and direction on the CPU.  Planes larger
#: than a cache tile run tile by tile inside the call anyway (:func:`~napari_fcnn_deblur.core.denoiser.apply_network`);
#: a batch of small ones holds 64 feature maps of every pixel: 0.26 M pixels ≈ 0.13 GiB per map.
#: Measured on the 2-core EPYC: 0.46 M-pixel calls within ~3 % of 1.8 M-pixel ones.
CPU_CALL_PIXELS = 512 * 512


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


def auto_tile_size(device: "torch.device | str", plane_pixels: int = 0,
                   bytes_per_pixel: int = PLANE_BYTES_PER_PIXEL) -> int:
    """Tile side (pixels, multiple of 16) that fits the free memory of ``device``.

    Plans :data:`MEMORY_FRACTION` of the free memory, less the global FFT
    arrays of a grid of ``plane_pixels`` padded pixels (a plane; or a volume's voxels with
    ``bytes_per_pixel`` = :data:`VOLUME_BYTES_PER_VOXEL`), at
    :data:`BYTES_PER_PIXEL` per tile pixel; clipped to
    [:data:`MIN_TILE_SIZE`, :data:`MAX_TILE_SIZE`] (larger tiles are not
    faster on a CPU).
    """
    dev = torch.device(device)
    budget = MEMORY_FRACTION * available_memory(dev) - bytes_per_pixel * plane_pixels
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
    """Whether the global FFT arrays of a plane (or a volume: 3D shapes) and one tile fit the free
    memory of ``device``."""
    grid = padding_geometry(tuple(plane_shape), tuple(kernel_shape)).shape
    per = PLANE_BYTES_PER_PIXEL if len(grid) == 2 else VOLUME_BYTES_PER_VOXEL
    need = per * math.prod(grid) + BYTES_PER_PIXEL * tile_size * tile_size
    return need < 0.9 * available_memory(device)


def fft_device(plane_shape, kernel_shape, device: torch.device, tile_size: int) -> torch.device:
    """Where the global FFT part of a tiled plane (or volume) runs: ``device`` when it fits there next
    to a tile, else the CPU."""
    if device.type != "cpu" and not plane_fits(plane_shape, kernel_shape, device, tile_size):
        return torch.device("cpu")
    return device


@dataclass(frozen=True)
class TiledNetworks:
    """Apply a stage's network to the gradients of padded planes or volumes tile by tile (a ``denoise`` of
    :meth:`~napari_fcnn_deblur.core.cascade.Cascade.run`).

    Planes ``(N, Hp, Wp)`` and volumes ``(N, Zp, Yp, Xp)`` alike (a plane is a volume of one z plane
    without a z gradient).  The grid's Y/X extent is cut into
    :func:`~napari_fcnn_deblur.core.denoiser.tile_windows` of at most ``tile_size`` pixels with a
    :data:`TILE_MARGIN` halo, z whole.  In each window:

    - the x and y gradients of slabs of XY planes (circular backward differences taking the row /
      column before the window, wrapping at the frame) go through the lateral network;
    - for volumes, the z gradients of the window's core columns (YZ slices: the window's rows, the
      whole z extent, circular along z) go through the axial network;

    each network call on at most :attr:`call_pixels` pixels of planes or slices per direction (one
    plane or slice when they are larger).

    Only each window's core is kept, so the result is the whole-grid application's
    (:func:`~napari_fcnn_deblur.core.denoiser.denoise_gradients`) up to float round-off.  No
    grid-sized gradient or network-input array is ever made: memory is the outputs (where the
    latent image lives) and one slab's work on ``device``.

    ``conditions``: per-pixel input channels of conditioned networks on the padded grid, shaped like
    ``x`` (e.g. the noise-map cascade's padded noise map), cut into the same pieces;
    ``condition_map``: applied to each piece before the network sees it (e.g.
    :func:`~napari_fcnn_deblur.core.conditioned.network_condition`, so that no scaled grid-sized
    copy is made).

    ``region``: the slices of the grid (one per spatial axis) where the outputs are used (a cascade's
    :meth:`~napari_fcnn_deblur.core.cascade.Cascade.prior_region`); the networks then run only on it
    plus the :data:`REGION_HALO` their receptive field and the differences need — along the axes a
    network convolves, none along the others (the lateral network's z, the axial network's x) — and the
    outputs are zero outside it, as the stage loop's masking makes them.  None: the whole grid.
    """

    tile_size: int
    device: torch.device
    channels_last: bool = True
    autocast_dtype: torch.dtype | None = None
    conditions: tuple[torch.Tensor, ...] = ()
    condition_map: Callable[[torch.Tensor], torch.Tensor] | None = None
    region: tuple[slice, ...] | None = None

    def __call__(self, net: torch.nn.Module, x: torch.Tensor, ndim: int) -> list[torch.Tensor]:
        if ndim not in (2, 3):
            raise ValueError(f"tiled networks run on planes or volumes, got a {ndim}D grid")
        vol = x[:, None] if ndim == 2 else x  # (N, Zp, Yp, Xp)
        conds = [c[:, None] if ndim == 2 else c for c in self.conditions]
        n = vol.shape[0]
        region = None
        if self.region is not None:
            if len(self.region) != ndim:
                raise ValueError(f"a region needs one slice per grid axis ({ndim}), got {len(self.region)}")
            region = tuple(self.region) if ndim == 3 else (slice(0, 1),) + tuple(self.region)
        lat_box, ax_box = self._boxes(tuple(vol.shape[1:]), region)
        core = max(self.tile_size - 2 * TILE_MARGIN, 16)
        zs = [(torch.empty_like if region is None else torch.zeros_like)(vol) for _ in range(ndim)]
        for i in range(n):
            v, ci = vol[i][lat_box], [c[i][lat_box] for c in conds]
            for (wr, wc), keep in tile_windows(tuple(v.shape[1:]), core, TILE_MARGIN):
                self._lateral(net, v, ci, wr, wc, keep, [z[i][lat_box] for z in zs[:2]])
            if ndim == 3:
                v, ci = vol[i][ax_box], [c[i][ax_box] for c in conds]
                for (wr, wc), keep in tile_windows(tuple(v.shape[1:]), core, TILE_MARGIN):
                    self._axial(net, v, ci, wr, wc, keep, zs[2][i][ax_box])
        if region is not None:  # the halos hold the sub-grid's circular-difference junk
            zs = [zero_outside(z, region) for z in zs]
        return zs if ndim == 3 else [z[:, 0] for z in zs]

    @staticmethod
    def _boxes(grid: tuple[int, int, int], region) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """The sub-grids (z, y, x) the lateral and the axial network run on for ``region`` (None: all).

        An axis a network convolves along gets the region ± :data:`REGION_HALO`, or the whole axis when
        that reaches the frame (then its circular differences wrap exactly as on the whole grid)."""
        full = tuple(slice(0, s) for s in grid)
        if region is None:
            return full, full

        def widen(r: slice, size: int) -> slice:
            a, b = r.start - REGION_HALO, r.stop + REGION_HALO
            return slice(0, size) if a <= 0 or b >= size else slice(a, b)

        (rz, ry, rx), (gz, gy, gx) = region, grid
        return (rz, widen(ry, gy), widen(rx, gx)), (widen(rz, gz), widen(ry, gy), rx)

    @property
    def call_pixels(self) -> int:
        """Most pixels of planes or slices per network call and direction: ``tile_size``² (on the CPU
        at most :data:`CPU_CALL_PIXELS`), at least :data:`MIN_CALL_PIXELS`."""
        n = self.tile_size * self.tile_size
        if torch.device(self.device).type == "cpu":
            n = min(n, CPU_CALL_PIXELS)
        return max(n, MIN_CALL_PIXELS)

    def _pieces(self, conds: list[torch.Tensor], index: tuple) -> list[torch.Tensor]:
        out = [c[index].to(self.device) for c in conds]
        return out if self.condition_map is None else [self.condition_map(c) for c in out]

    def _lateral(self, net, v: torch.Tensor, conds, wr: slice, wc: slice, keep, dst: list[torch.Tensor]) -> None:
        """x and y gradients of window (wr, wc) of the XY planes of one volume ``v`` (Zp, Yp, Xp), slab by slab."""
        zp, hp, wp = v.shape
        rows = torch.arange(wr.start - 1, wr.stop, device=v.device) % hp
        cols = torch.arange(wc.start - 1, wc.stop, device=v.device) % wp
        per = max(1, self.call_pixels // ((wr.stop - wr.start) * (wc.stop - wc.start)))
        out = (slice(wr.start + keep[0].start, wr.start + keep[0].stop),
               slice(wc.start + keep[1].start, wc.start + keep[1].stop))
        for z0 in range(0, zp, per):
            zsl = slice(z0, min(z0 + per, zp))
            xw = v[zsl].index_select(1, rows).index_select(2, cols).to(self.device)
            grads = [xw[:, 1:, 1:] - xw[:, 1:, :-1], xw[:, 1:, 1:] - xw[:, :-1, 1:]]
            del xw
            outs = denoise_gradients(net, grads, self.channels_last, self.autocast_dtype,
                                     conditions=self._pieces(conds, (zsl, wr, wc)))
            del grads
            for z, o in zip(dst, outs):
                z[(zsl,) + out] = o[(slice(None),) + keep].to(z.device)
            del outs

    def _axial(self, net, v: torch.Tensor, conds, wr: slice, wc: slice, keep, dst: torch.Tensor) -> None:
        """z gradients of the core columns of window (wr, wc) of one volume ``v``: YZ slices, z whole."""
        zp = v.shape[0]
        h = wr.stop - wr.start
        per = max(1, self.call_pixels // (h * zp))
        rows_out = slice(wr.start + keep[0].start, wr.start + keep[0].stop)
        for c0 in range(wc.start + keep[1].start, wc.start + keep[1].stop, per):
            csl = slice(c0, min(c0 + per, wc.start + keep[1].stop))
            xw = v[:, wr, csl].to(self.device)
            grads = [(xw - torch.roll(xw, shifts=1, dims=0))[None]]
            del xw
            (o,) = denoise_gradients(net, grads, self.channels_last, self.autocast_dtype,
                                     conditions=[c[None] for c in self._pieces(conds, (slice(None), wr, csl))],
                                     directions=(2,))
            del grads
            dst[:, rows_out, csl] = o[0][:, keep[0], :].to(dst.device)
            del o
