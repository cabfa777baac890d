"""Import the paper authors' released MatConvNet cascades into the project's format.

Reads the layout of the authors' release (``noise0.0X/iter{1,2,3}_weights.mat``
and ``noise0.0X/lambda.mat``, MIT licence): each ``weights`` struct holds
{W (H×W×Cin×Cout), b} per layer; MatConvNet's convolution is a
cross-correlation like PyTorch's, so W is only permuted to (Cout, Cin, H, W).
The released λ weights the data term with a unit-weight gradient prior and
ε = 1e-4, exactly γ in :func:`~.fft_deconv.deconvolve`.

These files are for verification and comparison: the package ships cascades
trained by the project, never converted released ones.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..core.cascade import Cascade
from .matfiles import load_mat, mat_numeric
from .models import cascade_from_tensors


def _layer_arrays(entry) -> tuple[np.ndarray, np.ndarray]:
    wb = entry["weights"]
    wb = np.asarray(wb).ravel()
    if wb.dtype == object:
        items = [np.asarray(v) for v in wb]
        if len(items) == 1 and items[0].dtype == object:
            items = [np.asarray(v) for v in items[0].ravel()]
    else:
        raise ValueError("unexpected layout of a MatConvNet weights entry")
    return items[0].astype(np.float32), items[1].astype(np.float32)


def load_matconvnet_stage(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read one released ``iterN_weights.mat``: {"conv{i}.weight"/"conv{i}.bias"} in PyTorch layout."""
    mat = load_mat(path)
    if "weights" not in mat:
        raise ValueError(f"{path}: no 'weights' variable (variables: {', '.join(sorted(mat)) or 'none'})")
    layers = np.asarray(mat["weights"]).ravel()
    if len(layers) != 6:
        raise ValueError(f"{path}: expected 6 layers, found {len(layers)}")
    out = {}
    for i, entry in enumerate(layers, start=1):
        try:
            w, b = _layer_arrays(entry)
        except (ValueError, TypeError, KeyError, IndexError) as err:
            raise ValueError(f"{path}: layer {i} is not a MatConvNet {{W, b}} weights entry ({err})") from None
        if w.ndim == 3:  # last layer: Cout = 1 squeezed by MATLAB
            w = w[..., None]
        out[f"conv{i}.weight"] = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
        out[f"conv{i}.bias"] = torch.from_numpy(b.ravel().copy())
    return out


def load_matconvnet_cascade(folder: str | os.PathLike, noise_level: float | None = None) -> Cascade:
    """Build a :class:`Cascade` from a released noise-level folder.

    ``folder`` is either one ``noise0.0X`` folder, or the release's top folder
    (``models/`` or the folder above it) together with ``noise_level``.
    """
    folder = Path(folder)
    if not (folder / "lambda.mat").is_file():
        if noise_level is None:
            raise ValueError(f"{folder} holds no lambda.mat: give a noise0.0X folder or a noise_level")
        for cand in (folder / f"noise{noise_level:.2f}", folder / "models" / f"noise{noise_level:.2f}"):
            if (cand / "lambda.mat").is_file():
                folder = cand
                break
        else:
            raise FileNotFoundError(f"no released cascade for noise {noise_level:g} under {folder}")
    lambdas = mat_numeric(folder / "lambda.mat", "lambda").ravel()
    if lambdas.size == 0 or np.any(lambdas <= 0):
        raise ValueError(f"{folder / 'lambda.mat'}: the λ weights must be positive, got {lambdas.tolist()}")
    stages = sorted(folder.glob("iter*_weights.mat"), key=lambda p: int(p.name[4:].split("_")[0]))
    if not stages:
        raise ValueError(f"{folder}: no iter*_weights.mat stage files (a cascade needs at least one stage)")
    if len(lambdas) != len(stages) + 1:
        raise ValueError(f"{folder}: {len(lambdas)} λ values for {len(stages)} stages")
    tensors: dict[str, torch.Tensor] = {"gammas": torch.tensor(lambdas, dtype=torch.float32)}
    for s, p in enumerate(stages, start=1):
        for k, v in load_matconvnet_stage(p).items():
            tensors[f"stage{s}.{k}"] = v
    if noise_level is None and folder.name.startswith("noise"):
        try:
            noise_level = float(folder.name[5:])
        except ValueError:
            noise_level = None
    meta = {
        "n_stages": str(len(stages)),
        "noise_level": str(noise_level),
        "source": f"imported from MatConvNet release at {folder}",
    }
    return cascade_from_tensors(tensors, meta)
