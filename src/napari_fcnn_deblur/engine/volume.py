"""Volumetric runs: z-stacks ``(..., Z, Y, X)`` deconvolved with a 3D PSF by the volume cascade.

:class:`VolumeRun` is the volumetric counterpart of :class:`~.run.DeblurRun`, with the same
boundary rules (:func:`~.run.check_image`, :func:`~.run.check_finite`, the one intensity rule of
:mod:`.intensity`, the noise of :func:`~.run.decide_noise` — a number, ``"auto"`` (a
Poisson–Gaussian noise level function estimated from the stack) or a per-voxel s.d. map), and the
same results (:class:`~.run.StageResult`, in the input's units; ``grad_z`` holds the z gradients).
The stages are :meth:`VolumeCascade.run <napari_fcnn_deblur.core.volumetric.VolumeCascade.run>`,
i.e. the one stage loop on the padded 3D grid.

The PSF is used on the image's voxel grid.  ``spacing`` (the image's voxel size, (dz, dy, dx)) and
``psf_spacing`` (the PSF's) let the run resample a PSF recorded or computed at another voxel size
(:func:`~napari_fcnn_deblur.data.psf3d.resample_psf`); a PSF spacing without the image's is refused.
Leading axes (time points, channels given as separate volumes) are a batch: each volume runs
on its own.

Memory: the deconvolutions of eq. 6 are global (the whole padded volume's spectra, as in 2D:
:mod:`.tiles` says why tiled deconvolutions are inexact), the networks run through
:class:`~.tiles.TiledNetworks` — z-whole X/Y tiles of at most ``tile_size`` pixels with an exact
halo, and within a tile slabs of XY planes (lateral network) and of YZ slices (axial network), at
most :attr:`~.tiles.TiledNetworks.call_pixels` pixels per network call and direction — so no
volume-sized gradient or network-input array is made.  Peak memory is about
:data:`~.tiles.VOLUME_BYTES_PER_VOXEL` per padded voxel plus one network call's work;
``docs/engine.md`` (Volumes) has the measured numbers.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..core.conditioned import network_condition
from ..core.solver import kernel_spectra, prepare_problem
from ..core.spectral import padding_geometry
from ..core.volumetric import VolumeCascade
from ..io.models import MODEL_NAMES, load_cached, volume_model_path
from .devices import check_precision, resolve_device, tensor_on
from .intensity import IntensityScaling, intensity_scaling
from .kernels import kernel_on_grid
from .layout import PlaneLayout
from .noise import NoiseLevel
from .run import Progress, StageResult, check_finite, check_image, decide_noise, is_auto, model_on
from .tiles import VOLUME_BYTES_PER_VOXEL, TiledNetworks, auto_tile_size, check_tile_size, fft_device

logger = logging.getLogger(__name__)


def volume_kernel(kernel, volume_shape: tuple[int, int, int], spacing=None, psf_spacing=None) -> np.ndarray:
    """The 3D PSF on the image's voxel grid (:func:`~.kernels.kernel_on_grid` with three axes)."""
    k = np.asarray(kernel)
    if k.ndim != 3:
        raise ValueError(f"a volume's PSF must be 3D (Z, Y, X), got shape {k.shape}")
    return kernel_on_grid(k, volume_shape, 3, spacing, psf_spacing)


@dataclass(frozen=True)
class VolumeOptions:
    """The decided, picklable description of a volumetric run."""

    kernel: np.ndarray
    noise: NoiseLevel
    iterations: int
    scaling: IntensityScaling
    device: str = "auto"
    model: object = None
    precision: str = "auto"
    tile_size: int | None = None


def resolve_volume_model(model) -> VolumeCascade:
    """``model`` for volumes: None (the shipped volume cascade), a file, or a VolumeCascade."""
    if model is None:
        path = volume_model_path()
        if not path.is_file():
            raise FileNotFoundError(f"the volume cascade is not installed ({path}); pass model=PATH")
        cascade = load_cached(path)
    elif isinstance(model, VolumeCascade):
        cascade = model
    elif isinstance(model, str) and model.strip().lower() in MODEL_NAMES:
        raise ValueError(f"model={model!r} names 2D cascades; a 3D PSF needs a volume cascade (model=None for the "
                         "shipped one, or a volume cascade file)")
    elif isinstance(model, (str, os.PathLike)):
        cascade = load_cached(model)
    else:
        raise ValueError(f"a volume needs a volume cascade (None, a file or a VolumeCascade), got {type(model).__name__}")
    if not isinstance(cascade, VolumeCascade):
        raise ValueError(f"model {model!r} is a 2D cascade; a 3D PSF needs a volume cascade (model=None for the "
                         "shipped one)")
    return cascade


