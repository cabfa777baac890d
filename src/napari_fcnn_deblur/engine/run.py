"""One run path: a validated, prepared deblurring run (:class:`DeblurRun`), used by every entry point.

:func:`napari_fcnn_deblur.deblur`, :func:`~napari_fcnn_deblur.deblur_stages`,
the lazy dask path, the command line and the napari widget all make a
:class:`DeblurRun` with :meth:`DeblurRun.prepare` — which validates every
option, picks the intensity map and the noise (:class:`~.noise.NoiseLevel`: a
given σ, an estimate — Gaussian or Poisson–Gaussian — or a per-pixel map) with
the one rule of :mod:`.intensity` / :mod:`.noise`, resolves the model
(:func:`~napari_fcnn_deblur.io.models.select_model`), the device and the
precision — and then ask it for the final image (:meth:`DeblurRun.deblur`),
the stages (:meth:`DeblurRun.stages`) or both with progress
(:meth:`DeblurRun.steps`).  The stages themselves are always
:meth:`~napari_fcnn_deblur.core.cascade.Cascade.run`; the noise-map cascade
gets the per-pixel noise s.d. of every plane (its :meth:`NoiseMapCascade.run
<napari_fcnn_deblur.core.conditioned.NoiseMapCascade.run>`), a per-level
cascade the effective level only.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.cascade import Cascade, StageTensors, WholeGrid
from ..core.conditioned import NoiseMapCascade, network_condition
from ..core.solver import kernel_spectra, prepare_problem
from ..core.spectral import padding_geometry
from ..io.models import ModelChoice, select_model
from .devices import check_precision, resolve_device, tensor_on
from .intensity import IntensityScaling, intensity_scaling
from .kernels import prepare_kernel
from .layout import PlaneLayout
from .noise import NoiseLevel, check_sigma, estimate_noise, is_noise_map, noise_map_level
from .tiles import TiledNetworks, auto_tile_size, check_tile_size, fft_device, needs_tiling

logger = logging.getLogger(__name__)

#: Upper bound on padded pixels processed in one batch of planes (bounds memory: ~1 kB per pixel).
MAX_BATCH_PIXELS = 2_000_000

#: What ``model=`` accepts: None (the default rule), "noisemap", "per-level", a cascade file or a
#: :class:`~napari_fcnn_deblur.core.cascade.Cascade` (see :func:`~napari_fcnn_deblur.io.models.select_model`).
ModelLike = "str | os.PathLike | Cascade | None"

#: What ``noise_level=`` accepts: a number (s.d. on the [0, 1] scale), "auto" or a per-pixel s.d. map (array).
NoiseLike = "float | str | np.ndarray"


@dataclass
class StageResult:
    """One step of the cascade, in the input's layout and intensity units.

    Attributes
    ----------
    stage : int
        0 for the initial deconvolution, s for the result of stage s.
    image : float32 array, same shape as the input
        The deblurred image after this step.
    grad_x, grad_y : float32 arrays or None
        Denoised horizontal / vertical gradients that stage s's FCNN fed to
        its deconvolution (None for stage 0), in the input's units per pixel
        (RGB(A): the three colour channels).
    iterations : int
        Number of stages this run will produce in total.
    gamma : float
        Data weight γ used by this step's deconvolution (the noise-map cascade: at the
        effective noise level of the whole image; each plane uses its own).
    noise_level : float
        Effective noise s.d. (on the [0, 1] scale) of the run: the given ``noise_level``, the
        estimate when it was ``"auto"``, the RMS of a noise map (NaN if unknown).
    per_channel : list of StageResult or None
        With an explicit channel axis: each channel's own result (its γ and noise level).
    noise : NoiseLevel or None
        The noise the run used (:meth:`~.noise.NoiseLevel.describe` says it in words: σ, or the
        Poisson–Gaussian a and b, or a noise map).
    model : str
        Which model ran and why (:meth:`~napari_fcnn_deblur.io.models.ModelChoice.describe`).
    grad_z : float32 array or None
        A volumetric run's denoised z gradients (:mod:`.volume`; None for planes).
    """

    stage: int
    image: np.ndarray
    grad_x: np.ndarray | None
    grad_y: np.ndarray | None
    iterations: int
    gamma: float
    noise_level: float = float("nan")
    per_channel: list[StageResult] | None = None
    noise: NoiseLevel | None = None
    model: str = ""
    grad_z: np.ndarray | None = None


@dataclass(frozen=True)
class Progress:
    """Work done so far, in plane-steps (one plane through one step of the cascade)."""

    done: int
    total: int


def check_image(image) -> None:
    """Validate an array-like image at the boundary (dtype, dimensions, size); reads no pixels."""
    shape, dtype = getattr(image, "shape", None), getattr(image, "dtype", None)
    if shape is None or dtype is None:
        raise ValueError(f"the image must be an array (numpy, dask, zarr), got {type(image).__name__}")
    dtype = np.dtype(dtype)
    if (dtype == np.dtype(bool) or dtype == np.dtype(object) or dtype.kind in "mM"  # timedelta/datetime
            or not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating)):
        raise ValueError(f"the image must be a real numeric array (integer or float), got dtype {dtype}")
    if len(shape) < 2:
        raise ValueError(f"the image must be at least 2D (Y, X), got shape {tuple(shape)}")
    if any(isinstance(s, float) and math.isnan(s) for s in shape):
        raise ValueError("the dask array has unknown chunk sizes; call .compute_chunk_sizes() first")
    if math.prod(shape) == 0:
        raise ValueError(f"the image is empty (shape {tuple(shape)})")


#: Largest magnitude the engine computes with (float32).
FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_finite(a: np.ndarray) -> None:
    """Raise a clear ``ValueError`` for NaN or infinite pixels, or values beyond float32, in a float array."""
    if not np.issubdtype(a.dtype, np.floating):
        return
    if not np.all(np.isfinite(a)):
        raise ValueError("the image contains NaN or infinite pixels; replace them (e.g. np.nan_to_num) first")
    if a.dtype.itemsize > 4 and a.size and float(np.abs(a).max()) > FLOAT32_MAX:
        raise ValueError(
            f"the image has values up to {float(np.abs(a).max()):.3g}, beyond what float32 holds "
            f"({FLOAT32_MAX:.3g}); rescale it first"
        )


def check_model(model) -> None:
    """``model=`` must be None, a name ("noisemap", "per-level"), a path (str / os.PathLike) or a Cascade."""
    if model is None or isinstance(model, (str, os.PathLike, Cascade)):
        return
    raise ValueError(
        "model must be None (the default rule), 'noisemap', 'per-level', a cascade file path or a Cascade, "
        f"got {type(model).__name__} {model!r}"
    )


def is_auto(noise_level) -> bool:
    """Whether ``noise_level`` asks for an estimate."""
    return isinstance(noise_level, str) and noise_level.strip().lower() == "auto"


def decide_noise(noise_level, image, layout: PlaneLayout, scaling: IntensityScaling) -> NoiseLevel:
    """The :class:`~.noise.NoiseLevel` of a run: a number, ``"auto"`` (estimated) or a per-pixel map (validated)."""
    if is_auto(noise_level):
        noise = estimate_noise(image, scaling, layout.rgb)
        logger.info("estimated noise level: %s", noise.describe())
        return noise
    if is_noise_map(noise_level):
        if not isinstance(image, np.ndarray):
            raise ValueError("a per-pixel noise map needs a numpy image (not dask or zarr); give noise_level as a "
                             "number or 'auto'")
        return noise_map_level(noise_level, layout)
    return NoiseLevel.gaussian(check_sigma(noise_level))


def model_on(cascade: Cascade, device: torch.device) -> Cascade:
    """``cascade`` on ``device`` (a cached copy when it lives elsewhere; the caller's object is never moved)."""
    p = next(cascade.parameters())
    if p.device == device or (device.type == p.device.type and device.index is None):
        return cascade
    cache = cascade.__dict__.setdefault("_device_copies", {})
    if str(device) not in cache:
        clone = copy.deepcopy(cascade)
        clone.__dict__.pop("_device_copies", None)
        cache[str(device)] = clone.to(device).eval()
    return cache[str(device)]


@dataclass(frozen=True)
class RunOptions:
    """The picklable description of a prepared run (what a dask task or another process needs).

    Everything is already validated and decided: the kernel is normalised, the
    noise (``noise``; ``noise_level`` its effective s.d.) and the intensity map
    are numbers.  ``model`` is the chosen model's file (or the caller's Cascade
    object): each worker of a cluster loads and caches the file itself.
    """

    kernel: np.ndarray
    noise_level: float
    iterations: int
    scaling: IntensityScaling
    rgb: bool
    device: str = "auto"
    model: object = None
    tile_size: int | None = None
    precision: str = "auto"
    noise: NoiseLevel | None = None

    @property
    def noise_or_level(self) -> NoiseLevel:
        """The run's noise (Gaussian at ``noise_level`` for options made without one)."""
        return self.noise if self.noise is not None else NoiseLevel.gaussian(self.noise_level)


@dataclass
class DeblurRun:
    """A validated, prepared deblurring run.

    Make one with :meth:`prepare` (the public entry points do) or
    :meth:`from_options`; then call :meth:`deblur`, :meth:`stages` or
    :meth:`steps` on the image it was prepared for, or on any part of it with
    the same plane layout (one plane of a stack, a block of a dask array): all
    use the same intensity map, noise level, model, device and precision.

    Attributes
    ----------
    options : RunOptions
        The decided options (picklable).
    cascade : Cascade
        The model, on ``device``.
    device : torch.device
    autocast_dtype : torch.dtype or None
        bf16 autocast of the networks, or None for fp32.
    choice : ModelChoice or None
        Which model was chosen and why.
    """

    options: RunOptions
    cascade: Cascade
    device: torch.device
    autocast_dtype: torch.dtype | None = None
    choice: ModelChoice | None = None
    _spectra: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ construction

    @classmethod
    def prepare(
        cls,
        image,
        kernel,
        noise_level: NoiseLike = 0.01,
        iterations: int | None = None,
        device: "str | torch.device" = "auto",
        model: ModelLike = None,
        tile_size: int | None = None,
        intensity_range: tuple[float, float] | None = None,
        precision: str = "auto",
        rgb: bool | None = None,
    ) -> DeblurRun:
        """Validate everything and decide the intensity map, noise level, model, device and precision.

        ``image`` is any array-like (numpy, dask, zarr); only what the intensity
        rule and the noise estimate need is read.  Arguments as for
        :func:`napari_fcnn_deblur.deblur`; ``rgb`` None applies the rule of
        :mod:`.layout`.  Raises ``ValueError`` before any work on a bad option.
        """
        check_image(image)
        check_model(model)
        layout = PlaneLayout.of(image.shape, rgb)
        k = prepare_kernel(kernel, layout.plane_shape)
        if not is_auto(noise_level) and not is_noise_map(noise_level):
            check_sigma(noise_level)  # cheap checks before the estimate
        tile_size = check_tile_size(tile_size)
        dev = resolve_device(device)
        autocast_dtype = check_precision(precision, dev)
        if isinstance(image, np.ndarray):
            check_finite(image)
        if intensity_range is None:
            scaling = intensity_scaling(layout.colour(image))
        else:
            scaling = IntensityScaling.from_range(intensity_range)
        noise = decide_noise(noise_level, image, layout, scaling)
        choice = select_model(model, noise.sigma, noise.is_gaussian)
        logger.info("model: %s", choice.describe())
        cascade = model_on(choice.cascade, dev)
        it = cascade.check_iterations(iterations)
        task_model = os.fspath(choice.source) if isinstance(choice.source, os.PathLike) else choice.source
        task_device = "auto" if isinstance(device, str) and device.strip().lower() == "auto" else str(dev)
        opts = RunOptions(k, noise.sigma, it, scaling, layout.rgb, task_device, task_model, tile_size,
                          str(precision) if isinstance(precision, str) else precision, noise)
        return cls(opts, cascade, dev, autocast_dtype, choice)

    @classmethod
    def from_options(cls, options: RunOptions) -> DeblurRun:
        """The run described by ``options`` (loads the model, resolves the device here)."""
        dev = resolve_device(options.device)
        noise = options.noise_or_level
        choice = select_model(options.model, noise.sigma, noise.is_gaussian)
        return cls(options, model_on(choice.cascade, dev), dev, check_precision(options.precision, dev), choice)

    # ------------------------------------------------------------------ properties

    @property
    def kernel(self) -> np.ndarray:
        return self.options.kernel

    @property
    def scaling(self) -> IntensityScaling:
        return self.options.scaling

    @property
    def noise_level(self) -> float:
        """Effective noise s.d. on the [0, 1] scale (what a per-level cascade is chosen by)."""
        return self.options.noise_level

    @property
    def noise(self) -> NoiseLevel:
        """The noise the run uses (Gaussian σ, Poisson–Gaussian a and b, or a per-pixel map)."""
        return self.options.noise_or_level

    @property
    def model_description(self) -> str:
        """Which model runs and why, in words."""
        return self.choice.describe() if self.choice is not None else "given cascade"

    @property
    def uses_noise_map(self) -> bool:
        """Whether the model is the noise-map cascade (it gets the per-pixel noise s.d.)."""
        return isinstance(self.cascade, NoiseMapCascade)

    def gammas(self) -> torch.Tensor:
        """γ of every step (the noise-map cascade: at the run's effective noise level)."""
        if self.uses_noise_map:
            return self.cascade.gammas_at(self.noise_level)[:, 0].detach()
        return self.cascade.gammas.detach()

    @property
    def iterations(self) -> int:
        return self.options.iterations

    # ------------------------------------------------------------------ running

    def layout(self, image) -> PlaneLayout:
        """The plane layout of ``image`` (this run's RGB choice), checked against the kernel."""
        layout = PlaneLayout.of(image.shape, self.options.rgb)
        kh, kw = self.kernel.shape
        if kh > layout.plane_shape[0] or kw > layout.plane_shape[1]:
            raise ValueError(f"the kernel ({kh}×{kw}) is larger than the image planes {layout.plane_shape}")
        return layout

    def _tile_size(self, plane_shape) -> int:
        if self.options.tile_size is not None:
            return self.options.tile_size
        hp, wp = padding_geometry(plane_shape, self.kernel.shape).shape
        return auto_tile_size(self.device, hp * wp)

    def _spectra_on(self, device: torch.device, plane_shape):
        """Kernel spectra for ``plane_shape`` on ``device``, computed once per run."""
        key = (str(device), tuple(plane_shape))
        if key not in self._spectra:
            kt = torch.from_numpy(np.ascontiguousarray(self.kernel)).to(device)
            self._spectra[key] = kernel_spectra(kt, tuple(plane_shape))
        return self._spectra[key]

    def _batches(self, planes: np.ndarray, keep_gradients: bool):
        """(planes slice, stage generator) for every batch of planes, all through ``Cascade.run``."""
        plane_shape = tuple(planes.shape[-2:])
        tile = self._tile_size(plane_shape)
        tiled = needs_tiling(plane_shape, self.kernel.shape, tile)
        geometry = padding_geometry(plane_shape, self.kernel.shape)
        region = self.cascade.prior_region(geometry)
        if tiled:
            fdev = fft_device(plane_shape, self.kernel.shape, self.device, tile)
            denoise = TiledNetworks(tile, self.device, True, self.autocast_dtype, region=region)
            slices = [slice(i, i + 1) for i in range(len(planes))]
        else:
            fdev = self.device
            denoise = WholeGrid(True, self.autocast_dtype)
            hp, wp = geometry.shape
            per = max(1, MAX_BATCH_PIXELS // (hp * wp))
            slices = [slice(i, min(i + per, len(planes))) for i in range(0, len(planes), per)]
        spectra = self._spectra_on(fdev, plane_shape)

        def tiles_with_map(map_padded: torch.Tensor) -> TiledNetworks:
            return TiledNetworks(tile, self.device, True, self.autocast_dtype, (map_padded,), network_condition,
                                 region)

        def stages(sl: slice) -> Iterator[StageTensors]:
            y = torch.from_numpy(np.ascontiguousarray(planes[sl])).to(fdev)
            problem = prepare_problem(y, spectra=spectra)
            del y
            if not self.uses_noise_map:
                yield from self.cascade.run(iterations=self.iterations, problem=problem, denoise=denoise,
                                            keep_gradients=keep_gradients)
                return
            sd = self.noise.sd_planes(planes, sl)
            sd = sd if isinstance(sd, float) else tensor_on(sd, fdev)
            yield from self.cascade.run(noise_map=sd, iterations=self.iterations, problem=problem,
                                        autocast_dtype=self.autocast_dtype, keep_gradients=keep_gradients,
                                        denoise=tiles_with_map if tiled else None)

        return [(sl, stages(sl)) for sl in slices]

    def run_planes(self, planes: np.ndarray, progress: Callable[[Progress], None] | None = None) -> np.ndarray:
        """Final result for planes ``(N, Y, X)`` on the [0, 1] scale (float32, same shape).

        Batches of planes run through every stage one after the other (memory
        bounded by :data:`MAX_BATCH_PIXELS`, or one plane at a time in tiles).
        """
        out = np.empty(planes.shape, np.float32)
        n, steps = len(planes), self.iterations + 1
        done = 0
        with torch.inference_mode():
            for sl, gen in self._batches(planes, keep_gradients=False):
                last = None
                for last in gen:
                    done += sl.stop - sl.start
                    if progress is not None:
                        progress(Progress(done, n * steps))
                out[sl] = last.image.float().cpu().numpy()
        return out

    def _check_values(self, image) -> np.ndarray:
        a = np.asarray(image)
        check_image(a)
        check_finite(a)
        return a

    def deblur(self, image, progress: Callable[[Progress], None] | None = None) -> np.ndarray:
        """The final deblurred image, float32, same shape and units as ``image`` (a numpy array-like)."""
        a = self._check_values(image)
        layout = self.layout(a)
        planes = self.scaling.forward(layout.to_planes(a))  # a new array: the input is never touched
        return layout.from_planes(self.scaling.inverse(self.run_planes(planes, progress)), a)

    def steps(self, image) -> Iterator[Progress | StageResult]:
        """Every step of the cascade on ``image``: :class:`Progress` items, then a :class:`StageResult` per step.

        All batches of planes advance one stage at a time, so a
        :class:`StageResult` covers the whole image; closing the generator
        stops the work after the batch in progress.
        """
        a = self._check_values(image)
        layout = self.layout(a)
        planes = self.scaling.forward(layout.to_planes(a))
        total = len(planes) * (self.iterations + 1)
        gammas = self.gammas()
        model = self.model_description
        scale = np.float32(self.scaling.scale)
        done = 0

        def to_layout(imgs, zx, zy, stage) -> StageResult:
            image_out = layout.from_planes(self.scaling.inverse(imgs), a)
            gx = None if zx is None else layout.from_planes(zx * scale)
            gy = None if zy is None else layout.from_planes(zy * scale)
            if layout.rgb and layout.shape[-1] == 4 and gx is not None:
                gx, gy = gx[..., :3], gy[..., :3]
            return StageResult(stage, image_out, gx, gy, self.iterations, float(gammas[stage]), self.noise_level,
                               noise=self.noise, model=model)

        # inference mode is entered around each step's work, never held across a yield: a generator
        # suspended inside `with torch.inference_mode()` would leave the caller's thread in inference mode
        with torch.inference_mode():
            batches = self._batches(planes, keep_gradients=True)
        for stage in range(self.iterations + 1):
            imgs = np.empty(planes.shape, np.float32)
            zx = None if stage == 0 else np.empty(planes.shape, np.float32)
            zy = None if stage == 0 else np.empty(planes.shape, np.float32)
            for sl, gen in batches:
                with torch.inference_mode():
                    st = next(gen)
                    crop = st.problem.geometry.crop
                    imgs[sl] = st.image.float().cpu().numpy()
                    if stage:
                        zx[sl] = crop(st.gradients[0]).float().cpu().numpy()
                        zy[sl] = crop(st.gradients[1]).float().cpu().numpy()
                    del st
                done += sl.stop - sl.start
                yield Progress(done, total)
            yield to_layout(imgs, zx, zy, stage)

    def stages(self, image, progress: Callable[[Progress], None] | None = None) -> Iterator[StageResult]:
        """:meth:`steps` without the progress items (reported to ``progress`` when given)."""
        for item in self.steps(image):
            if isinstance(item, StageResult):
                yield item
            elif progress is not None:
                progress(item)
