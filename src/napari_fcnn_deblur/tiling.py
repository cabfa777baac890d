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
differ from the untiled result by 1.7·10⁻³ with a 128 px margin for an 11 px
line kernel, by 1.9·10⁻³ with 64 px for a 19 px Levin kernel and still by
1.4·10⁻³ with 384 px for the 27 px one; through the cascade, networks that
pass gradients on (like the soft-threshold test cascade) carry these errors
to the result.  Tiles would need several hundred pixels of overlap (and 3–8×
the work) to agree to 10⁻³.

The tiled path therefore computes, per plane (:func:`deblur_plane_tiled`):

1. the padded, edge-tapered plane and ``conj(K)·Y`` on the whole padded FFT
   grid, exactly as :func:`~.fft_deconv.prepare_problem` but with real FFTs
   and analytic gradient OTFs (~20 bytes per padded pixel instead of ~60);
2. every deconvolution on the whole grid (eq. 6, same ε);
3. the gradients and the FCNN of every stage tile by tile: each tile is
   extended by :data:`~.gradient_denoiser.RECEPTIVE_RADIUS` pixels (clipped at
   the grid's frame, where the network's zero padding is then the same as
   untiled) and only its core is kept, so the tiled networks reproduce the
   untiled ones exactly.

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
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .fft_deconv import EPSILON, padding_geometry
from .gradient_denoiser import RECEPTIVE_RADIUS, apply_network

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
    if tile_size is None:
        return None
    if isinstance(tile_size, bool) or not isinstance(tile_size, (int, np.integer)):
        raise ValueError(f"tile_size must be an integer number of pixels or None (automatic), got {tile_size!r}")
    if tile_size < 2 * TILE_MARGIN + 16:
        raise ValueError(f"tile_size must be at least {2 * TILE_MARGIN + 16} pixels, got {tile_size}")
    return int(tile_size)


def needs_tiling(plane_shape: tuple[int, int], kernel_shape: tuple[int, int], tile_size: int) -> bool:
    """True if the padded plane has more pixels than one ``tile_size`` × ``tile_size`` tile."""
    hp, wp = padding_geometry(tuple(plane_shape), tuple(kernel_shape)).shape
    return hp * wp > tile_size * tile_size


# ----------------------------------------------------------------------------- global FFT part


def _axis_taper(projection: torch.Tensor, n: int) -> torch.Tensor:
    """1D edge-taper weight along one axis (as ``fft_deconv._taper_weights``)."""
    spec = torch.fft.rfft(projection, n=n - 1)
    z = torch.fft.irfft(spec.abs() ** 2, n=n - 1)
    z = torch.cat([z, z[:1]])
    return 1.0 - z / z.max()


