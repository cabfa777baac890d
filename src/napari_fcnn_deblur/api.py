"""Public entry points: :func:`deblur` and :func:`deblur_stages` (numpy in → numpy out)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .cascade import Cascade
from .devices import resolve_device
from .fft_deconv import deconvolve, image_gradients, kernel_spectra, padding_geometry, prepare_problem
from .gradient_denoiser import denoise_gradients
from .intensity import IntensityScaling, intensity_scaling
from .kernel_checks import prepare_kernel
from .model_io import get_model

logger = logging.getLogger(__name__)

#: Upper bound on padded pixels processed in one batch of planes (bounds memory: ~1 kB per pixel).
MAX_BATCH_PIXELS = 2_000_000

ModelLike = "str | os.PathLike | Cascade | None"


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
        its deconvolution (None for stage 0), in the input's units per pixel.
    iterations : int
        Number of stages this run will produce in total.
    gamma : float
        Data weight γ used by this step's deconvolution.
    noise_level : float
        Noise s.d. (on the [0, 1] scale) the run used to pick its model: the
        given ``noise_level``, or the estimate when it was ``"auto"`` (NaN if unknown).
    """

    stage: int
    image: np.ndarray
    grad_x: np.ndarray | None
    grad_y: np.ndarray | None
    iterations: int
    gamma: float
    noise_level: float = float("nan")


@dataclass
class _Layout:
    """How an input array maps to a batch of 2D planes (N, Y, X) and back."""

    shape: tuple[int, ...]
    rgb: bool

    def to_planes(self, a: np.ndarray) -> np.ndarray:
        if self.rgb:
            a = np.moveaxis(a[..., :3], -1, 0)
        return a.reshape((-1,) + a.shape[-2:])

    def from_planes(self, planes: np.ndarray, original: np.ndarray | None = None) -> np.ndarray:
        if self.rgb:
            out = np.moveaxis(planes.reshape((3,) + self.shape[:2]), 0, -1)
            if self.shape[-1] == 4:  # alpha passes through unchanged
                alpha = np.zeros(self.shape[:2] + (1,), np.float32) if original is None else original[..., 3:4]
                out = np.concatenate([out, alpha.astype(np.float32)], axis=-1)
            return np.ascontiguousarray(out, dtype=np.float32)
        return planes.reshape(self.shape).astype(np.float32, copy=False)


def check_image(image) -> np.ndarray:
    """Validate an image at the boundary; returns it as an ndarray (not copied)."""
    a = np.asarray(image)
    if a.dtype == bool or a.dtype == object or not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise ValueError(f"the image must be a real numeric array (integer or float), got dtype {a.dtype}")
    if a.ndim < 2:
        raise ValueError(f"the image must be at least 2D (Y, X), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"the image is empty (shape {a.shape})")
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
        raise ValueError("the image contains NaN or infinite pixels; replace them (e.g. np.nan_to_num) first")
    return a


def _is_rgb(a: np.ndarray) -> bool:
    return a.ndim == 3 and a.shape[-1] in (3, 4) and a.shape[0] > 4 and a.shape[1] > 4


def _check_iterations(iterations, cascade: Cascade) -> int:
    if iterations is None:  # every trained stage of the model
        return cascade.n_stages
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)):
        raise ValueError(f"iterations must be an integer, got {iterations!r}")
    if not 0 <= iterations <= cascade.n_stages:
        raise ValueError(
            f"iterations must be between 0 and {cascade.n_stages} (the number of trained stages "
            f"of this model), got {iterations}"
        )
    return int(iterations)


def _is_auto(noise_level) -> bool:
    return isinstance(noise_level, str) and noise_level.strip().lower() == "auto"


