"""A cascade conditioned on a per-pixel noise map: one model for every noise level and type.

The shipped cascades are trained for one Gaussian noise level each.  Here every stage's FCNN sees,
besides the gradient, a second input channel :data:`NOISE_MAP_SCALE` × the noise s.d. of each pixel
(on the [0, 1] intensity scale), and the data weight γ of every deconvolution (eq. 6) is a smooth
function of the plane's effective noise level::

    log γ_i(σ) = c_i0 + c_i1 t + c_i2 t²,   t = ln(max(σ_eff, σ_floor) / 0.03),   σ_eff = sqrt(mean(σ_map²))

with σ_floor = 0.01 (:data:`SIGMA_GAMMA_FLOOR`) unless the model says otherwise (:data:`GAMMA_FLOOR_KEY`).

A per-pixel map covers signal-dependent (Poisson–Gaussian, photon-limited) noise as well as plain
Gaussian noise (a constant map).

:class:`NoiseMapCascade` is a :class:`~.cascade.Cascade`: it runs through the one stage loop,
:meth:`Cascade.run <.cascade.Cascade.run>`, with a γ schedule per plane and the
:class:`NoiseMapGrid` strategy (the padded noise map as the networks' second channel).
Initialisation (:meth:`NoiseMapCascade.from_plain_cascades`): γ(σ) through the shipped 1/3/5 %
cascades' schedules, the FCNNs of one of them with the map channel's weights at zero
(:meth:`~.denoiser.GradientDenoiser.from_plain`), so the model starts as that cascade.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .cascade import Cascade, Denoise, StageTensors
from .denoiser import GradientDenoiser, denoise_gradients
from .solver import DeconvProblem, prepare_problem
from .spectral import image_gradients

#: The network's second input channel is NOISE_MAP_SCALE × the noise s.d. map (so 1 % → 0.1).
NOISE_MAP_SCALE: float = 10.0

#: Reference noise level of the γ(σ) parametrisation: t = ln(σ_eff / SIGMA_REF).
SIGMA_REF: float = 0.03

#: γ(σ) below this σ_eff is held at γ(SIGMA_GAMMA_FLOOR), the lowest shipped level.  The quadratic
#: through the shipped 1/3/5 % schedules peaks near 1–2 % and extrapolates *down* below 1 % (cleaner
#: data would be trusted less); holding the 1 % schedule there is what the nearest shipped cascade does.
SIGMA_GAMMA_FLOOR: float = 0.01

#: Metadata key of a cascade's own γ floor (a σ_eff, stored as text; every model file has carried it).  A cascade
#: trained with another floor keeps it (``fcnn-deblur train-noisemap --gamma-floor``); without the key:
#: :data:`SIGMA_GAMMA_FLOOR`.
GAMMA_FLOOR_KEY: str = "sigma_gamma_floor"


def check_gamma_floor(value) -> float:
    """A γ floor: a σ_eff in (0, 1) (metadata strings such as "0.0025" accepted)."""
    try:
        floor = float(value)
    except (TypeError, ValueError):
        floor = float("nan")
    if not 0.0 < floor < 1.0:
        raise ValueError(f"the γ floor must be a noise s.d. in (0, 1) on the [0, 1] scale, got {value!r}")
    return floor


#: The per-level cascades the γ(σ) coefficients are fitted to.
SHIPPED_LEVELS: tuple[float, ...] = (0.01, 0.03, 0.05)


def as_noise_map(noise_map, y: torch.Tensor | None = None, shape: tuple[int, ...] | None = None,
                 device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``noise_map`` as an ``(N, H, W)`` tensor like ``y`` (or of ``shape``, ``dtype`` on ``device``).

    A float or an ``(N,)`` tensor is a constant s.d. (per plane).
    """
    if y is not None:
        shape, device, dtype = tuple(y.shape), y.device, y.dtype
    m = torch.as_tensor(noise_map, dtype=dtype, device=device)
    if m.ndim == 0:
        m = m.expand(shape)
    elif m.ndim == 1:
        m = m.reshape((-1,) + (1,) * (len(shape) - 1)).expand(shape)
    if tuple(m.shape) != tuple(shape):
        raise ValueError(f"noise map of shape {tuple(m.shape)} does not match the planes' {tuple(shape)}")
    return m


def network_condition(map_padded: torch.Tensor) -> torch.Tensor:
    """The networks' second input channel from a noise s.d. map: :data:`NOISE_MAP_SCALE` × the map."""
    return NOISE_MAP_SCALE * map_padded


def effective_sigma(sd_map: torch.Tensor, ndim: int = 2) -> torch.Tensor:
    """σ_eff = sqrt(mean(σ_map²)) of each plane ``(N, H, W)`` (or volume ``(N, D, H, W)``, ``ndim=3``) → (N,)."""
    return sd_map.square().mean(dim=tuple(range(-ndim, 0))).sqrt()


