"""The volumetric cascade: eq. 6 in 3D with learned priors on the x, y and z gradients of a z-stack.

A :class:`VolumeCascade` is a :class:`~.conditioned.NoiseMapCascade` whose images are volumes
``(N, Z, Y, X)``: the initial deconvolution and every stage solve eq. 6 on the padded 3D grid (the
shared spectral core: replicate padding and edge taper along all three axes), with the difference
operators along x, y and z.  Each stage's prior is an :class:`~.denoiser.AxialPair` of 2D FCNNs:
the lateral one denoises the x and y gradients plane by plane (XY planes), the axial one the z
gradient slice by slice (YZ slices, where z is the slice's last axis).  Both see the noise s.d. map
(Poisson–Gaussian noise varies with brightness), and γ of every deconvolution follows the volume's
effective noise level as in the 2D noise-map cascade.  Why 2D networks on slices and not a 3D
network: ``docs/engine.md``.

It runs through the one stage loop, :meth:`Cascade.run <.cascade.Cascade.run>`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .conditioned import NoiseMapCascade
from .denoiser import AxialPair


class VolumeCascade(NoiseMapCascade):
    """A noise-map-conditioned cascade for volumes, one :class:`~.denoiser.AxialPair` per stage.

    Parameters
    ----------
    n_stages : number of stages.
    width : hidden channels of the FCNNs (64 in the paper).
    metadata : free-form provenance (str → str), saved with the weights.

    ``run(y, kernel, noise_map, ...)`` takes volumes ``y`` (N, Z, Y, X) on the [0, 1] scale, a 3D
    kernel (kz, ky, kx) (odd, normalised) and their noise s.d. map (N, Z, Y, X), a float or (N,).
    State-dict keys: ``denoisers.{s}.lateral.net.{j}.*``, ``denoisers.{s}.axial.net.{j}.*``,
    ``gamma_coeffs``.
    """

    spatial_ndim: int = 3

    def __init__(self, n_stages: int = 3, width: int = 64, metadata: dict[str, str] | None = None) -> None:
        super().__init__(n_stages, width=width, metadata=metadata)
        self.denoisers = nn.ModuleList([AxialPair(width, 2) for _ in range(n_stages)])

    @classmethod
    def from_planar(cls, planar: NoiseMapCascade, metadata: dict[str, Any] | None = None) -> "VolumeCascade":
        """A warm start from a 2D noise-map cascade: its γ(σ), and both networks of every stage copies of
        that stage's network."""
        out = cls(planar.n_stages, width=planar.width,
                  metadata=metadata or {"initialised_from": "2D noise-map cascade"})
        with torch.no_grad():
            out.gamma_coeffs.copy_(planar.gamma_coeffs)
        for s, net in enumerate(planar.denoisers):
            out.denoisers[s].load_state_dict(AxialPair.from_planar(net).state_dict())
        return out.to(planar.gamma_coeffs.device).eval()

    @classmethod
    def fresh_networks(cls, start: NoiseMapCascade, width: int, seed: int = 0,
                       metadata: dict[str, Any] | None = None) -> "VolumeCascade":
        """A cascade with ``start``'s stage count and γ(σ) but new, randomly initialised networks of ``width``
        hidden channels (seeded): the start of a narrower (faster) cascade, trained stage-wise from stage 1."""
        note = f"γ(σ) of a width-{start.width} cascade, new width-{width} networks"
        with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's generator
            torch.manual_seed(seed)
            out = cls(start.n_stages, width=width, metadata=metadata or {"initialised_from": note})
        with torch.no_grad():
            out.gamma_coeffs.copy_(start.gamma_coeffs)
        return out.to(start.gamma_coeffs.device).eval()
