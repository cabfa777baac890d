"""The gradient-denoising FCNN of one cascade stage (Zhang et al., CVPR 2017, Table 1).

Six convolutions, ReLU between: 5×5 (1→64), four 3×3 (64→64), 3×3 (64→1),
zero padding so the output has the input's size. The same weights denoise the
horizontal gradient and the transposed vertical gradient.
"""

from __future__ import annotations

import torch
from torch import nn

#: Table 1 of the paper: (kernel size, output channels) per layer.
ARCHITECTURE: tuple[tuple[int, int], ...] = ((5, 64), (3, 64), (3, 64), (3, 64), (3, 64), (3, 1))

#: Receptive-field radius of the network in pixels (2 + 5 × 1).
RECEPTIVE_RADIUS: int = sum(k // 2 for k, _ in ARCHITECTURE)


class GradientDenoiser(nn.Module):
    """Fully convolutional gradient denoiser of Table 1.

    ``forward`` takes gradients ``(N, 1, H, W)`` and returns denoised
    gradients of the same shape.
    """

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for i, (k, cout) in enumerate(ARCHITECTURE):
            cout = 1 if i == len(ARCHITECTURE) - 1 else width
            layers.append(nn.Conv2d(cin, cout, k, padding=k // 2, bias=True))
            if i < len(ARCHITECTURE) - 1:
                layers.append(nn.ReLU(inplace=True))
            cin = cout
        self.net = nn.Sequential(*layers)

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


#: Core side (pixels) of the cache-sized tiles the network runs in on the CPU.  Measured on the
#: project's 2-core Xeon, one network on a 1078×854 gradient image: whole image 154–160 GFLOP/s fp32
#: and 211–233 bf16; 192-px cores 187–233 fp32 and 532–546 bf16 (64 channels × 206² px fit the
#: caches).  Tiles are exact: each carries a halo of the receptive-field radius.
CPU_TILE_CORE: int = 192


def _run_net(net: nn.Module, t: torch.Tensor, fmt, autocast_dtype) -> torch.Tensor:
    t = t.contiguous(memory_format=fmt)
    if autocast_dtype is None:
        return net(t)
    with torch.autocast(device_type=t.device.type, dtype=autocast_dtype):
        return net(t).float()


def apply_network(net: nn.Module, t: torch.Tensor, channels_last: bool = True,
                  autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Run ``net`` on ``(N, 1, H, W)`` in the requested memory format and precision; fp32 out.

    The network's weights are put in the same memory format as the input (in place, values
    unchanged): oneDNN/cuDNN run a channels_last input with contiguous weights (or the reverse)
    about 2× slower than with matching formats.  On the CPU, outside autograd, large inputs run
    plane by plane in tiles of :data:`CPU_TILE_CORE` pixels plus a :data:`RECEPTIVE_RADIUS` halo
    (the same result: the halo holds every pixel the core's outputs depend on, and the frame's
    zero padding is kept at the frame's edges).
    """
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    match_memory_format(net, fmt)
    n, _, h, w = t.shape
    core, r = CPU_TILE_CORE, RECEPTIVE_RADIUS
    if t.device.type != "cpu" or torch.is_grad_enabled() or (h <= core + 2 * r and w <= core + 2 * r):
        return _run_net(net, t, fmt, autocast_dtype)
    out = torch.empty((n, 1, h, w), dtype=torch.float32, device=t.device)
    # equal cores (at most CPU_TILE_CORE) rather than a thin last row/column of tiles
    ch, cw = -(-h // -(-h // core)), -(-w // -(-w // core))
    for i in range(n):
        for a in range(0, h, ch):
            b, ta, tb = min(a + ch, h), max(a - r, 0), min(a + ch + r, h)
            for c in range(0, w, cw):
                d, tc, td = min(c + cw, w), max(c - r, 0), min(c + cw + r, w)
                o = _run_net(net, t[i : i + 1, :, ta:tb, tc:td], fmt, autocast_dtype)
                out[i, 0, a:b, c:d] = o[0, 0, a - ta : b - ta, c - tc : d - tc]
    return out


def denoise_gradients(
    net: nn.Module,
    grad_x: torch.Tensor,
    grad_y: torch.Tensor,
    channels_last: bool = True,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Denoise horizontal and vertical gradients ``(N, H, W)`` with one network.

    The vertical gradient is transposed before and after the network so the
    network only ever sees horizontal-gradient statistics (shared weights).
    Square images run both in one batch.
    """
    gy_t = grad_y.transpose(-1, -2)

    def run(t: torch.Tensor) -> torch.Tensor:
        return apply_network(net, t[:, None], channels_last, autocast_dtype)[:, 0].contiguous()

    if grad_x.shape == gy_t.shape:
        both = run(torch.cat([grad_x, gy_t], dim=0))
        zx, zy_t = both[: grad_x.shape[0]], both[grad_x.shape[0] :]
    else:
        zx, zy_t = run(grad_x), run(gy_t)
    return zx, zy_t.transpose(-1, -2)