def fit_gamma_coeffs(gamma_schedules: Sequence[Sequence[float]], levels: Sequence[float] = SHIPPED_LEVELS) -> torch.Tensor:
    """Coefficients (n + 1, 3) of the quadratic in t = ln(σ / SIGMA_REF) through log γ of each schedule.

    ``gamma_schedules``: one γ schedule (n + 1 values) per level in ``levels`` (3 levels: exact fit).
    """
    t = torch.log(torch.tensor(levels, dtype=torch.float64) / SIGMA_REF)
    vand = torch.stack([torch.ones_like(t), t, t**2], dim=1)
    logg = torch.log(torch.tensor(gamma_schedules, dtype=torch.float64))  # (levels, n + 1)
    coeffs = torch.linalg.lstsq(vand, logg, driver="gelsd").solution  # (3, n + 1)
    return coeffs.T.to(torch.float32).contiguous()


@dataclass(frozen=True)
class NoiseMapGrid:
    """Denoise strategy of :meth:`Cascade.run <.cascade.Cascade.run>` for conditioned networks.

    As :class:`~.cascade.WholeGrid`, with ``map_padded`` (the noise s.d. map on the padded grid,
    replicate-padded like the image: ``problem.geometry.pad``) × :data:`NOISE_MAP_SCALE` as every network's second channel.
    """

    map_padded: torch.Tensor
    channels_last: bool = True
    autocast_dtype: torch.dtype | None = None

    def __call__(self, net: nn.Module, x: torch.Tensor, ndim: int) -> list[torch.Tensor]:
        return denoise_gradients(net, image_gradients(x, ndim), self.channels_last, self.autocast_dtype,
                                 conditions=[network_condition(self.map_padded)])


