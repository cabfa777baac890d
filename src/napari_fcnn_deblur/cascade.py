"""The iterative cascade: initial deconvolution, then stages of (denoise gradients → deconvolve).

:class:`Cascade` holds one :class:`~.gradient_denoiser.GradientDenoiser` per
stage and the data weights γ of every deconvolution (initial one included).
:meth:`Cascade.run` is a generator over a batch of planes ``(N, H, W)`` on
the [0, 1] scale; it is pure torch and differentiable, so it serves inference,
training-data generation and end-to-end training of γ alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .fft_deconv import DeconvProblem, deconvolve, image_gradients, prepare_problem
from .gradient_denoiser import GradientDenoiser, denoise_gradients


@dataclass
class StageTensors:
    """Output of one step of the cascade on the padded FFT domain.

    ``stage`` 0 is the initial deconvolution (``z_x``/``z_y`` None); stage s ≥ 1
    used the denoised gradients ``z_x``/``z_y`` of stage s's FCNN.
    """

    stage: int
    x_padded: torch.Tensor
    z_x: torch.Tensor | None
    z_y: torch.Tensor | None
    problem: DeconvProblem

    @property
    def image(self) -> torch.Tensor:
        """Latent image cropped to the input's extent, (N, H, W)."""
        return self.problem.geometry.crop(self.x_padded)


class Cascade(nn.Module):
    """A trained cascade for one noise level.

    Parameters
    ----------
    n_stages : int
        Number of FCNN stages (the paper uses 3).
    gammas : sequence of float, length ``n_stages + 1``
        Data-term weight of the initial deconvolution and of each stage.
    noise_level : float or None
        Gaussian noise s.d. (on [0, 1]) the cascade was trained for.
    metadata : dict
        Free-form provenance (str → str), saved with the weights.
    """

    def __init__(
        self,
        n_stages: int = 3,
        gammas: list[float] | tuple[float, ...] | None = None,
        noise_level: float | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        if gammas is None:
            gammas = [100.0 * 0.1 ** (i / max(n_stages, 1)) for i in range(n_stages + 1)]
        if len(gammas) != n_stages + 1:
            raise ValueError(f"need {n_stages + 1} gammas for {n_stages} stages, got {len(gammas)}")
        self.denoisers = nn.ModuleList([GradientDenoiser() for _ in range(n_stages)])
        # log-parametrised so γ stays positive when trained
        self.log_gammas = nn.Parameter(torch.log(torch.tensor(list(gammas), dtype=torch.float32)))
        self.noise_level = noise_level
        self.metadata: dict[str, Any] = dict(metadata or {})

    @property
    def n_stages(self) -> int:
        return len(self.denoisers)

    @property
    def gammas(self) -> torch.Tensor:
        return self.log_gammas.exp()

    def run(
        self,
        y: torch.Tensor,
        kernel: torch.Tensor,
        iterations: int | None = None,
        channels_last: bool = True,
        autocast_dtype: torch.dtype | None = None,
        problem: DeconvProblem | None = None,
    ) -> Iterator[StageTensors]:
        """Yield the initial deconvolution, then the result of each stage.

        Parameters
        ----------
        y : (N, H, W) float32 tensor, blurry planes on a [0, 1] scale.
        kernel : (kh, kw) or (N, kh, kw) tensor, odd-sized, normalised.
        iterations : number of FCNN stages to run (default: all).
        problem : precomputed :func:`prepare_problem` (saves the FFTs).
        """
        n = self.n_stages if iterations is None else iterations
        if not 0 <= n <= self.n_stages:
            raise ValueError(f"iterations must be between 0 and {self.n_stages}, got {n}")
        if problem is None:
            problem = prepare_problem(y, kernel)
        gammas = self.gammas
        x = deconvolve(problem, gammas[0])
        yield StageTensors(0, x, None, None, problem)
        for s in range(n):
            gx, gy = image_gradients(x)
            zx, zy = denoise_gradients(
                self.denoisers[s], gx, gy, channels_last=channels_last, autocast_dtype=autocast_dtype
            )
            x = deconvolve(problem, gammas[s + 1], zx, zy)
            yield StageTensors(s + 1, x, zx, zy, problem)

    def forward(self, y: torch.Tensor, kernel: torch.Tensor, iterations: int | None = None) -> torch.Tensor:
        """Final latent image (N, H, W) after ``iterations`` stages."""
        out = None
        for out in self.run(y, kernel, iterations):
            pass
        return out.image
