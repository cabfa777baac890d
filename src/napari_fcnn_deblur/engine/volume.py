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
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..core.volumetric import VolumeCascade
from ..data.psf3d import resample_psf
from ..io.models import load_cached, volume_model_path
from .devices import check_precision, resolve_device
from .intensity import IntensityScaling, intensity_scaling
from .kernels import prepare_kernel
from .layout import PlaneLayout
from .noise import NoiseLevel
from .run import Progress, StageResult, check_finite, check_image, decide_noise, is_auto, model_on

logger = logging.getLogger(__name__)


def check_spacing(spacing, what: str) -> tuple[float, float, float] | None:
    """A voxel size (dz, dy, dx) of positive finite numbers, or None."""
    if spacing is None:
        return None
    try:
        vals = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be three voxel sizes (dz, dy, dx), got {spacing!r}") from None
    if len(vals) != 3 or not all(math.isfinite(v) and v > 0 for v in vals):
        raise ValueError(f"{what} must be three positive voxel sizes (dz, dy, dx), got {spacing!r}")
    return vals


def volume_kernel(kernel, volume_shape: tuple[int, int, int], spacing=None, psf_spacing=None) -> np.ndarray:
    """The 3D PSF on the image's voxel grid: validated, resampled when its voxel size differs, odd, sum 1.

    Raises ``ValueError`` for a PSF that is not 3D, a PSF spacing without the image's spacing, or a
    PSF larger than the volume.
    """
    spacing = check_spacing(spacing, "spacing")
    psf_spacing = check_spacing(psf_spacing, "psf_spacing")
    k = np.asarray(kernel)
    if k.ndim != 3:
        raise ValueError(f"a volume's PSF must be 3D (Z, Y, X), got shape {k.shape}")
    if psf_spacing is not None:
        if spacing is None:
            raise ValueError("psf_spacing was given but not the image's spacing (dz, dy, dx): the PSF cannot be "
                             "resampled to the image's voxel grid")
        if not np.allclose(psf_spacing, spacing, rtol=1e-3):
            k = prepare_kernel(k, None, ndim=3)  # validated (and odd) before resampling
            k = resample_psf(k, psf_spacing, spacing)
            logger.info("PSF resampled from voxels %s to %s: shape %s", psf_spacing, spacing, k.shape)
    return prepare_kernel(k, volume_shape, ndim=3)


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


def resolve_volume_model(model) -> VolumeCascade:
    """``model`` for volumes: None (the shipped volume cascade), a file, or a VolumeCascade."""
    if model is None:
        path = volume_model_path()
        if not path.is_file():
            raise FileNotFoundError(f"the volume cascade is not installed ({path}); pass model=PATH")
        cascade = load_cached(path)
    elif isinstance(model, VolumeCascade):
        cascade = model
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
                intensity_range=None, precision: str = "auto", spacing=None, psf_spacing=None) -> VolumeRun:
        """Validate everything and decide intensity map, noise, model, device and precision.

        ``image``: ``(Z, Y, X)`` or ``(..., Z, Y, X)``; ``kernel``: the 3D PSF ``(kz, ky, kx)``.
        ``noise_level``: ``"auto"`` (default: a Poisson–Gaussian noise level function estimated
        from the stack), a number (s.d. on the [0, 1] scale) or a per-voxel s.d. map of the
        image's shape.  Other arguments as for :func:`napari_fcnn_deblur.deblur`.
        """
        check_image(image)
        if len(image.shape) < 3:
            raise ValueError(f"a 3D PSF needs a volume (Z, Y, X) or a stack of volumes; the image is 2D "
                             f"{tuple(image.shape)}: pass a 2D kernel (e.g. the PSF's focal plane)")
        k = volume_kernel(kernel, tuple(image.shape[-3:]), spacing, psf_spacing)
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
        opts = VolumeOptions(k, noise, it, scaling, task_device, task_model, str(precision))
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

    def _volume_stages(self, vol: np.ndarray, index: int, n_volumes: int, keep_gradients: bool):
        """One volume (Z, Y, X) through the cascade: (stage, image, [g_x, g_y, g_z] or None, γ), image units."""
        sc = self.options.scaling
        y = sc.forward(vol)
        sd = torch.from_numpy(np.ascontiguousarray(self._sd(y, index, n_volumes)))[None].to(self.device)
        yt = torch.from_numpy(np.ascontiguousarray(y))[None].to(self.device)
        kt = torch.from_numpy(self.options.kernel).to(self.device)
        gammas = self.cascade.gammas_at(torch.sqrt(sd.square().mean()))[:, 0].tolist()
        for st in self.cascade.run(yt, kt, sd, iterations=self.iterations, autocast_dtype=self.autocast_dtype,
                                   keep_gradients=keep_gradients):
            img = sc.inverse(st.image[0].float().cpu().numpy())
            grads = None
            if st.gradients is not None:
                crop = st.problem.geometry.crop
                grads = [crop(g)[0].float().cpu().numpy() * np.float32(sc.scale) for g in st.gradients]
            yield st.stage, img, grads, gammas[st.stage]

    def steps(self, image, progress: Callable[[Progress], None] | None = None,
              keep_gradients: bool = False) -> Iterator[StageResult]:
        """Yield a :class:`~.run.StageResult` per step (initial deconvolution, then each stage) for the whole
        image; a stack of several volumes is run volume by volume and yielded when all are done."""
        shape = tuple(image.shape)
        lead = shape[:-3]
        n = math.prod(lead)
        total = n * (self.iterations + 1)
        with torch.inference_mode():
            if n == 1:
                vol = np.asarray(image[...]).reshape(shape[-3:])
                for done, (s, img, grads, g) in enumerate(self._volume_stages(vol, 0, 1, keep_gradients), start=1):
                    if progress is not None:
                        progress(Progress(done, total))
                    yield self._result(s, img.reshape(shape), grads, g, shape)
                return
            flat = np.asarray(image[...]).reshape((n,) + shape[-3:])
            outs = [np.empty((n,) + shape[-3:], np.float32) for _ in range(self.iterations + 1)]
            gouts = [None] * (self.iterations + 1)
            done = 0
            for v in range(n):
                for s, img, grads, g in self._volume_stages(flat[v], v, n, keep_gradients):
                    outs[s][v] = img
                    if grads is not None:
                        if gouts[s] is None:
                            gouts[s] = [np.empty((n,) + shape[-3:], np.float32) for _ in grads]
                        for dst, src in zip(gouts[s], grads):
                            dst[v] = src
                    done += 1
                    if progress is not None:
                        progress(Progress(done, total))
            for s in range(self.iterations + 1):
                grads = None if gouts[s] is None else [a.reshape(shape) for a in gouts[s]]
                yield self._result(s, outs[s].reshape(shape), grads, g, shape)

    def _result(self, stage: int, img: np.ndarray, grads, gamma: float, shape) -> StageResult:
        gx, gy, gz = (None, None, None) if grads is None else (grads[0].reshape(shape), grads[1].reshape(shape),
                                                               grads[2].reshape(shape))
        return StageResult(stage, img, gx, gy, self.iterations, gamma, self.noise.sigma, noise=self.noise,
                           model="volume cascade", grad_z=gz)

    def deblur(self, image, progress: Callable[[Progress], None] | None = None) -> np.ndarray:
        """The final volume(s), float32, the input's shape and units."""
        last = None
        for last in self.steps(image, progress):
            pass
        return last.image
