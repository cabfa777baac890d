"""Public entry points: :func:`deblur` and :func:`deblur_stages` (numpy in → numpy out).

Both are thin wrappers around the one run path, :class:`~.engine.run.DeblurRun`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .engine.channels import channel_kernels, channel_noise_levels, channel_view, check_channel_axis
from .engine.devices import PRECISION_ENV, PRECISIONS, check_precision
from .engine.kernels import kernel_on_grid
from .engine.noise import NoiseLevel
from .engine.run import DeblurRun, ModelLike, NoiseLike, Progress, StageResult
from .engine.volume import VolumeRun

__all__ = ["deblur", "deblur_stages", "DeblurRun", "VolumeRun", "StageResult", "Progress", "NoiseLevel",
           "PRECISIONS", "PRECISION_ENV", "check_precision"]


def is_dask(image) -> bool:
    """A dask array (checked without importing dask)."""
    return type(image).__module__.split(".")[0] == "dask" and hasattr(image, "dask") and hasattr(image, "chunks")


def is_volume_kernel(kernel) -> bool:
    """A 3D PSF (kz > 1 planes): the image is deconvolved volumetrically (:mod:`.engine.volume`)."""
    import numpy as np

    shape = np.shape(kernel)
    return len(shape) == 3 and shape[0] > 1


def default_noise_level(kernel):
    """``noise_level=None`` for one image and its ``kernel``: ``"auto"`` for a 3D PSF (camera z-stacks, the
    CLI's and the widget's default too), 0.01 (1 % Gaussian noise) for a 2D kernel.  With ``channel_axis`` each
    channel's own kernel decides (after :func:`~.engine.channels.channel_kernels` split them)."""
    return "auto" if is_volume_kernel(kernel) else 0.01


def _channel_levels(noise_level, kernels: list, shape, axis: int) -> list:
    """Each channel's noise level: its own default (:func:`default_noise_level` of its kernel) for None."""
    if noise_level is None:
        return [default_noise_level(k) for k in kernels]
    return channel_noise_levels(noise_level, len(kernels), shape, axis)


def _planar_kernel(kernel, spacing, psf_spacing):
    """A 2D kernel resampled from ``psf_spacing`` to ``spacing`` when both are given (pixel sizes (dy, dx))."""
    if spacing is None and psf_spacing is None:
        return kernel
    return kernel_on_grid(kernel, None, 2, None if spacing is None else tuple(spacing)[-2:],
                          None if psf_spacing is None else tuple(psf_spacing)[-2:])


