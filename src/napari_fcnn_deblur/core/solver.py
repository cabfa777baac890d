"""The closed-form deconvolution of each cascade stage (Zhang et al., CVPR 2017, eq. 6), any dimension.

    x = F⁻¹[(γ conj(K) Y + Σ_l conj(P_l) Z_l) / (γ |K|² + Σ_l |P_l|² + ε)]

``K`` is the kernel's transfer function, ``P_l`` those of the backward
differences along each axis, ``Z_l`` the denoised gradients (none for the
initial deconvolution).  The paper's closed form assumes circular boundaries;
real images are not periodic, so the blurry image is first extended by
replicate padding (the kernel size on every side) and edge-tapered (blended
towards its own circular blur near the frame, as MATLAB's ``edgetaper``),
which makes it consistent with a periodic blur model; the result is cropped
back afterwards.

Every function is differentiable torch code on batches ``(N, *grid)``, so the
same code runs inference (planes, tiles, volumes), makes training inputs,
trains γ end to end and, in float64, runs the classical baselines.  Spectra
that depend only on the kernel and the grid (:class:`KernelSpectra`) are
computed once per call and shared by every plane, tile and stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .spectral import PaddingGeometry, difference_otfs, gradient_adjoint, padding_geometry, psf2otf, taper_weights

#: Small constant added to the denominator of eq. 6 (as in the authors' release).
EPSILON = 1e-4


@dataclass
class KernelSpectra:
    """Spectra of eq. 6 that depend only on the kernel and the padded grid (half spectra).

    Attributes
    ----------
    geometry : PaddingGeometry
    otf : complex tensor (1 or N, *half grid)
        ``K``, the kernel's transfer function.
    kernel_power : real tensor, same shape
        ``|K|²``.
    taper_alpha : real tensor (1 or N, *grid)
        Edge-taper weights.
    difference_otfs : list of complex tensors
        ``P_l`` for each axis (broadcastable).
    difference_power : real tensor (*half grid)
        ``Σ_l |P_l|²``.
    """

    geometry: PaddingGeometry
    otf: torch.Tensor
    kernel_power: torch.Tensor
    taper_alpha: torch.Tensor
    difference_otfs: list[torch.Tensor]
    difference_power: torch.Tensor

    @property
    def ndim(self) -> int:
        return self.geometry.ndim


def kernel_spectra(kernel: torch.Tensor, image_shape) -> KernelSpectra:
    """Spectra of eq. 6 for ``kernel`` and images of ``image_shape`` (the grid is padded from it).

    Parameters
    ----------
    kernel : (*k) or (N, *k) tensor, odd-sized, normalised
        One kernel for every image, or one per image of the batch.
    image_shape : tuple of d ints
        Spatial shape of the (unpadded) images, d = 2 or 3.
    """
    d = len(image_shape)
    geom = padding_geometry(image_shape, kernel.shape[-d:])
    k = kernel if kernel.ndim == d + 1 else kernel.reshape((1,) + tuple(kernel.shape[-d:]))
    otf = psf2otf(k, geom.shape)
    dotfs, dpower = difference_otfs(geom.shape, dtype=k.dtype, device=k.device)
    return KernelSpectra(
        geometry=geom,
        otf=otf,
        kernel_power=otf.real.square() + otf.imag.square(),
        taper_alpha=taper_weights(k, geom.shape),
        difference_otfs=dotfs,
        difference_power=dpower,
    )


@dataclass
class DeconvProblem:
    """A batch of padded, tapered blurry images ready for eq. 6: what does not change between stages.

    ``data`` is ``conj(K) Y`` (half spectrum) of the padded, tapered images;
    ``observed`` the blurry images themselves ``(N, *image_shape)`` (what
    :func:`refill_boundary` keeps fixed; None when not kept).
    """

    spectra: KernelSpectra
    data: torch.Tensor
    observed: torch.Tensor | None = None

    @property
    def geometry(self) -> PaddingGeometry:
        return self.spectra.geometry

    @property
    def ndim(self) -> int:
        return self.spectra.ndim


def _dims(d: int) -> tuple[int, ...]:
    return tuple(range(-d, 0))


def pad_and_taper(y: torch.Tensor, spectra: KernelSpectra) -> torch.Tensor:
    """Replicate-pad a batch ``(N, *image_shape)`` onto the grid and edge-taper it (MATLAB ``edgetaper``)."""
    d = spectra.ndim
    if y.ndim != d + 1 or tuple(y.shape[-d:]) != spectra.geometry.image_shape:
        raise ValueError(
            f"expected blurry images of shape (N, {', '.join(map(str, spectra.geometry.image_shape))}), "
            f"got {tuple(y.shape)}"
        )
    dims = _dims(d)
    y_pad = spectra.geometry.pad(y)
    blurred = torch.fft.irfftn(torch.fft.rfftn(y_pad, dim=dims) * spectra.otf, s=spectra.geometry.shape, dim=dims)
    alpha = spectra.taper_alpha
    return alpha * y_pad + (1.0 - alpha) * blurred


def prepare_problem(y: torch.Tensor, kernel: torch.Tensor | None = None,
                    spectra: KernelSpectra | None = None, ndim: int = 2) -> DeconvProblem:
    """Pad, edge-taper and transform a batch of blurry images for eq. 6.

    Parameters
    ----------
    y : (N, *image_shape) float tensor
        Blurry images (on a [0, 1] scale for the learned cascade).
    kernel : (*k) or (N, *k) tensor, optional
        Normalised, odd-sized kernels; not needed when ``spectra`` is given.
    spectra : KernelSpectra, optional
        Precomputed :func:`kernel_spectra` (lets stacks and stages share one OTF).
    ndim : int
        Number of spatial axes (2 for planes, 3 for volumes); taken from
        ``spectra`` when given.
    """
    if spectra is None:
        if kernel is None:
            raise ValueError("prepare_problem needs a kernel or its spectra")
        spectra = kernel_spectra(kernel, tuple(y.shape[-ndim:]))
    y_pad = pad_and_taper(y, spectra)
    return DeconvProblem(spectra=spectra, data=spectra.otf.conj() * torch.fft.rfftn(y_pad, dim=_dims(spectra.ndim)),
                         observed=y)


def refill_boundary(problem: DeconvProblem, x_padded: torch.Tensor) -> DeconvProblem:
    """Boundary adjustment of Kruse et al. (FDN, ICCV 2017): the frame of the padded blurry image
    becomes the current estimate blurred by the kernel; the observed pixels stay as they are.

    The edge taper of :func:`prepare_problem` makes the padded image roughly
    consistent with a circular blur; once an estimate of the latent image
    exists, ``K * x`` is a better guess of what the camera would have seen
    outside its field of view, so the frame is replaced by it (circular blur on
    the padded grid, the model eq. 6 solves) and the image region by the
    observation ``y``.  One extra forward and inverse FFT per refill.

    Parameters
    ----------
    problem : DeconvProblem
        Made by :func:`prepare_problem` (needs ``problem.observed``).
    x_padded : (N, *grid) tensor
        The current latent estimate on the padded grid.

    Returns
    -------
    DeconvProblem with the same spectra and the refilled data term.

    References
    ----------
    .. [1] J. Kruse, C. Rother, U. Schmidt, "Learning to Push the Limits of
           Efficient FFT-based Image Deconvolution", ICCV 2017, sec. 3.3.
    """
    if problem.observed is None:
        raise ValueError("refill_boundary needs the observed images (a problem made by prepare_problem)")
    sp, dims = problem.spectra, _dims(problem.ndim)
    blurred = torch.fft.irfftn(torch.fft.rfftn(x_padded, dim=dims) * sp.otf, s=sp.geometry.shape, dim=dims)
    inside = torch.zeros(sp.geometry.shape, dtype=torch.bool, device=blurred.device)
    sp.geometry.crop(inside).fill_(True)
    refilled = torch.where(inside, sp.geometry.pad(problem.observed.to(blurred.dtype)), blurred)
    return DeconvProblem(spectra=sp, data=sp.otf.conj() * torch.fft.rfftn(refilled, dim=dims),
                         observed=problem.observed)


def _per_image(gamma, like: torch.Tensor, d: int):
    """A scalar γ as it is; a (N,) tensor of per-image γ shaped to broadcast over (N, *half grid)."""
    if isinstance(gamma, torch.Tensor) and gamma.ndim == 1:
        return gamma.reshape((-1,) + (1,) * d).to(like.real.dtype)
    return gamma


def gradient_spectrum(problem: DeconvProblem, gradients: Sequence[torch.Tensor]) -> torch.Tensor:
    """``Σ_l conj(P_l) Z_l``, the prior's term of eq. 6's numerator (half spectrum), from the denoised gradients
    ``Z_l`` (``(N, *grid)`` each, one per axis in the order of :func:`~.spectral.image_gradients``): one forward
    FFT of ``Σ_l D_lᵀ z_l`` (:func:`~.spectral.gradient_adjoint`).  Computed once, it serves every refill of a
    stage (:func:`deconvolve` ``prior=``)."""
    n = len(problem.spectra.difference_otfs)
    if len(gradients) != n:
        raise ValueError(f"expected {n} gradient images (one per axis), got {len(gradients)}")
    return torch.fft.rfftn(gradient_adjoint(gradients), dim=_dims(problem.ndim))


def deconvolve(problem: DeconvProblem, gamma, gradients: Sequence[torch.Tensor] | None = None,
               epsilon: float = EPSILON, prior: torch.Tensor | None = None) -> torch.Tensor:
    """Solve eq. 6 on the padded grid.

    Parameters
    ----------
    problem : DeconvProblem
    gamma : float, 0-d tensor or (N,) tensor
        Weight of the data term (larger = trust the blurry image more).
    gradients : sequence of (N, *grid) tensors, or None
        Denoised gradients ``Z_l`` on the padded grid, one per axis in the
        order of :func:`~.spectral.image_gradients`; None (the initial
        deconvolution) means zero gradients.
    epsilon : float
        Added to the denominator (:data:`EPSILON`; 0 for the half-quadratic
        baselines, whose denominator is positive).
    prior : complex tensor, optional
        :func:`gradient_spectrum` of the gradients, instead of ``gradients`` (a stage's refills share it).

    Returns
    -------
    (N, *grid) real tensor: the latent image on the padded grid.
    """
    sp, d = problem.spectra, problem.ndim
    dims = _dims(d)
    g = _per_image(gamma, problem.data, d)
    inplace = not torch.is_grad_enabled()
    num = problem.data * g
    if gradients is not None and prior is not None:
        raise ValueError("give the gradients or their spectrum (prior=), not both")
    if gradients is not None:
        prior = gradient_spectrum(problem, gradients)
    if prior is not None:
        num = num.add_(prior) if inplace else num + prior
    den = sp.kernel_power * g
    if inplace:
        den = den.add_(sp.difference_power).add_(epsilon)
        num.div_(den)
    else:
        num = num / (den + sp.difference_power + epsilon)
    del den
    return torch.fft.irfftn(num, s=sp.geometry.shape, dim=dims)