class NoiseMapCascade(Cascade):
    """A cascade whose FCNNs see the noise map and whose γ follow the noise level.

    Parameters
    ----------
    n_stages : number of FCNN stages.
    width : hidden channels of the FCNNs (64 in the paper).
    metadata : free-form provenance (str → str), saved with the weights.

    Parameters (state-dict keys): ``denoisers.{s}.net.{j}.weight/bias`` (2 input channels) and
    ``gamma_coeffs`` (n + 1, 3), the coefficients of log γ_i(σ).
    """

    #: Spatial axes of the images it deblurs (2: planes; :class:`~.volumetric.VolumeCascade`: 3).
    spatial_ndim: int = 2

    def __init__(self, n_stages: int = 3, width: int = 64, metadata: dict[str, str] | None = None) -> None:
        super().__init__(n_stages, metadata=metadata, width=width, in_channels=2)
        default = self.log_gammas.detach()  # the plain default schedule, constant in σ
        del self.log_gammas  # γ is a function of σ here
        init = torch.zeros(n_stages + 1, 3)
        init[:, 0] = default
        self.gamma_coeffs = nn.Parameter(init)

    @classmethod
    def from_plain_cascades(cls, cascades: Mapping[float, Cascade], init_level: float = SIGMA_REF) -> "NoiseMapCascade":
        """γ(σ) fitted to plain cascades ``{σ: cascade}``; the FCNNs of the ``init_level`` one (map weights zero)."""
        base = cascades[init_level]
        n = base.n_stages
        levels = sorted(cascades)
        out = cls(n, width=base.width,
                  metadata={"initialised_from": f"shipped cascades {', '.join(f'{lv:g}' for lv in levels)}"})
        with torch.no_grad():
            out.gamma_coeffs.copy_(fit_gamma_coeffs([cascades[lv].gammas.tolist() for lv in levels], levels))
        for s in range(n):
            out.denoisers[s].load_state_dict(GradientDenoiser.from_plain(base.denoisers[s]).state_dict())
        return out.eval()

    def gammas_at(self, sigma_eff: torch.Tensor | float) -> torch.Tensor:
        """γ of every deconvolution for effective noise levels ``sigma_eff`` (N,) → (n_stages + 1, N)."""
        c = self.gamma_coeffs
        s = torch.as_tensor(sigma_eff, dtype=c.dtype, device=c.device).reshape(-1)
        t = torch.log(s.clamp_min(self.gamma_floor) / SIGMA_REF)
        return torch.exp(c[:, :1] + c[:, 1:2] * t + c[:, 2:3] * t.square())

    @property
    def gamma_floor(self) -> float:
        """The σ_eff below which γ(σ) is held constant: the metadata's :data:`GAMMA_FLOOR_KEY`, else
        :data:`SIGMA_GAMMA_FLOOR` (every file trained before the key existed)."""
        return check_gamma_floor(self.metadata.get(GAMMA_FLOOR_KEY, SIGMA_GAMMA_FLOOR))

    def set_gamma_floor(self, floor: float, upper: float = 0.15, points: int = 64) -> None:
        """Hold γ(σ) constant below ``floor`` from now on (:data:`GAMMA_FLOOR_KEY` in the metadata), with the
        coefficients refitted (least squares in t over ``points`` log-spaced σ in [floor, upper]) to the
        current γ(σ) there: a start for training with the new floor that is as close as a quadratic gets to
        the model as it was."""
        floor = check_gamma_floor(floor)
        if not upper > floor:
            raise ValueError(f"upper ({upper!r}) must be above the floor ({floor!r})")
        with torch.no_grad():
            c = self.gamma_coeffs
            sig = torch.logspace(math.log10(floor), math.log10(upper), points, dtype=torch.float64)
            target = self.gammas_at(sig).log().double()  # (n + 1, points), the current curve
            t = torch.log(sig / SIGMA_REF)
            basis = torch.stack([torch.ones_like(t), t, t.square()], dim=1)  # (points, 3)
            coeffs = torch.linalg.lstsq(basis, target.T).solution.T  # (n + 1, 3)
            c.copy_(coeffs.to(c.dtype))
        self.metadata[GAMMA_FLOOR_KEY] = str(floor)

    @property
    def gammas(self) -> torch.Tensor:
        """γ schedule at the reference level :data:`SIGMA_REF` (n + 1,)."""
        return self.gamma_coeffs[:, 0].exp()

    def extended(self, n_stages: int) -> "NoiseMapCascade":
        """A copy with ``n_stages`` stages: the first ``self.n_stages`` as they are, every new stage a copy of
        the last stage's network and every new deconvolution the last one's γ(σ) coefficients.

        The start of a deeper cascade (train the new stages stage-wise, then all end to end).  The copy
        keeps the class (a :class:`~.volumetric.VolumeCascade` stays one), the metadata and the device.
        """
        n = self.n_stages
        if not isinstance(n_stages, int) or n_stages < n:
            raise ValueError(f"n_stages must be an integer ≥ the cascade's {n} stages, got {n_stages!r}")
        if n < 1:
            raise ValueError("a cascade without stages has no stage to copy")
        out = type(self)(n_stages, width=self.width, metadata=dict(self.metadata)).to(self.gamma_coeffs.device)
        with torch.no_grad():
            out.gamma_coeffs[: n + 1].copy_(self.gamma_coeffs)
            out.gamma_coeffs[n + 1 :].copy_(self.gamma_coeffs[n])
            for s in range(n_stages):
                out.denoisers[s].load_state_dict(self.denoisers[min(s, n - 1)].state_dict())
        return out.train(self.training)

    def run(
        self,
        y: torch.Tensor | None = None,
        kernel: torch.Tensor | None = None,
        noise_map: Any = None,
        iterations: int | None = None,
        channels_last: bool = True,
        autocast_dtype: torch.dtype | None = None,
        problem: DeconvProblem | None = None,
        keep_gradients: bool = True,
        denoise: Callable[[torch.Tensor], Denoise] | None = None,
        refills: int | None = None,
    ) -> Iterator[StageTensors]:
        """Yield the initial deconvolution, then the result of each stage (:meth:`Cascade.run`).

        ``noise_map``: (N, H, W) noise s.d. of every pixel of ``y`` on the [0, 1] scale, or a float
        or an (N,) tensor (a constant s.d. per plane).  ``y`` and ``kernel``, or ``problem`` (a
        :func:`~.solver.prepare_problem` of the planes: their shape and precomputed spectra).
        ``denoise``: how the networks are applied, made from the noise map on the padded grid
        (N, Hp, Wp) — default :class:`NoiseMapGrid`; the engine's memory-bounded tiles are another
        (each feeds :func:`network_condition` of the map to the networks).
        ``refills``: boundary refills per stage (default: the cascade's own, :attr:`~.cascade.Cascade.refills`).
        """
        if noise_map is None:
            raise ValueError("a noise-map cascade needs noise_map= (the noise s.d. of every pixel)")
        if problem is None:
            if y is None:
                raise ValueError("a noise-map cascade needs the planes y (or their problem=)")
            problem = prepare_problem(y, kernel, ndim=self.spatial_ndim)
        sd = as_noise_map(noise_map, shape=(problem.data.shape[0],) + problem.geometry.image_shape,
                          device=problem.data.device, dtype=problem.data.real.dtype)
        map_padded = problem.geometry.pad(sd)
        if denoise is None:
            strategy = NoiseMapGrid(map_padded, channels_last, autocast_dtype)
        else:
            strategy = denoise(map_padded)
        yield from super().run(iterations=iterations, problem=problem, denoise=strategy,
                               keep_gradients=keep_gradients, gammas=self.gammas_at(effective_sigma(sd, problem.ndim)),
                               refills=refills)

    def forward(self, y: torch.Tensor, kernel: torch.Tensor, noise_map: Any = None,
                iterations: int | None = None) -> torch.Tensor:
        """Final latent image (N, H, W) after ``iterations`` stages."""
        out = None
        for out in self.run(y, kernel, noise_map, iterations):
            pass
        return out.image