class _PlaneSolver:
    """Eq. 6 on one plane's whole padded grid, with half (real) spectra.

    Same arithmetic as :func:`~.fft_deconv.prepare_problem` /
    :func:`~.fft_deconv.deconvolve` (replicate padding by the kernel size,
    edge taper, ε = :data:`~.fft_deconv.EPSILON`).
    """

    def __init__(self, plane: torch.Tensor, kernel: torch.Tensor):
        h, w = plane.shape
        kh, kw = kernel.shape
        self.geometry = g = padding_geometry((h, w), (kh, kw))
        hp, wp = g.shape
        kpad = F.pad(kernel, (0, wp - kw, 0, hp - kh))
        kpad = torch.roll(kpad, shifts=(-(kh // 2), -(kw // 2)), dims=(0, 1))
        otf = torch.fft.rfft2(kpad)  # (hp, wp // 2 + 1)
        del kpad
        y = F.pad(plane[None, None], (g.left, g.right, g.top, g.bottom), mode="replicate")[0, 0]
        spec = torch.fft.rfft2(y)
        blurred = torch.fft.irfft2(spec.mul_(otf), s=(hp, wp))
        del spec
        ay = _axis_taper(kernel.sum(dim=1), hp)
        ax = _axis_taper(kernel.sum(dim=0), wp)
        # edge taper: alpha * y + (1 - alpha) * blurred, alpha = ay ⊗ ax
        y.sub_(blurred).mul_(ay[:, None]).mul_(ax[None, :]).add_(blurred)
        del blurred
        self.data = torch.fft.rfft2(y).mul_(otf.conj())  # conj(K) Y
        del y
        self.kernel_power = otf.real.square() + otf.imag.square()  # |K|²
        del otf
        u = torch.arange(hp, dtype=torch.float64, device=plane.device)
        v = torch.arange(wp // 2 + 1, dtype=torch.float64, device=plane.device)
        # backward differences: P_h = 1 - exp(-2πi v / wp), P_v = 1 - exp(-2πi u / hp)
        self.grad_h = (1 - torch.exp(-2j * math.pi * v / wp)).to(torch.complex64)  # (wp//2+1,)
        self.grad_v = (1 - torch.exp(-2j * math.pi * u / hp)).to(torch.complex64)[:, None]  # (hp, 1)
        self.grad_power_h = (2 - 2 * torch.cos(2 * math.pi * v / wp)).float()
        self.grad_power_v = (2 - 2 * torch.cos(2 * math.pi * u / hp)).float()[:, None]

    def numerator(self, gamma: float) -> torch.Tensor:
        """γ conj(K) Y: the numerator of eq. 6 before the gradient terms (a new array)."""
        return self.data * gamma

    def add_gradient(self, num: torch.Tensor, z: torch.Tensor, axis: str) -> None:
        """Add conj(P) Z of one denoised gradient (``axis`` "h" or "v") to ``num`` in place."""
        t = torch.fft.rfft2(z)
        t.mul_((self.grad_h if axis == "h" else self.grad_v).conj())
        num.add_(t)

    def solve(self, num: torch.Tensor, gamma: float) -> torch.Tensor:
        """Latent image on the padded grid: F⁻¹[num / (γ|K|² + |P_h|² + |P_v|² + ε)]; ``num`` is consumed."""
        den = self.kernel_power * gamma
        den.add_(self.grad_power_h).add_(self.grad_power_v).add_(EPSILON)
        num.div_(den)
        del den
        return torch.fft.irfft2(num, s=self.geometry.shape)

    def deconvolve(
        self, gamma: float, z_h: torch.Tensor | None = None, z_v: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Eq. 6 in one call (as :func:`~.fft_deconv.deconvolve`), on the padded grid."""
        num = self.numerator(gamma)
        if z_h is not None:
            self.add_gradient(num, z_h, "h")
            self.add_gradient(num, z_v, "v")
        return self.solve(num, gamma)


# ----------------------------------------------------------------------------- tiled networks


def _tile_starts(n: int, core: int) -> list[tuple[int, int]]:
    return [(a, min(a + core, n)) for a in range(0, n, core)]


def _apply_net(net: torch.nn.Module, g: torch.Tensor, channels_last: bool, autocast_dtype) -> torch.Tensor:
    return apply_network(net, g[None, None], channels_last, autocast_dtype)[0, 0]


def denoise_gradients_tiled(
    x: torch.Tensor,
    net: torch.nn.Module,
    tile_size: int,
    device: torch.device,
    channels_last: bool = True,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Denoised gradients of the padded latent image ``x`` (Hp, Wp), network run tile by tile.

    Same result as :func:`~.gradient_denoiser.denoise_gradients` on
    :func:`~.fft_deconv.image_gradients` of the whole grid: each tile
    (at most ``tile_size`` wide, on ``device``) is the core plus
    :data:`TILE_MARGIN` pixels clipped to the grid; the circular backward
    differences take the row/column before the tile (wrapping at the frame).
    The outputs live where ``x`` lives.
    """
    hp, wp = x.shape
    r = TILE_MARGIN
    core = max(tile_size - 2 * r, 16)
    zx = torch.empty_like(x)
    zy = torch.empty_like(x)
    for a, b in _tile_starts(hp, core):
        ta, tb = max(a - r, 0), min(b + r, hp)
        rows = torch.arange(ta - 1, tb, device=x.device) % hp
        for c, d in _tile_starts(wp, core):
            tc, td = max(c - r, 0), min(d + r, wp)
            cols = torch.arange(tc - 1, td, device=x.device) % wp
            xw = x.index_select(0, rows).index_select(1, cols).to(device)
            gx = xw[1:, 1:] - xw[1:, :-1]
            gy = xw[1:, 1:] - xw[:-1, 1:]
            del xw
            out_x = _apply_net(net, gx, channels_last, autocast_dtype)
            del gx
            out_y = _apply_net(net, gy.t(), channels_last, autocast_dtype).t()
            del gy
            zx[a:b, c:d] = out_x[a - ta : b - ta, c - tc : d - tc].to(x.device)
            zy[a:b, c:d] = out_y[a - ta : b - ta, c - tc : d - tc].to(x.device)
            del out_x, out_y
    return zx, zy


def plane_fits(plane_shape, kernel_shape, device: torch.device, tile_size: int) -> bool:
    """Whether the global FFT arrays of a plane and one tile fit the free memory of ``device``."""
    hp, wp = padding_geometry(tuple(plane_shape), tuple(kernel_shape)).shape
    need = PLANE_BYTES_PER_PIXEL * hp * wp + BYTES_PER_PIXEL * tile_size * tile_size
    return need < 0.9 * available_memory(device)


def deblur_plane_tiled(
    plane: np.ndarray,
    kernel: np.ndarray,
    cascade,
    iterations: int,
    device: torch.device,
    tile_size: int,
    channels_last: bool = True,
    autocast_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Final result of the cascade for one plane (Y, X) on [0, 1], networks tiled.

    Equals :func:`~.api.run_planes` on that plane up to float32 round-off.  The
    global FFT part runs on ``device`` when it fits there next to a tile,
    otherwise on the CPU (the tiles still run on ``device``).
    """
    fft_device = device
    if device.type != "cpu" and not plane_fits(plane.shape, kernel.shape, device, tile_size):
        fft_device = torch.device("cpu")
    with torch.inference_mode():
        kt = torch.from_numpy(np.ascontiguousarray(kernel, dtype=np.float32)).to(fft_device)
        y = torch.from_numpy(np.ascontiguousarray(plane, dtype=np.float32)).to(fft_device)
        solver = _PlaneSolver(y, kt)
        del y
        gammas = [float(g) for g in cascade.gammas.detach().cpu()]
        x = solver.deconvolve(gammas[0])
        for s in range(iterations):
            zx, zy = denoise_gradients_tiled(x, cascade.denoisers[s], tile_size, device, channels_last, autocast_dtype)
            del x
            num = solver.numerator(gammas[s + 1])
            solver.add_gradient(num, zx, "h")
            del zx  # each plane-sized array is freed as soon as it has been used
            solver.add_gradient(num, zy, "v")
            del zy
            x = solver.solve(num, gammas[s + 1])
            del num
        out = solver.geometry.crop(x).float().cpu().numpy().copy()
    return out


def run_planes_tiled(
    planes: np.ndarray,
    kernel: np.ndarray,
    cascade,
    iterations: int,
    device: torch.device,
    tile_size: int,
    progress: Callable[[int], None] | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """:func:`deblur_plane_tiled` on every plane of ``(N, Y, X)``; ``progress(1)`` after each plane."""
    out = np.empty(planes.shape, np.float32)
    for i in range(len(planes)):
        out[i] = deblur_plane_tiled(planes[i], kernel, cascade, iterations, device, tile_size,
                                    autocast_dtype=autocast_dtype)
        if progress is not None:
            progress(1)
    return out
