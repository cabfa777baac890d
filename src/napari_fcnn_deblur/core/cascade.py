"""The iterative cascade: initial deconvolution, then stages of (denoise gradients → deconvolve).

:class:`Cascade` holds one :class:`~.denoiser.GradientDenoiser` per stage and
the data weights γ of every deconvolution (initial one included).
:meth:`Cascade.run` is *the* stage loop of the package: inference (whole
planes, CPU cache tiles, memory-bounded tiles), training-data generation and
end-to-end training of γ all run through it.  How the networks are applied is
a strategy passed to it (:class:`WholeGrid` by default; the engine's
memory-bounded tiles are another).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .denoiser import GradientDenoiser, denoise_gradients
from .solver import DeconvProblem, deconvolve, gradient_spectrum, prepare_problem, refill_boundary
from .spectral import image_gradients, zero_outside

#: Metadata key of a cascade's boundary refills per stage (:func:`~.solver.refill_boundary`; absent = 0).
REFILLS_KEY = "boundary_refills"

#: Metadata key of a cascade's network margin (:attr:`Cascade.network_margin`; absent = the whole padded grid).
MARGIN_KEY = "network_margin"

#: How a stage's network is applied: ``denoise(net, x_padded, ndim) -> [z_x, z_y, ...]``.
Denoise = Callable[[nn.Module, torch.Tensor, int], list]


@dataclass(frozen=True)
class WholeGrid:
    """Apply the networks to the gradients of the whole padded grid, batch at once.

    On the CPU outside autograd, :func:`~.denoiser.apply_network` still runs
    large planes in cache-sized tiles (same result).
    """

    channels_last: bool = True
    autocast_dtype: torch.dtype | None = None

    def __call__(self, net: nn.Module, x: torch.Tensor, ndim: int) -> list[torch.Tensor]:
        return denoise_gradients(net, image_gradients(x, ndim), self.channels_last, self.autocast_dtype)


@dataclass
class StageTensors:
    """Output of one step of the cascade on the padded FFT grid.

    ``stage`` 0 is the initial deconvolution (``gradients`` None); stage s ≥ 1
    used the denoised gradients of stage s's FCNN (``[z_x, z_y]`` for planes;
    None when the run was asked not to keep them).
    """

    stage: int
    x_padded: torch.Tensor
    gradients: list[torch.Tensor] | None
    problem: DeconvProblem

    @property
    def image(self) -> torch.Tensor:
        """Latent image cropped to the input's extent, (N, *image_shape)."""
        return self.problem.geometry.crop(self.x_padded)

    @property
    def z_x(self) -> torch.Tensor | None:
        return None if self.gradients is None else self.gradients[0]

    @property
    def z_y(self) -> torch.Tensor | None:
        return None if self.gradients is None else self.gradients[1]


def _non_negative_int(value, error: str) -> int:
    """``value`` as a non-negative integer (metadata strings such as "2" accepted); ``error`` + the value if not."""
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = -1
    if n < 0 or isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"{error}, got {value!r}")
    return n


def check_refills(refills) -> int:
    """Boundary refills per stage: a non-negative integer (metadata strings such as "2" accepted)."""
    return _non_negative_int(refills, "boundary refills must be a non-negative integer")


