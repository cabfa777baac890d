"""napari reader for blur kernels / PSFs stored in MATLAB ``.mat`` files.

napari's own readers already open ``.npy``, ``.tif`` and ``.png`` kernels; kernels
published with deblurring papers and many PSF tools come as ``.mat`` files, which
napari does not read.  Every real numeric 2D or 3D array in the file (also inside
cell arrays) becomes one Image layer named ``"<file> <variable>"``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .io.matfiles import load_mat, mat_variables

LayerData = tuple[np.ndarray, dict[str, Any], str]

#: At most this many layers from one file (a cell array of thousands of kernels is not browsable).
MAX_LAYERS = 64


def napari_get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Return :func:`read_mat` when ``path`` is a MATLAB v4–v7.2 file, else None (napari tries others)."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or not all(str(p).lower().endswith(".mat") for p in paths):
        return None
    try:
        for p in paths:
            if not mat_variables(p):  # a readable variable directory, not just a plausible header
                return None
    except (ValueError, OSError):  # not a MAT file we can read (or v7.3/HDF5): let other readers try
        return None
    return read_mat


def _arrays(name: str, value: Any, out: list[tuple[str, np.ndarray]]) -> None:
    if len(out) >= MAX_LAYERS:
        return
    a = np.asarray(value)
    if a.dtype == object:  # a cell array: look one level in
        for i, item in enumerate(a.ravel()):
            _arrays(f"{name}[{i}]", item, out)
        return
    if a.dtype == bool or not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        return
    a = np.squeeze(a)
    if a.ndim in (2, 3) and min(a.shape) > 1:
        # MATLAB stores stacks as (Y, X, N); napari wants the stack axis first.
        out.append((name, np.ascontiguousarray(np.moveaxis(a, -1, 0) if a.ndim == 3 else a)))


def read_mat(path: str | list[str]) -> list[LayerData]:
    """Layers for every 2D/3D numeric array in one or more ``.mat`` files."""
    layers: list[LayerData] = []
    for p in [path] if isinstance(path, (str, Path)) else path:
        found: list[tuple[str, np.ndarray]] = []
        for key, value in load_mat(p).items():
            _arrays(key, value, found)
        stem = Path(p).stem
        for key, a in found:
            meta = {"source_file": str(p), "variable": key}
            layers.append(
                (
                    a.astype(np.float32) if a.dtype == np.float64 else a,
                    {"name": f"{stem} {key}", "metadata": meta},
                    "image",
                )
            )
    return layers