def deblur(
    image,
    kernel,
    noise_level: NoiseLike | None = None,
    iterations: int | None = None,
    device: "str | torch.device" = "auto",
    model: ModelLike = None,
    tile_size: int | None = None,
    intensity_range: tuple[float, float] | None = None,
    precision: str = "auto",
    channel_axis: int | None = None,
    spacing: tuple[float, ...] | None = None,
    psf_spacing: tuple[float, ...] | None = None,
):
    """Remove a known blur from an image with the learned FCNN cascade.

    Parameters
    ----------
    image : array, shape (Y, X), (Y, X, 3|4) RGB(A), (..., Y, X) stack, or (..., Z, Y, X) volumes
        Blurry image, any real dtype.  RGB is deblurred per channel (alpha
        passes through); stacks plane by plane with the same 2D kernel; with a
        3D kernel the last three axes are a volume (z-stack), deconvolved in 3D
        (leading axes: several volumes, each on its own).
        Intensities are mapped to [0, 1] and back (see :mod:`.engine.intensity`).
    kernel : array, shape (kh, kw), or (kz, ky, kx) for volumes
        Blur kernel / PSF, at most the image size.  Normalised to sum 1 and
        padded to odd sizes (see :func:`~.engine.kernels.prepare_kernel`).  A 3D
        PSF (kz > 1) selects volumetric deconvolution with the shipped volume
        cascade (:mod:`.engine.volume`; ``model`` then names a volume cascade);
        its noise is estimated by default (``noise_level="auto"``).
    noise_level : None, float, "auto" or array
        The noise, always on the [0, 1] intensity scale the image is mapped to
        (see ``intensity_range``):

        - None (default): "auto" with a 3D PSF, 0.01 with a 2D kernel
          (:func:`default_noise_level`);

        - a number: Gaussian noise s.d. (0.01 = 1 %);
        - "auto": estimated from the image (:func:`~.engine.noise.estimate_noise`):
          a scalar σ, or a Poisson–Gaussian noise level function σ²(x) = a·x + b
          when the noise clearly grows with brightness (photon noise); reported
          with ``logging.info`` and in every :class:`StageResult`;
        - an array: the noise s.d. of every pixel, with the image's shape or one
          plane's (Y, X) (the same for every plane); numpy images only.

        The noise-map cascade receives the exact level (for Poisson–Gaussian
        noise σ(x) = sqrt(max(a·x + b, 0)) on the blurry image smoothed by a 5×5
        box); a per-level cascade the effective level (the RMS s.d.) and is the
        one nearest to it.
    iterations : int or None
        FCNN stages to run, 0 (initial deconvolution only) to the model's count;
        None (default) runs all of them.
    device : "auto", "cpu", "cuda", "cuda:N" or "mps"
        "auto" picks CUDA, then MPS, then CPU.
    model : None, "noisemap", "per-level", path or Cascade
        None (default): the noise-map cascade, except for plain Gaussian noise
        at levels where the nearest per-level cascade validates better in the
        table measured for the shipped noise-map cascade (``docs/models.md``;
        :func:`~.io.models.select_model`).  "noisemap": the noise-map cascade,
        one model for every level and for signal-dependent noise.  "per-level":
        the shipped per-level cascade (1 %, 3 %, 5 %) nearest to the effective
        noise level, the paper's setting.  A cascade file (``.safetensors``,
        either kind) or object.  Each worker of a cluster loads the chosen file.
    tile_size : int or None
        Side (pixels) of the tiles the networks run in for planes larger
        than one tile (see :mod:`.engine.tiles`; same result up to float round-off);
        None = chosen from the free memory of ``device``.  Planes smaller
        than a tile run whole, as one batch.  Volumes: the side of the z-whole
        X/Y tiles, and √ of the most pixels per network call (:mod:`.engine.volume`).
    intensity_range : (low, high) or None
        Intensities (in the image's units) mapped to 0 and 1 for the
        networks; None applies the automatic rule of :mod:`.engine.intensity`.
        Give it to process parts of one dataset (planes, crops) consistently.
    precision : "auto", "fp32" or "bf16"
        Arithmetic of the networks (the FFT steps are always fp32).  "bf16"
        (autocast) is 2–3× faster on CPUs with native bf16 (AVX-512 BF16 /
        AMX) and on recent GPUs; it differs from fp32 by a few 1e-3 per pixel
        on the [0, 1] scale and by < 0.01 dB in mean PSNR on the validation
        benchmark (``docs/benchmarks.md``).  "auto" = bf16 where the device has
        it natively, else fp32 (see :func:`~.engine.devices.check_precision`).
    channel_axis : int or None
        The axis of ``image`` that holds channels (fluorophores), deblurred as separate images:
        each with its own intensity map and noise estimate, and with its own kernel when
        ``kernel`` is a list of C kernels or, for 2D channel images, a (C, kh, kw) array
        (``noise_level`` may also be a list of C values).  None applies the default rule
        ((Y, X, 3|4) is RGB(A), see :mod:`.engine.layout`).  Volumes ((C, Z, Y, X), (Z, C, Y, X)):
        one 3D PSF for every channel, or a list of C PSFs (one per emission wavelength); a 3D
        array with as many planes as there are channels is ambiguous there and must be given as a
        list (:func:`~.engine.channels.channel_kernels`).
    spacing, psf_spacing : sequences of float or None
        Pixel/voxel sizes ((dz,) dy, dx, one unit) of the image and of the PSF: a PSF recorded
        at another size is resampled to the image's grid (:func:`~.engine.kernels.kernel_on_grid`).
        Both None (default): the PSF is taken on the image's grid.

    Returns
    -------
    float32 array, same shape as ``image``, in the input's intensity units.
    A dask array in gives a lazy dask array out (one task per plane, see
    :mod:`.engine.lazy`; with a 3D PSF one task per volume, its networks in
    memory-bounded tiles).

    Raises
    ------
    ValueError
        Bad image, kernel, noise level (a noise map of the wrong shape, negative
        or non-finite values), iterations or device.
    ModelNotFoundError
        The shipped model asked for (or chosen by the default rule) is not installed.

    References
    ----------
    .. [1] J. Zhang et al., "Learning Fully Convolutional Networks for
           Iterative Non-blind Deconvolution", CVPR 2017.
    """
    if not is_dask(image) and not hasattr(image, "shape"):
        import numpy as np

        image = np.asarray(image)
    if channel_axis is not None:
        axis = check_channel_axis(channel_axis, len(image.shape))
        n = image.shape[axis]
        kernels = channel_kernels(kernel, n, len(image.shape) - 1)
        levels = _channel_levels(noise_level, kernels, image.shape, axis)
        outs = [deblur(channel_view(image, axis, c), kernels[c], levels[c], iterations, device, model, tile_size,
                       intensity_range, precision, spacing=spacing, psf_spacing=psf_spacing) for c in range(n)]
        if is_dask(image):
            import dask.array as da

            return da.stack(outs, axis=axis)
        import numpy as np

        return np.stack(outs, axis=axis)
    if noise_level is None:
        noise_level = default_noise_level(kernel)
    if is_volume_kernel(kernel):
        vrun = VolumeRun.prepare(image, kernel, noise_level, iterations, device, model, intensity_range, precision,
                                 spacing, psf_spacing, tile_size)
        if is_dask(image):  # one task per volume, its networks in memory-bounded tiles
            lead = len(image.shape) - 3
            whole = image.rechunk({**{a: 1 for a in range(lead)}, lead: -1, lead + 1: -1, lead + 2: -1})
            return whole.map_blocks(lambda b: vrun.deblur(b), dtype="float32")
        return vrun.deblur(image)
    kernel = _planar_kernel(kernel, spacing, psf_spacing)
    run = DeblurRun.prepare(image, kernel, noise_level, iterations, device, model, tile_size, intensity_range,
                            precision)
    if is_dask(image):
        from .engine.lazy import deblur_lazy

        return deblur_lazy(run, image)
    return run.deblur(image)