@dataclass
class VolumeRun:
    """A validated, prepared volumetric run (make it with :meth:`prepare`)."""

    options: VolumeOptions
    cascade: VolumeCascade
    device: torch.device
    autocast_dtype: torch.dtype | None = None

    @classmethod
    def prepare(cls, image, kernel, noise_level="auto", iterations: int | None = None, device="auto", model=None,
                intensity_range=None, precision: str = "auto", spacing=None, psf_spacing=None,
                tile_size: int | None = None) -> VolumeRun:
        """Validate everything and decide intensity map, noise, model, device and precision.

        ``image``: ``(Z, Y, X)`` or ``(..., Z, Y, X)``; ``kernel``: the 3D PSF ``(kz, ky, kx)``.
        ``noise_level``: ``"auto"`` (default: a Poisson–Gaussian noise level function estimated
        from the stack), a number (s.d. on the [0, 1] scale) or a per-voxel s.d. map of the
        image's shape.  ``tile_size``: side (pixels) of the z-whole X/Y tiles the networks run in,
        and √ of the most pixels of planes / slices per network call (see :class:`~.tiles.TiledNetworks`;
        None: from the free memory of ``device``, :func:`~.tiles.auto_tile_size`).  Other arguments as for
        :func:`napari_fcnn_deblur.deblur`.
        """
        check_image(image)
        if len(image.shape) < 3:
            raise ValueError(f"a 3D PSF needs a volume (Z, Y, X) or a stack of volumes; the image is 2D "
                             f"{tuple(image.shape)}: pass a 2D kernel (e.g. the PSF's focal plane)")
        k = volume_kernel(kernel, tuple(image.shape[-3:]), spacing, psf_spacing)
        tile_size = check_tile_size(tile_size)
        dev = resolve_device(device)
        autocast_dtype = check_precision(precision, dev)
        if isinstance(image, np.ndarray):
            check_finite(image)
        scaling = intensity_scaling(image) if intensity_range is None else IntensityScaling.from_range(intensity_range)
        layout = PlaneLayout.of(tuple(image.shape), rgb=False)
        if not is_auto(noise_level) and not isinstance(noise_level, (int, float, np.number)):
            sd = np.asarray(noise_level)
            if sd.shape != tuple(image.shape):
                raise ValueError(f"a volume's noise map must have the image's shape {tuple(image.shape)}, got "
                                 f"{sd.shape}")
        noise = decide_noise(noise_level, image, layout, scaling)
        cascade = model_on(resolve_volume_model(model), dev)
        it = cascade.check_iterations(iterations)
        task_device = "auto" if isinstance(device, str) and device.strip().lower() == "auto" else str(dev)
        task_model = os.fspath(model) if isinstance(model, (str, os.PathLike)) else model
        opts = VolumeOptions(k, noise, it, scaling, task_device, task_model, str(precision), tile_size)
        return cls(opts, cascade, dev, autocast_dtype)

    @property
    def iterations(self) -> int:
        return self.options.iterations

    @property
    def noise(self) -> NoiseLevel:
        return self.options.noise

    def _sd(self, y: np.ndarray, index: int, n_volumes: int) -> np.ndarray:
        """The noise s.d. of every voxel of volume ``index`` (``y`` on the [0, 1] scale), (Z, Y, X) float32."""
        noise = self.noise
        if noise.kind == "map":
            m = np.asarray(noise.sd_map, np.float32)  # planes: (1, Y, X) or (n_volumes · Z, Y, X)
            if len(m) == 1:
                return np.broadcast_to(m, y.shape)
            return m.reshape((n_volumes,) + y.shape)[index]
        sd = noise.sd_planes(y)
        return np.full(y.shape, sd, np.float32) if np.ndim(sd) == 0 else np.asarray(sd, np.float32)

    def tile_size(self, volume_shape) -> int:
        """Side of the network tiles for volumes of ``volume_shape`` (the option, or from free memory)."""
        if self.options.tile_size is not None:
            return self.options.tile_size
        grid = padding_geometry(tuple(volume_shape), self.options.kernel.shape).shape
        return auto_tile_size(self.device, math.prod(grid), VOLUME_BYTES_PER_VOXEL)

    def _volume_stages(self, vol: np.ndarray, index: int, n_volumes: int, keep_gradients: bool,
                       every_stage: bool = True):
        """One volume (Z, Y, X) through the cascade: (stage, image, [g_x, g_y, g_z] or None, γ), image units
        (``every_stage`` False: the image of the last stage only, None before).

        The global FFT part runs on ``device`` when the padded volume fits there next to one network
        tile, else on the CPU (:func:`~.tiles.fft_device`); the networks run on ``device`` in tiles.
        """
        sc = self.options.scaling
        shape = tuple(vol.shape)
        tile = self.tile_size(shape)
        fdev = fft_device(shape, self.options.kernel.shape, self.device, tile)
        y = sc.forward(vol)
        sd = tensor_on(self._sd(y, index, n_volumes), fdev)[None]
        gammas = self.cascade.gammas_at(torch.sqrt(sd.square().mean()))[:, 0].tolist()
        spectra = kernel_spectra(torch.from_numpy(self.options.kernel).to(fdev), shape)
        problem = prepare_problem(torch.from_numpy(y)[None].to(fdev), spectra=spectra)
        if not self.cascade.refills:  # only boundary refills read the observed volume again
            problem = replace(problem, observed=None)
        del y, spectra

        region = self.cascade.prior_region(problem.geometry)  # networks only where the cascade uses them

        def tiles(map_padded: torch.Tensor) -> TiledNetworks:
            return TiledNetworks(tile, self.device, True, self.autocast_dtype, (map_padded,), network_condition,
                                 region)

        for st in self.cascade.run(noise_map=sd, problem=problem, iterations=self.iterations,
                                   autocast_dtype=self.autocast_dtype, keep_gradients=keep_gradients,
                                   denoise=tiles):
            img = None
            if every_stage or st.stage == self.iterations:
                img = sc.inverse(st.image[0].float().cpu().numpy())
            grads = None
            if st.gradients is not None:
                crop = st.problem.geometry.crop
                grads = [crop(g)[0].float().cpu().numpy() * np.float32(sc.scale) for g in st.gradients]
            stage = st.stage
            del st  # the stage loop frees this step's padded volume while it computes the next
            yield stage, img, grads, gammas[stage]

    def steps(self, image, keep_gradients: bool = True) -> Iterator[Progress | StageResult]:
        """Every step on ``image``: :class:`~.run.Progress` items (volume-steps) and a
        :class:`~.run.StageResult` per step (initial deconvolution, then each stage) for the whole image.

        One volume yields each stage as soon as it is done; a stack of several volumes runs volume by
        volume and yields the stages when all volumes are done.  Closing the generator stops the work.
        Inference mode is entered around each step, never across a yield.
        """
        return self._steps(image, keep_gradients, every_stage=True)

    def _steps(self, image, keep_gradients: bool, every_stage: bool) -> Iterator[Progress | StageResult]:
        """:meth:`steps`; ``every_stage`` False yields the last stage's result only (what :meth:`deblur`
        needs: the other stages' volumes are never made)."""
        shape = tuple(image.shape)
        n = math.prod(shape[:-3])
        total = n * (self.iterations + 1)
        flat = np.asarray(image[...]).reshape((n,) + shape[-3:])
        outs: list[np.ndarray | None] = [None] * (self.iterations + 1)
        gouts: list[list[np.ndarray] | None] = [None] * (self.iterations + 1)
        gammas = [float("nan")] * (self.iterations + 1)
        done = 0
        for v in range(n):
            gen = self._volume_stages(flat[v], v, n, keep_gradients, every_stage)
            while True:
                with torch.inference_mode():
                    item = next(gen, None)
                if item is None:
                    break
                s, img, grads, g = item
                done += 1
                gammas[s] = g
                yield Progress(done, total)
                if img is None:
                    continue
                if n == 1:
                    yield self._result(s, img, grads, g, shape)
                    continue
                if outs[s] is None:
                    outs[s] = np.empty((n,) + shape[-3:], np.float32)
                outs[s][v] = img
                if grads is not None:
                    if gouts[s] is None:
                        gouts[s] = [np.empty((n,) + shape[-3:], np.float32) for _ in grads]
                    for dst, src in zip(gouts[s], grads):
                        dst[v] = src
        if n > 1:
            for s in range(self.iterations + 1):
                if outs[s] is not None:
                    yield self._result(s, outs[s], gouts[s], gammas[s], shape)

    def stages(self, image, progress: Callable[[Progress], None] | None = None,
               keep_gradients: bool = True) -> Iterator[StageResult]:
        """:meth:`steps` without the progress items (reported to ``progress`` when given)."""
        for item in self.steps(image, keep_gradients):
            if isinstance(item, StageResult):
                yield item
            elif progress is not None:
                progress(item)

    def _result(self, stage: int, img: np.ndarray, grads, gamma: float, shape) -> StageResult:
        gx, gy, gz = (None, None, None) if grads is None else (g.reshape(shape) for g in grads)
        return StageResult(stage, img.reshape(shape), gx, gy, self.iterations, gamma, self.noise.sigma,
                           noise=self.noise, model=self.model_description, grad_z=gz)

    @property
    def model_description(self) -> str:
        src = self.options.model
        return "the shipped volume cascade" if src is None else f"volume cascade {src if isinstance(src, str) else 'given'}"

    def deblur(self, image, progress: Callable[[Progress], None] | None = None) -> np.ndarray:
        """The final volume(s), float32, the input's shape and units."""
        last = None
        for item in self._steps(image, keep_gradients=False, every_stage=False):
            if isinstance(item, StageResult):
                last = item
            elif progress is not None:
                progress(item)
        return last.image