def _check_noise(noise_level) -> float:
    try:
        nl = float(noise_level)
    except (TypeError, ValueError):
        raise ValueError(
            f"noise_level must be a number (noise s.d. on the [0, 1] scale) or 'auto', got {noise_level!r}"
        ) from None
    if not (np.isfinite(nl) and 0 <= nl <= 0.5):
        raise ValueError(
            f"noise_level must be between 0 and 0.5 (s.d. on the [0, 1] scale, 0.01 = 1 %), got {noise_level!r}"
        )
    return nl


#: Arithmetic of the networks: names accepted by ``precision`` → autocast dtype (None = fp32).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}

#: Environment variable that fixes what ``precision="auto"`` means ("fp32" or "bf16"),
#: e.g. for bit-for-bit reproducible pipelines across machines.
PRECISION_ENV = "NAPARI_FCNN_DEBLUR_PRECISION"


def check_precision(precision, device: torch.device) -> torch.dtype | None:
    """``precision`` ("auto", "fp32" or "bf16") checked against ``device``; returns the autocast dtype.

    "auto" is bf16 where the device computes it natively (:func:`~.devices.has_fast_bf16`), else
    fp32: on the validation benchmark bf16 networks changed the mean PSNR by less than 0.01 dB and
    ran 2–3× faster (``docs/benchmarks.md``).  The environment variable :data:`PRECISION_ENV`
    overrides what "auto" means.
    """
    from .devices import has_fast_bf16

    key = str(precision).strip().lower() if isinstance(precision, str) else precision
    if key == "auto":
        forced = os.environ.get(PRECISION_ENV, "").strip().lower()
        if forced and forced not in PRECISIONS:
            raise ValueError(f"{PRECISION_ENV} must be one of {sorted(PRECISIONS)}, got {forced!r}")
        key = forced or ("bf16" if has_fast_bf16(device) else "fp32")
    if key not in PRECISIONS:
        raise ValueError(f"precision must be 'auto' or one of {sorted(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[key]
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision 'bf16' is not supported by {torch.cuda.get_device_name(device)}; use 'fp32'")
    if dtype is torch.bfloat16 and device.type == "mps":
        raise ValueError("precision 'bf16' is not available on MPS; use 'fp32'")
    return dtype


def _model_on(cascade: Cascade, device: torch.device) -> Cascade:
    p = next(cascade.parameters())
    if p.device == device or (device.type == p.device.type and device.index is None):
        return cascade
    cache = cascade.__dict__.setdefault("_device_copies", {})
    if str(device) not in cache:
        import copy

        clone = copy.deepcopy(cascade)
        clone.__dict__.pop("_device_copies", None)
        cache[str(device)] = clone.to(device).eval()
    return cache[str(device)]


@dataclass
class _Prepared:
    planes: np.ndarray  # (N, Y, X) float32 on [0, 1]
    kernel: np.ndarray
    layout: _Layout
    scaling: IntensityScaling
    cascade: Cascade
    iterations: int
    device: torch.device
    original: np.ndarray
    noise_level: float = float("nan")
    autocast_dtype: torch.dtype | None = None


def resolve_noise_level(image: np.ndarray, noise_level) -> float:
    """``noise_level`` checked, or estimated from ``image`` (logged) when it is ``"auto"``."""
    if _is_auto(noise_level):
        from .noise_estimation import estimate_noise_level

        est = float(np.clip(estimate_noise_level(image), 0.0, 0.5))
        logger.info("estimated noise level: %.4g (%.2f %% of the [0, 1] range)", est, 100 * est)
        return est
    return _check_noise(noise_level)


def _scaling_from_range(intensity_range) -> IntensityScaling:
    try:
        lo, hi = (float(v) for v in intensity_range)
    except (TypeError, ValueError):
        raise ValueError(f"intensity_range must be (low, high), got {intensity_range!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ValueError(f"intensity_range must be two finite values with high > low, got {intensity_range!r}")
    return IntensityScaling(lo, hi - lo)


def _prepare(image, kernel, noise_level, iterations, device, model, intensity_range=None,
             precision: str = "auto") -> _Prepared:
    a = check_image(image)
    rgb = _is_rgb(a)
    plane_shape = a.shape[:2] if rgb else a.shape[-2:]
    k = prepare_kernel(kernel, plane_shape)
    if not _is_auto(noise_level):
        _check_noise(noise_level)  # cheap checks before the estimate
    dev = resolve_device(device)
    autocast_dtype = check_precision(precision, dev)
    nl = resolve_noise_level(a, noise_level)
    cascade = _model_on(get_model(model, nl), dev)
    it = _check_iterations(iterations, cascade)
    layout = _Layout(a.shape, rgb)
    if intensity_range is None:
        scaling = intensity_scaling(a[..., :3] if rgb else a)
    else:
        scaling = _scaling_from_range(intensity_range)
    planes = scaling.forward(layout.to_planes(a))  # a new array: the input is never touched
    return _Prepared(planes, k, layout, scaling, cascade, it, dev, a, nl, autocast_dtype)


def _chunks(n_planes: int, plane_shape, kernel_shape) -> list[slice]:
    g = padding_geometry(plane_shape, kernel_shape)
    per = max(1, MAX_BATCH_PIXELS // (g.shape[0] * g.shape[1]))
    return [slice(i, min(i + per, n_planes)) for i in range(0, n_planes, per)]


def run_planes(
    planes: np.ndarray,
    kernel: np.ndarray,
    cascade: Cascade,
    iterations: int,
    device: torch.device,
    channels_last: bool = True,
    autocast_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Final result of the cascade for planes ``(N, Y, X)`` on [0, 1] (the pure per-plane core).

    Planes are processed in batches bounded by :data:`MAX_BATCH_PIXELS`; all
    stages of a batch stay on ``device``; the kernel's spectra are computed once.
    """
    out = np.empty(planes.shape, np.float32)
    kt = torch.from_numpy(np.ascontiguousarray(kernel)).to(device)
    geom = padding_geometry(planes.shape[-2:], kernel.shape)
    spectra = kernel_spectra(kt, geom.shape)
    with torch.inference_mode():
        for sl in _chunks(len(planes), planes.shape[-2:], kernel.shape):
            y = torch.from_numpy(np.ascontiguousarray(planes[sl])).to(device)
            problem = prepare_problem(y, kt, spectra)
            last = None
            for last in cascade.run(y, kt, iterations, channels_last, autocast_dtype, problem=problem):
                pass
            out[sl] = last.image.float().cpu().numpy()
    return out


def run_planes_auto(
    planes: np.ndarray,
    kernel: np.ndarray,
    cascade: Cascade,
    iterations: int,
    device: torch.device,
    tile_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """:func:`run_planes`, or the tiled engine (:mod:`.tiling`) for planes larger than one tile.

    ``tile_size`` None picks it from the free memory (:func:`.tiling.auto_tile_size`).
    ``progress(n)`` is called after every n finished planes.  ``autocast_dtype``
    (e.g. ``torch.bfloat16``) runs the networks in reduced precision.
    """
    from . import tiling

    tile_size = tiling.check_tile_size(tile_size)
    if tile_size is None:
        hp, wp = padding_geometry(planes.shape[-2:], kernel.shape).shape
        tile_size = tiling.auto_tile_size(device, hp * wp)
    if tiling.needs_tiling(planes.shape[-2:], kernel.shape, tile_size):
        return tiling.run_planes_tiled(planes, kernel, cascade, iterations, device, tile_size, progress,
                                       autocast_dtype)
    if progress is None:
        return run_planes(planes, kernel, cascade, iterations, device, autocast_dtype=autocast_dtype)
    out = np.empty(planes.shape, np.float32)
    for sl in _chunks(len(planes), planes.shape[-2:], kernel.shape):
        out[sl] = run_planes(planes[sl], kernel, cascade, iterations, device, autocast_dtype=autocast_dtype)
        progress(sl.stop - sl.start)
    return out


def deblur(
    image,
    kernel,
    noise_level: "float | str" = 0.01,
    iterations: int | None = None,
    device: "str | torch.device" = "auto",
    model: ModelLike = None,
    tile_size: int | None = None,
    intensity_range: tuple[float, float] | None = None,
    precision: str = "auto",
) -> np.ndarray:
    """Remove a known blur from an image with the learned FCNN cascade.

    Parameters
    ----------
    image : array, shape (Y, X), (Y, X, 3|4) RGB(A), or (..., Y, X) stack
        Blurry image, any real dtype.  RGB is deblurred per channel (alpha
        passes through); stacks plane by plane with the same 2D kernel.
        Intensities are mapped to [0, 1] and back (see :mod:`.intensity`).
    kernel : array, shape (kh, kw)
        Blur kernel / PSF, at most the image size.  Normalised to sum 1 and
        padded to odd sizes (see :func:`~.kernel_checks.prepare_kernel`).
    noise_level : float or "auto"
        Gaussian noise s.d. on the [0, 1] scale (0.01 = 1 %).  Picks the
        shipped model nearest to it (absolute difference; ties → the higher).
        "auto" estimates it (:func:`~.noise_estimation.estimate_noise_level`,
        reported with ``logging.info``).
    iterations : int or None
        FCNN stages to run, 0 (initial deconvolution only) to the model's count;
        None (default) runs all of them.
    device : "auto", "cpu", "cuda", "cuda:N" or "mps"
        "auto" picks CUDA, then MPS, then CPU.
    model : path, Cascade or None
        A cascade file (``.safetensors``) or object; None = shipped model.
        Pass a path when ``image`` is a dask array computed on a cluster.
    tile_size : int or None
        Side (pixels) of the tiles the networks run in for planes larger
        than one tile (see :mod:`.tiling`; same result up to float round-off);
        None = chosen from the free memory of ``device``.  Planes smaller
        than a tile run whole, as one batch.
    intensity_range : (low, high) or None
        Intensities (in the image's units) mapped to 0 and 1 for the
        networks; None applies the automatic rule of :mod:`.intensity`.
        Give it to process parts of one dataset (planes, crops) consistently.
    precision : "auto", "fp32" or "bf16"
        Arithmetic of the networks (the FFT steps are always fp32).  "bf16"
        (autocast) is 2–3× faster on CPUs with native bf16 (AVX-512 BF16 /
        AMX) and on recent GPUs; it differs from fp32 by a few 1e-3 per pixel
        on the [0, 1] scale and by < 0.01 dB in mean PSNR on the validation
        benchmark (``docs/benchmarks.md``).  "auto" = bf16 where the device has
        it natively, else fp32 (see :func:`check_precision`).

    Returns
    -------
    float32 array, same shape as ``image``, in the input's intensity units.
    A dask array in gives a lazy dask array out (one task per plane, see
    :mod:`.lazy`).

    Raises
    ------
    ValueError
        Bad image, kernel, noise level, iterations or device.
    ModelNotFoundError
        No shipped model is installed and ``model`` is None.

    References
    ----------
    .. [1] J. Zhang et al., "Learning Fully Convolutional Networks for
           Iterative Non-blind Deconvolution", CVPR 2017.
    """
    if _is_dask(image):
        from .lazy import deblur_lazy

        return deblur_lazy(image, kernel, noise_level, iterations, device, model, tile_size, intensity_range,
                           precision)
    from .tiling import check_tile_size

    tile_size = check_tile_size(tile_size)  # before any work
    p = _prepare(image, kernel, noise_level, iterations, device, model, intensity_range, precision)
    result = run_planes_auto(p.planes, p.kernel, p.cascade, p.iterations, p.device, tile_size,
                             autocast_dtype=p.autocast_dtype)
    return p.layout.from_planes(p.scaling.inverse(result), p.original)


def _is_dask(image) -> bool:
    """A dask array (checked without importing dask)."""
    return type(image).__module__.split(".")[0] == "dask" and hasattr(image, "dask") and hasattr(image, "chunks")


def deblur_stages(
    image,
    kernel,
    noise_level: "float | str" = 0.01,
    iterations: int | None = None,
    device: "str | torch.device" = "auto",
    model: ModelLike = None,
    intensity_range: tuple[float, float] | None = None,
    precision: str = "auto",
) -> Iterator[StageResult]:
    """Like :func:`deblur`, but yield a :class:`StageResult` after every step.

    The first item (``stage`` 0) is the initial deconvolution; then one item
    per FCNN stage.  Closing the generator (or breaking out of the loop) stops
    the computation before the next stage.  Arguments are validated when the
    function is called (a ``ValueError`` is raised before any work is done).
    ``noise_level="auto"`` estimates the noise; every :class:`StageResult`
    carries the level used.  Planes are never tiled here.
    """
    p = _prepare(image, kernel, noise_level, iterations, device, model, intensity_range, precision)
    return _stage_generator(p)


def _stage_generator(p: _Prepared) -> Iterator[StageResult]:
    dev, cascade = p.device, p.cascade
    kt = torch.from_numpy(np.ascontiguousarray(p.kernel)).to(dev)
    geom = padding_geometry(p.planes.shape[-2:], p.kernel.shape)
    spectra = kernel_spectra(kt, geom.shape)
    chunks = _chunks(len(p.planes), p.planes.shape[-2:], p.kernel.shape)
    gammas = cascade.gammas.detach()
    scale = np.float32(p.scaling.scale)
    states: list[torch.Tensor] = []  # padded latent image per chunk, between stages
    single = len(chunks) == 1

    def finish(stage, imgs, zx, zy):
        image = p.layout.from_planes(p.scaling.inverse(imgs), p.original)
        gx = None if zx is None else p.layout.from_planes(zx * scale)
        gy = None if zy is None else p.layout.from_planes(zy * scale)
        if p.layout.rgb and p.layout.shape[-1] == 4 and gx is not None:
            gx, gy = gx[..., :3], gy[..., :3]
        return StageResult(stage, image, gx, gy, p.iterations, float(gammas[stage]), p.noise_level)

    with torch.inference_mode():
        imgs = np.empty(p.planes.shape, np.float32)
        problems = []
        for sl in chunks:
            y = torch.from_numpy(np.ascontiguousarray(p.planes[sl])).to(dev)
            problem = prepare_problem(y, kt, spectra)
            x = deconvolve(problem, gammas[0])
            imgs[sl] = geom.crop(x).float().cpu().numpy()
            states.append(x if single else x.cpu())
            problems.append(problem if single else None)
        yield finish(0, imgs, None, None)
        for s in range(p.iterations):
            imgs = np.empty(p.planes.shape, np.float32)
            zxs = np.empty(p.planes.shape, np.float32)
            zys = np.empty(p.planes.shape, np.float32)
            for ci, sl in enumerate(chunks):
                problem = problems[ci]
                if problem is None:  # recomputed per chunk: only the padded latent image is kept between stages
                    y = torch.from_numpy(np.ascontiguousarray(p.planes[sl])).to(dev)
                    problem = prepare_problem(y, kt, spectra)
                x = states[ci].to(dev)
                gx, gy = image_gradients(x)
                zx, zy = denoise_gradients(cascade.denoisers[s], gx, gy, autocast_dtype=p.autocast_dtype)
                x = deconvolve(problem, gammas[s + 1], zx, zy)
                imgs[sl] = geom.crop(x).float().cpu().numpy()
                zxs[sl] = geom.crop(zx).float().cpu().numpy()
                zys[sl] = geom.crop(zy).float().cpu().numpy()
                states[ci] = x if single else x.cpu()
            yield finish(s + 1, imgs, zxs, zys)
