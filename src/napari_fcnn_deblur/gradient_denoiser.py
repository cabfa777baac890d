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


def apply_network(net: nn.Module, t: torch.Tensor, channels_last: bool = True,
                  autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Run ``net`` on ``(N, 1, H, W)`` in the requested memory format and precision; fp32 out."""
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    if autocast_dtype is None:
        return net(t)
    with torch.autocast(device_type=t.device.type, dtype=autocast_dtype):
        return net(t).float()


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
