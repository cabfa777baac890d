"""Public entry points: :func:`deblur` and :func:`deblur_stages` (numpy in → numpy out).

Both are thin wrappers around the one run path, :class:`~.engine.run.DeblurRun`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .engine.channels import channel_kernels, channel_noise_levels, channel_view, check_channel_axis
from .engine.devices import PRECISION_ENV, PRECISIONS, check_precision
from .engine.run import DeblurRun, ModelLike, Progress, StageResult

__all__ = ["deblur", "deblur_stages", "DeblurRun", "StageResult", "Progress", "PRECISIONS", "PRECISION_ENV",
           "check_precision"]


def is_dask(image) -> bool:
    """A dask array (checked without importing dask)."""
    return type(image).__module__.split(".")[0] == "dask" and hasattr(image, "dask") and hasattr(image, "chunks")


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
    channel_axis: int | None = None,
):
    """Remove a known blur from an image with the learned FCNN cascade.

    Parameters
    ----------
    image : array, shape (Y, X), (Y, X, 3|4) RGB(A), or (..., Y, X) stack
        Blurry image, any real dtype.  RGB is deblurred per channel (alpha
        passes through); stacks plane by plane with the same 2D kernel.
        Intensities are mapped to [0, 1] and back (see :mod:`.engine.intensity`).
    kernel : array, shape (kh, kw)
        Blur kernel / PSF, at most the image size.  Normalised to sum 1 and
        padded to odd sizes (see :func:`~.engine.kernels.prepare_kernel`).
    noise_level : float or "auto"
        Gaussian noise s.d. on the [0, 1] scale (0.01 = 1 %).  Picks the
        shipped model nearest to it (absolute difference; ties → the higher).
        "auto" estimates it (:func:`~.engine.noise.estimate_noise_level`,
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
        than one tile (see :mod:`.engine.tiles`; same result up to float round-off);
        None = chosen from the free memory of ``device``.  Planes smaller
        than a tile run whole, as one batch.
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
        ``kernel`` is a list of C kernels or a (C, kh, kw) array (``noise_level`` may also be a
        list of C values).  None applies the default rule ((Y, X, 3|4) is RGB(A), see
        :mod:`.engine.layout`).

    Returns
    -------
    float32 array, same shape as ``image``, in the input's intensity units.
    A dask array in gives a lazy dask array out (one task per plane, see
    :mod:`.engine.lazy`).

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
    if not is_dask(image) and not hasattr(image, "shape"):
        import numpy as np

        image = np.asarray(image)
    if channel_axis is not None:
        axis = check_channel_axis(channel_axis, len(image.shape))
        n = image.shape[axis]
        kernels, levels = channel_kernels(kernel, n), channel_noise_levels(noise_level, n)
        outs = [deblur(channel_view(image, axis, c), kernels[c], levels[c], iterations, device, model, tile_size,
                       intensity_range, precision) for c in range(n)]
        if is_dask(image):
            import dask.array as da

            return da.stack(outs, axis=axis)
        import numpy as np

        return np.stack(outs, axis=axis)
    run = DeblurRun.prepare(image, kernel, noise_level, iterations, device, model, tile_size, intensity_range,
                            precision)
    if is_dask(image):
        from .engine.lazy import deblur_lazy

        return deblur_lazy(run, image)
    return run.deblur(image)


def deblur_stages(
    image,
    kernel,
    noise_level: "float | str" = 0.01,
    iterations: int | None = None,
    device: "str | torch.device" = "auto",
    model: ModelLike = None,
    intensity_range: tuple[float, float] | None = None,
    precision: str = "auto",
    channel_axis: int | None = None,
) -> Iterator[StageResult]:
    """Like :func:`deblur`, but yield a :class:`StageResult` after every step.

    The first item (``stage`` 0) is the initial deconvolution; then one item
    per FCNN stage.  Closing the generator (or breaking out of the loop) stops
    the computation before the next stage.  Arguments are validated when the
    function is called (a ``ValueError`` is raised before any work is done).
    ``noise_level="auto"`` estimates the noise; every :class:`StageResult`
    carries the level used.  Planes larger than one tile run in tiles, as in :func:`deblur`.
    With ``channel_axis`` (see :func:`deblur`) every item covers all channels; its ``gamma`` and
    ``noise_level`` are channel 0's and ``per_channel`` holds each channel's own item.
    """
    import numpy as np

    a = np.asarray(image)
    if channel_axis is not None:
        axis = check_channel_axis(channel_axis, a.ndim)
        n = a.shape[axis]
        kernels, levels = channel_kernels(kernel, n), channel_noise_levels(noise_level, n)
        runs = [DeblurRun.prepare(channel_view(a, axis, c), kernels[c], levels[c], iterations, device, model, None,
                                  intensity_range, precision) for c in range(n)]
        if len({r.iterations for r in runs}) != 1:
            raise ValueError(f"the channels' models have different stage counts {[r.iterations for r in runs]}")
        return _stacked_stages([r.stages(channel_view(a, axis, c)) for c, r in enumerate(runs)], axis)
    run = DeblurRun.prepare(a, kernel, noise_level, iterations, device, model, None, intensity_range, precision)
    return run.stages(a)


def _stacked_stages(generators: list[Iterator[StageResult]], axis: int) -> Iterator[StageResult]:
    """Advance every channel's stages together; each item stacks the channels on ``axis``."""
    import numpy as np

    def stack(arrays):
        return None if arrays[0] is None else np.stack(arrays, axis=axis)

    for items in zip(*generators):
        first = items[0]
        yield StageResult(first.stage, stack([i.image for i in items]), stack([i.grad_x for i in items]),
                          stack([i.grad_y for i in items]), first.iterations, first.gamma, first.noise_level,
                          per_channel=list(items))
