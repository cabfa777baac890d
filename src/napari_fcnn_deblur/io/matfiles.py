"""MATLAB ``.mat`` files (v4–v7.2, through SciPy), read with a size cap and one-line errors.

Kernels, PSFs and the authors' released cascades come as ``.mat`` files.  A few
hundred kB of compressed ``.mat`` can expand to gigabytes, and a damaged or
foreign file makes SciPy raise anything from ``ValueError`` to ``TypeError`` or
``struct.error``: :func:`load_mat` checks the variable directory first and turns
every failure into a ``ValueError`` that names the file.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

#: Most values (over all variables) a .mat file may hold: kernels, PSFs and the released cascades
#: (≈0.3 M values per stage) are small, and a small compressed file can expand to gigabytes.
MAX_VALUES = 32_000_000


def mat_variables(path: str | os.PathLike) -> list[tuple[str, tuple[int, ...], str]]:
    """``[(name, shape, class), ...]`` of a .mat file, read from its directory only (no data loaded).

    Raises ``ValueError`` naming the file when it is not a readable MAT v4–v7.2 file (v7.3 files are
    HDF5: save them with ``-v7`` in MATLAB, or open them with h5py).
    """
    from scipy.io import whosmat
    from scipy.io.matlab import matfile_version

    name = Path(path).name
    try:
        major, _ = matfile_version(str(path))
        if major == 2:
            raise ValueError(f"{name} is a MATLAB v7.3 (HDF5) file, which this reader cannot open; save it "
                             "with save(..., '-v7') in MATLAB")
        return [(str(n), tuple(int(s) for s in shape), str(c)) for n, shape, c in whosmat(str(path))]
    except ValueError as err:
        if str(err).startswith(name):
            raise
        raise ValueError(f"{name} is not a readable MATLAB .mat file ({err})") from None
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as err:  # SciPy's parsers raise many types on damaged files
        raise ValueError(f"{name} is not a readable MATLAB .mat file ({type(err).__name__}: {err})") from None


def load_mat(path: str | os.PathLike, max_values: int | None = None) -> dict[str, Any]:
    """The variables of a .mat file (``scipy.io.loadmat``), refusing files over ``max_values`` values
    (default :data:`MAX_VALUES`).

    Raises ``ValueError`` naming the file when it is not a readable MAT file or is too large.
    """
    name = Path(path).name
    max_values = MAX_VALUES if max_values is None else max_values
    variables = mat_variables(path)
    total = sum(math.prod(shape) for _, shape, _ in variables)
    if total > max_values:
        raise ValueError(
            f"{name} holds {total:,} values ({len(variables)} variables), more than the {max_values:,} this "
            "reader loads (it is meant for kernels, PSFs and model weights); save the array alone, or store large "
            "images as TIFF/zarr"
        )
    from scipy.io import loadmat

    try:
        return {k: v for k, v in loadmat(str(path)).items() if not k.startswith("__")}
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as err:  # also OSError("could not read bytes") from a truncated file
        raise ValueError(f"{name} is not a readable MATLAB .mat file ({type(err).__name__}: {err})") from None


def mat_numeric(path: str | os.PathLike, variable: str, mat: dict[str, Any] | None = None) -> np.ndarray:
    """Variable ``variable`` of a .mat file as a finite float64 array; ``ValueError`` naming file and variable
    when it is missing, not numeric, or holds NaN/inf."""
    name = Path(path).name
    mat = load_mat(path) if mat is None else mat
    if variable not in mat:
        found = ", ".join(sorted(mat)) or "none"
        raise ValueError(f"{name} has no variable {variable!r} (variables: {found})")
    a = np.asarray(mat[variable])
    if a.dtype == object or a.dtype == bool or not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise ValueError(f"{name}: {variable!r} is not a real numeric array (got {a.dtype})")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: {variable!r} contains NaN or infinite values")
    return a
