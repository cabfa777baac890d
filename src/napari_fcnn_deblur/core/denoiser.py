"""The gradient-denoising FCNN of one cascade stage (Zhang et al., CVPR 2017, Table 1), and how it is applied.

Six convolutions, ReLU between: 5×5 (1→64), four 3×3 (64→64), 3×3 (64→1),
zero padding so the output has the input's size.  The same weights denoise
every gradient direction: the vertical gradient of a plane is transposed so
that the network only ever sees horizontal-gradient statistics.

Networks are applied by :func:`apply_network` (memory format, precision,
and on the CPU cache-sized tiles with a halo of the receptive field) and
:func:`denoise_gradients` (every gradient direction of a batch).  Halo tiling
exists once, :func:`tile_windows`; the memory-bounded tiles of the engine use
it too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import product

import torch
from torch import nn

#: Table 1 of the paper: (kernel size, output channels) per layer.
ARCHITECTURE: tuple[tuple[int, int], ...] = ((5, 64), (3, 64), (3, 64), (3, 64), (3, 64), (3, 1))

#: Receptive-field radius of the network in pixels (2 + 5 × 1).
RECEPTIVE_RADIUS: int = sum(k // 2 for k, _ in ARCHITECTURE)

#: Core side (pixels) of the cache-sized tiles the network runs in on the CPU.  Measured on the
#: project's 2-core Xeon, one network on a 1078×854 gradient image: whole image 154–160 GFLOP/s fp32
#: and 211–233 bf16; 192-px cores 187–233 fp32 and 532–546 bf16 (64 channels × 206² px fit the
#: caches).  Tiles are exact: each carries a halo of the receptive-field radius.
CPU_TILE_CORE: int = 192


def cpu_tile_core(width: int = 64) -> int:
    """Core side of the CPU cache tiles for a network of ``width`` hidden channels: :data:`CPU_TILE_CORE` at
    64 channels and wider, scaled by sqrt(64 / width) below, so that a tile's activations take the same bytes.
    Measured on a 2-core EPYC, volume cascade on 64 × 256 × 256, one thread: width 8 16.9 → 14.5 s and
    width 16 28.1 → 25.6 s with 400-px instead of 192-px cores (fewer, larger calls; 1024 px gained nothing more)."""
    return max(CPU_TILE_CORE, round(CPU_TILE_CORE * (64 / max(int(width), 1)) ** 0.5))

#: On the CPU outside autograd, a batch of small planes runs in chunks of at most this many pixels
#: per network call (64 hidden channels of fp32: 1 GiB per activation).  The engine's plane batches
#: stay below it; volumes seen as plane batches (hundreds of slices) are what it bounds.
CPU_BATCH_PIXELS: int = 4 * 1024 * 1024


class GradientDenoiser(nn.Module):
    """Fully convolutional gradient denoiser of Table 1.

    Parameters
    ----------
    width : int
        Channels of the hidden layers (64 in the paper; narrow networks make fast tests).
    in_channels : int
        Input channels: 1 (the gradient) for the paper's network; more for a network conditioned on
        per-pixel maps stacked after the gradient (:func:`network_input`).

    ``forward`` takes ``(N, in_channels, H, W)`` and returns denoised gradients ``(N, 1, H, W)``.
    """

    def __init__(self, width: int = 64, in_channels: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i, (k, _) in enumerate(ARCHITECTURE):
            cout = 1 if i == len(ARCHITECTURE) - 1 else width
            layers.append(nn.Conv2d(cin, cout, k, padding=k // 2, bias=True))
            if i < len(ARCHITECTURE) - 1:
                layers.append(nn.ReLU(inplace=True))
            cin = cout
        self.net = nn.Sequential(*layers)

    @property
    def width(self) -> int:
        return self.convs[0].out_channels

    @property
    def in_channels(self) -> int:
        return self.convs[0].in_channels

    @property
    def macs_per_pixel(self) -> int:
        """Multiply-adds of one forward pass per output pixel (149,632 for Table 1's width 64, one input)."""
        return sum(c.kernel_size[0] * c.kernel_size[1] * c.in_channels * c.out_channels for c in self.convs)

    @classmethod
    def from_plain(cls, plain: "GradientDenoiser", in_channels: int = 2) -> "GradientDenoiser":
        """A copy of ``plain`` taking ``in_channels`` inputs; the added channels' first-layer weights are zero.

        The result computes exactly what ``plain`` computes from the gradient, whatever the other
        channels hold (training then teaches it to use them).
        """
        first = plain.convs[0]
        out = cls(plain.width, in_channels).to(device=first.weight.device, dtype=first.weight.dtype)
        with torch.no_grad():
            for i, (dst, src) in enumerate(zip(out.convs, plain.convs)):
                if i == 0:
                    dst.weight.zero_()
                    dst.weight[:, : src.in_channels] = src.weight
                else:
                    dst.weight.copy_(src.weight)
                dst.bias.copy_(src.bias)
        return out

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return self.net(g)

    @property
    def convs(self) -> list[nn.Conv2d]:
        return [m for m in self.net if isinstance(m, nn.Conv2d)]


def match_memory_format(net: nn.Module, fmt: torch.memory_format) -> None:
    """Store the 4D weights of ``net`` in memory format ``fmt`` (no-op when they already are)."""
    for p in net.parameters():
        if p.dim() == 4 and not p.is_contiguous(memory_format=fmt):
            net.to(memory_format=fmt)
            return


def tile_windows(shape: Sequence[int], core: int, halo: int) -> Iterator[tuple[tuple[slice, ...], tuple[slice, ...]]]:
    """Overlapping tiles of a grid: ``(window, keep)`` slice tuples for every tile.

    The grid ``shape`` is cut into cores of equal size (at most ``core``
    along each axis, rather than a thin last row of tiles); each window is its
    core extended by ``halo`` pixels, clipped at the grid's frame.  ``keep``
    indexes the core inside the window's output.  A network whose receptive
    radius is at most ``halo`` gives, on the cores, exactly its output on the
    whole grid (at the frame the window keeps the grid's own zero padding).
    """
    per_axis = []
    for n in shape:
        c = -(-n // -(-n // core))
        spans = []
        for a in range(0, n, c):
            b, ta, tb = min(a + c, n), max(a - halo, 0), min(a + c + halo, n)
            spans.append((slice(ta, tb), slice(a - ta, b - ta)))
        per_axis.append(spans)
    for combo in product(*per_axis):
        yield tuple(w for w, _ in combo), tuple(k for _, k in combo)


def _run_net(net: nn.Module, t: torch.Tensor, fmt, autocast_dtype) -> torch.Tensor:
    t = t.contiguous(memory_format=fmt)
    if autocast_dtype is None:
        return net(t)
    with torch.autocast(device_type=t.device.type, dtype=autocast_dtype):
        return net(t).float()


def apply_network(net: nn.Module, t: torch.Tensor, channels_last: bool = True,
                  autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Run ``net`` on ``(N, C, H, W)`` in the requested memory format and precision; fp32 out.

    The network's weights are put in the same memory format as the input (in place, values
    unchanged): oneDNN/cuDNN run a channels_last input with contiguous weights (or the reverse)
    about 2× slower than with matching formats.  On the CPU, outside autograd, large inputs run
    plane by plane in :func:`tile_windows` of :func:`cpu_tile_core` pixels plus a
    :data:`RECEPTIVE_RADIUS` halo (the same result), and large batches of small planes in chunks of
    :data:`CPU_BATCH_PIXELS`.
    """
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    match_memory_format(net, fmt)
    n, _, h, w = t.shape
    core, r = cpu_tile_core(getattr(net, "width", 64)), RECEPTIVE_RADIUS
    if t.device.type != "cpu" or torch.is_grad_enabled():
        return _run_net(net, t, fmt, autocast_dtype)
    if h <= core + 2 * r and w <= core + 2 * r:
        per = max(1, CPU_BATCH_PIXELS // (h * w))
        if n <= per:
            return _run_net(net, t, fmt, autocast_dtype)
        return torch.cat([_run_net(net, t[i : i + per], fmt, autocast_dtype) for i in range(0, n, per)])
    out = None
    for i in range(n):
        for window, keep in tile_windows((h, w), core, r):
            o = _run_net(net, t[(slice(i, i + 1), slice(None)) + window], fmt, autocast_dtype)
            if out is None:
                out = torch.empty((n, o.shape[1], h, w), dtype=torch.float32, device=t.device)
            dst = tuple(slice(wi.start + ki.start, wi.start + ki.stop) for wi, ki in zip(window, keep))
            out[(slice(i, i + 1), slice(None)) + dst] = o[(slice(None), slice(None)) + keep]
    return out


def direction_view(t: torch.Tensor, direction: int) -> torch.Tensor:
    """``t`` as the network of gradient ``direction`` (0 = x, 1 = y, 2 = z) sees it: that axis last
    (its own inverse)."""
    return t if direction == 0 else t.transpose(-1, -(direction + 1))


def plane_views(gradients: Sequence[torch.Tensor], directions: Sequence[int] | None = None) -> list[torch.Tensor]:
    """Each gradient as the network sees it: along the last axis (a vertical gradient transposed).

    ``directions``: the direction of each gradient (default ``0, 1, ...``: x, y[, z] in order).
    """
    dirs = range(len(gradients)) if directions is None else directions
    return [direction_view(g, d) for g, d in zip(gradients, dirs, strict=True)]


def network_input(gradient: torch.Tensor, conditions: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """The network's input ``(N, 1 + len(conditions), H, W)``: a gradient ``(N, H, W)``, then per-pixel maps."""
    if not conditions:
        return gradient[:, None]
    return torch.stack([gradient, *conditions], dim=1)


def network_inputs(gradients: Sequence[torch.Tensor], conditions: Sequence[torch.Tensor] = (),
                   directions: Sequence[int] | None = None) -> list[torch.Tensor]:
    """The network's input for each gradient: its :func:`plane_views` view, then the ``conditions``
    maps (on the gradients' grid) seen the same way (transposed with a vertical gradient).
    ``directions`` as for :func:`plane_views`."""
    views = plane_views(gradients, directions)
    maps = [plane_views([c] * len(views), directions) for c in conditions]
    return [network_input(v, [m[i] for m in maps]) for i, v in enumerate(views)]


class AxialPair(nn.Module):
    """The stage networks of a volume: ``lateral`` denoises the x and y gradients (on XY planes),
    ``axial`` the z gradient (on YZ slices, where it runs along the slice's last axis).

    Axial sampling (the z step) and the PSF's axial elongation make z-gradient statistics unlike
    lateral ones, hence a network of its own; both are :class:`GradientDenoiser` of one width and
    input channel count.
    """

    def __init__(self, width: int = 64, in_channels: int = 1) -> None:
        super().__init__()
        self.lateral = GradientDenoiser(width, in_channels)
        self.axial = GradientDenoiser(width, in_channels)

    @property
    def width(self) -> int:
        return self.lateral.width

    @property
    def in_channels(self) -> int:
        return self.lateral.in_channels

    @classmethod
    def from_planar(cls, planar: GradientDenoiser) -> "AxialPair":
        """Both networks copies of a plane network (a warm start for volume training)."""
        out = cls(planar.width, planar.in_channels).to(device=planar.convs[0].weight.device)
        out.lateral.load_state_dict(planar.state_dict())
        out.axial.load_state_dict(planar.state_dict())
        return out


def direction_network(net: nn.Module, direction: int) -> nn.Module:
    """The network of gradient ``direction`` (0 = x, 1 = y, 2 = z): an :class:`AxialPair` gives its
    lateral network for x and y and its axial one for z; any other network serves every direction."""
    if isinstance(net, AxialPair):
        return net.lateral if direction < 2 else net.axial
    return net


def direction_networks(net: nn.Module, n: int) -> list[nn.Module]:
    """The network for each of ``n`` gradient directions (x, y[, z]), :func:`direction_network` of each."""
    return [direction_network(net, i) for i in range(n)]


def as_plane_batch(t: torch.Tensor) -> torch.Tensor:
    """``(N, C, *lead, H, W)`` → ``(N · prod(lead), C, H, W)``: the planes of volumes as a batch (a view
    for planes, ``(N, C, H, W)`` as it is)."""
    if t.ndim == 4:
        return t
    n, c = t.shape[:2]
    return t.movedim(1, -3).reshape(-1, c, *t.shape[-2:])


def from_plane_batch(t: torch.Tensor, like_shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`as_plane_batch` for one-channel outputs: ``(M, H, W)`` → ``like_shape`` (N, *lead, H, W)."""
    return t.reshape(tuple(like_shape))


def denoise_gradients(net: nn.Module, gradients: Sequence[torch.Tensor], channels_last: bool = True,
                      autocast_dtype: torch.dtype | None = None,
                      conditions: Sequence[torch.Tensor] = (),
                      directions: Sequence[int] | None = None) -> list[torch.Tensor]:
    """Denoise the gradients ``[g_x, g_y(, g_z)]`` of a batch of planes ``(N, H, W)`` or volumes
    ``(N, D, H, W)``.

    Every gradient is seen along its last axis (:func:`plane_views`: the vertical gradient
    transposed, for volumes the z gradient on YZ slices) and run through the 2D network of its
    direction (:func:`direction_network`) as a batch of planes.  Directions with the same network
    and plane shape run in one batch.  ``conditions``: per-pixel maps on the gradients' grid (e.g. a
    noise map) given to a conditioned network as extra input channels, each seen as the gradient is.
    ``directions``: the direction of each gradient when they are not ``x, y[, z]`` in order (e.g.
    ``(2,)`` for the z gradients of a block of a volume alone).
    """
    dirs = list(range(len(gradients))) if directions is None else list(directions)
    inputs = network_inputs(gradients, conditions, dirs)
    nets = [direction_network(net, d) for d in dirs]
    shapes = [(t.shape[0],) + tuple(t.shape[2:]) for t in inputs]
    planes = [as_plane_batch(t) for t in inputs]

    def run(m: nn.Module, t: torch.Tensor) -> torch.Tensor:
        return apply_network(m, t, channels_last, autocast_dtype)[:, 0].contiguous()

    outs: list[torch.Tensor | None] = [None] * len(planes)
    done: set[int] = set()
    for i in range(len(planes)):
        if i in done:
            continue
        group = [j for j in range(i, len(planes))
                 if j not in done and nets[j] is nets[i] and planes[j].shape == planes[i].shape]
        done.update(group)
        if len(group) == 1:
            outs[i] = run(nets[i], planes[i])
        else:
            both = run(nets[i], torch.cat([planes[j] for j in group], dim=0))
            for j, o in zip(group, both.split(planes[i].shape[0], dim=0)):
                outs[j] = o
    return plane_views([from_plane_batch(o, sh) for o, sh in zip(outs, shapes)], dirs)