def deblur_stages(
    image,
    kernel,
    noise_level: NoiseLike | None = None,
    iterations: int | None = None,
    device: "str | torch.device" = "auto",
    model: ModelLike = None,
    intensity_range: tuple[float, float] | None = None,
    precision: str = "auto",
    channel_axis: int | None = None,
    spacing: tuple[float, ...] | None = None,
    psf_spacing: tuple[float, ...] | None = None,
) -> Iterator[StageResult]:
    """Like :func:`deblur`, but yield a :class:`StageResult` after every step.

    The first item (``stage`` 0) is the initial deconvolution; then one item
    per FCNN stage.  Closing the generator (or breaking out of the loop) stops
    the computation before the next stage.  Arguments are validated when the
    function is called (a ``ValueError`` is raised before any work is done).
    ``noise_level="auto"`` estimates the noise; every :class:`StageResult`
    carries the noise used (``noise``, ``noise_level``) and the model that ran (``model``).  Planes larger than one tile run in tiles, as in :func:`deblur`.
    With ``channel_axis`` (see :func:`deblur`) every item covers all channels; its ``gamma`` and
    ``noise_level`` are channel 0's and ``per_channel`` holds each channel's own item.
    With a 3D PSF the items are volumes (``grad_z`` too); ``keep_gradients`` is on for them.
    """
    import numpy as np

    a = np.asarray(image)
    if channel_axis is not None:
        axis = check_channel_axis(channel_axis, a.ndim)
        n = a.shape[axis]
        kernels = channel_kernels(kernel, n, a.ndim - 1)
        levels = _channel_levels(noise_level, kernels, a.shape, axis)
        runs = [_stage_run(channel_view(a, axis, c), kernels[c], levels[c], iterations, device, model,
                           intensity_range, precision, spacing, psf_spacing) for c in range(n)]
        if len({r.iterations for r in runs}) != 1:
            raise ValueError(f"the channels' models have different stage counts {[r.iterations for r in runs]}")
        return _stacked_stages([_stages(r, channel_view(a, axis, c)) for c, r in enumerate(runs)], axis)
    if noise_level is None:
        noise_level = default_noise_level(kernel)
    run = _stage_run(a, kernel, noise_level, iterations, device, model, intensity_range, precision, spacing, psf_spacing)
    return _stages(run, a)


def _stage_run(image, kernel, noise_level, iterations, device, model, intensity_range, precision, spacing,
               psf_spacing) -> "DeblurRun | VolumeRun":
    if is_volume_kernel(kernel):
        return VolumeRun.prepare(image, kernel, noise_level, iterations, device, model, intensity_range, precision,
                                 spacing, psf_spacing)
    return DeblurRun.prepare(image, _planar_kernel(kernel, spacing, psf_spacing), noise_level, iterations, device,
                             model, None, intensity_range, precision)


def _stages(run: "DeblurRun | VolumeRun", image) -> Iterator[StageResult]:
    return run.stages(image)


def _stacked_stages(generators: list[Iterator[StageResult]], axis: int) -> Iterator[StageResult]:
    """Advance every channel's stages together; each item stacks the channels on ``axis``."""
    import numpy as np

    def stack(arrays):
        return None if arrays[0] is None else np.stack(arrays, axis=axis)

    for items in zip(*generators):
        first = items[0]
        yield StageResult(first.stage, stack([i.image for i in items]), stack([i.grad_x for i in items]),
                          stack([i.grad_y for i in items]), first.iterations, first.gamma, first.noise_level,
                          per_channel=list(items), noise=first.noise, model=first.model,
                          grad_z=stack([i.grad_z for i in items]))
