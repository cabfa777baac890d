"""Lazy deblurring of dask arrays: one task per (Y, X) plane.

:func:`napari_fcnn_deblur.deblur` hands dask arrays to :func:`deblur_lazy`,
which returns a lazy float32 dask array of the same shape, in the input's
intensity units, like the eager path.  Every chunk of the result is one whole
(Y, X) plane (one colour channel for RGB(A)); inside its task the plane runs
through the same :class:`~.run.DeblurRun` as the eager path (tiled when it is
larger than one tile), so a task's memory is bounded by the plane, not the
stack.

What is computed up front (eagerly, once), by the same rules as for numpy
input (:meth:`~.run.DeblurRun.prepare`): the intensity map (:mod:`.intensity`:
all values of arrays with at most 4 million values, else a strided sample,
plus the exact min/max of float images) and, with ``noise_level="auto"``, the
noise estimate (:mod:`.noise`: up to 16 evenly spaced planes).

Tasks receive the model as it was passed: give a file path (``model=PATH``)
when the graph runs on a ``distributed`` cluster, so every worker loads (and
caches) the file itself rather than receiving a pickled network.

This module imports dask; ``import napari_fcnn_deblur`` does not.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np

from .run import DeblurRun, RunOptions, check_finite

#: Name prefix of the per-plane tasks (progress bars count these).
TASK_PREFIX = "fcnn-deblur"


def deblur_block(block: np.ndarray, options: RunOptions, block_info=None) -> np.ndarray:
    """One task: deblur the plane(s) of one chunk (whole Y, X; RGB: one channel), float32, input units."""
    if options.rgb and block_info is not None and block_info[0]["chunk-location"][-1] == 3:
        return block.astype(np.float32)  # alpha passes through
    check_finite(block)
    run = DeblurRun.from_options(options)
    planes = np.moveaxis(block, -1, 0) if options.rgb else block.reshape((-1,) + block.shape[-2:])
    result = run.scaling.inverse(run.run_planes(run.scaling.forward(planes)))
    if options.rgb:
        return np.ascontiguousarray(np.moveaxis(result, 0, -1), dtype=np.float32)
    return result.reshape(block.shape).astype(np.float32, copy=False)


def plane_chunks(a: da.Array, rgb: bool) -> da.Array:
    """``a`` rechunked to one whole (Y, X) plane per chunk (RGB: one channel per chunk)."""
    return a.rechunk((-1, -1, 1)) if rgb else a.rechunk((1,) * (a.ndim - 2) + (-1, -1))


def deblur_lazy(run: DeblurRun, image) -> da.Array:
    """Lazy result of a prepared ``run`` on a dask array (see the module docstring)."""
    a = image if isinstance(image, da.Array) else da.asarray(image)
    opts = run.options
    a = plane_chunks(a, opts.rgb)
    model = opts.model
    token = dask.base.tokenize(
        a.name, opts.kernel, opts.scaling, opts.noise_level, opts.noise_or_level.kind, opts.noise_or_level.a,
        opts.noise_or_level.b, opts.iterations, opts.device,
        model if not hasattr(model, "state_dict") else id(model), opts.tile_size, opts.precision,
    )
    return a.map_blocks(
        deblur_block,
        opts,
        dtype=np.float32,
        meta=np.empty((0,) * a.ndim, np.float32),
        name=f"{TASK_PREFIX}-{token}",
    )