def check_network_margin(margin) -> int | None:
    """A network margin: None (networks on the whole padded grid) or a non-negative integer (metadata
    strings such as "4" accepted)."""
    if margin is None:
        return None
    return _non_negative_int(margin, "the network margin must be a non-negative integer (pixels) or None")


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
    width : int
        Hidden channels of every stage's network (64 = Table 1; narrow ones for tests).
    in_channels : int
        Input channels of every stage's network (1; more for conditioned networks, see
        :mod:`.conditioned`).
    """

    def __init__(
        self,
        n_stages: int = 3,
        gammas: list[float] | tuple[float, ...] | None = None,
        noise_level: float | None = None,
        metadata: dict[str, str] | None = None,
        width: int = 64,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if gammas is None:
            gammas = [100.0 * 0.1 ** (i / max(n_stages, 1)) for i in range(n_stages + 1)]
        if len(gammas) != n_stages + 1:
            raise ValueError(f"need {n_stages + 1} gammas for {n_stages} stages, got {len(gammas)}")
        self.denoisers = nn.ModuleList([GradientDenoiser(width, in_channels) for _ in range(n_stages)])
        # log-parametrised so γ stays positive when trained
        self.log_gammas = nn.Parameter(torch.log(torch.tensor(list(gammas), dtype=torch.float32)))
        self.noise_level = noise_level
        self.metadata: dict[str, Any] = dict(metadata or {})

    @property
    def n_stages(self) -> int:
        return len(self.denoisers)

    @property
    def width(self) -> int:
        return self.denoisers[0].width if self.n_stages else 64

    @property
    def gammas(self) -> torch.Tensor:
        return self.log_gammas.exp()

    @property
    def refills(self) -> int:
        """Boundary refills before each stage's deconvolution (:func:`~.solver.refill_boundary`).

        0 (the paper's setting: edge taper only) unless the cascade's metadata
        says otherwise (:data:`REFILLS_KEY`; a cascade trained with refills keeps them).
        """
        return check_refills(self.metadata.get(REFILLS_KEY, 0))

    @property
    def network_margin(self) -> int | None:
        """Where the stages' priors act: None (the paper's setting: the networks denoise the gradients of
        the whole padded grid) or m ≥ 0 — the image's box widened by m pixels on every side
        (:meth:`~.spectral.PaddingGeometry.region`); in the rest of the frame the target gradients are
        zero.  From the metadata (:data:`MARGIN_KEY`): a cascade trained with a margin keeps it.  The
        frame is replicate-padded and tapered, not observed, so denoising it buys little; skipping it
        saves the networks' work there (the volume cascade: ``docs/engine.md``)."""
        return check_network_margin(self.metadata.get(MARGIN_KEY))

    def prior_region(self, geometry) -> tuple[slice, ...] | None:
        """The slices of the padded grid where the networks' outputs are used (None: all of it)."""
        m = self.network_margin
        return None if m is None else geometry.region(m)

    def check_iterations(self, iterations) -> int:
        """``iterations`` validated against this cascade (None = every stage)."""
        if iterations is None:
            return self.n_stages
        if isinstance(iterations, bool) or not isinstance(iterations, int) and not hasattr(iterations, "__index__"):
            raise ValueError(f"iterations must be an integer, got {iterations!r}")
        n = int(iterations)
        if not 0 <= n <= self.n_stages:
            raise ValueError(
                f"iterations must be between 0 and {self.n_stages} (the number of trained stages "
                f"of this model), got {iterations}"
            )
        return n

    def run(
        self,
        y: torch.Tensor | None = None,
        kernel: torch.Tensor | None = None,
        iterations: int | None = None,
        channels_last: bool = True,
        autocast_dtype: torch.dtype | None = None,
        problem: DeconvProblem | None = None,
        denoise: Denoise | None = None,
        keep_gradients: bool = True,
        gammas: torch.Tensor | None = None,
        refills: int | None = None,
    ) -> Iterator[StageTensors]:
        """Yield the initial deconvolution, then the result of each stage.

        Parameters
        ----------
        y : (N, H, W) float tensor
            Blurry planes on a [0, 1] scale (not needed when ``problem`` is given).
        kernel : (kh, kw) or (N, kh, kw) tensor, odd-sized, normalised.
        iterations : int, optional
            Number of FCNN stages to run (default: all).
        channels_last, autocast_dtype
            Memory format and precision of the default :class:`WholeGrid` application.
        problem : DeconvProblem, optional
            Precomputed :func:`~.solver.prepare_problem` (shares the spectra).
        denoise : callable, optional
            How the networks are applied (default :class:`WholeGrid`).
        keep_gradients : bool
            Keep the denoised gradients in the yielded :class:`StageTensors`
            (False frees each as soon as its deconvolution has used it).
        gammas : tensor, optional
            γ of this run instead of the cascade's own: ``(n_stages + 1,)``, or
            ``(n_stages + 1, N)`` for one schedule per image (e.g. γ of each plane's noise level).
        refills : int, optional
            Boundary refills before each stage's deconvolution (default: :attr:`refills`):
            each replaces the frame of the padded blurry image by the current estimate blurred
            by the kernel (:func:`~.solver.refill_boundary`) and solves eq. 6 again.
        """
        n = self.check_iterations(iterations)
        r = self.refills if refills is None else check_refills(refills)
        if problem is None:
            problem = prepare_problem(y, kernel)
        if denoise is None:
            denoise = WholeGrid(channels_last, autocast_dtype)
        if gammas is None:
            gammas = self.gammas
        region = self.prior_region(problem.geometry)
        x = deconvolve(problem, gammas[0])
        yield StageTensors(0, x, None, problem)
        for s in range(n):
            zs = denoise(self.denoisers[s], x, problem.ndim)
            if region is not None:  # zero target gradients outside the prior's region (a no-op for strategies
                zs = [zero_outside(z, region) for z in zs]  # that already skip it, e.g. the engine's tiles)
            if r == 0:
                del x
                x = deconvolve(problem, gammas[s + 1], zs)
            else:
                prior = gradient_spectrum(problem, zs)  # the same for every refill of this stage
                for _ in range(r):
                    problem = refill_boundary(problem, x)
                    x = deconvolve(problem, gammas[s + 1], prior=prior)
                del prior
            if not keep_gradients:
                zs = None
            yield StageTensors(s + 1, x, zs, problem)

    def forward(self, y: torch.Tensor, kernel: torch.Tensor, iterations: int | None = None) -> torch.Tensor:
        """Final latent image (N, H, W) after ``iterations`` stages."""
        out = None
        for out in self.run(y, kernel, iterations):
            pass
        return out.image
