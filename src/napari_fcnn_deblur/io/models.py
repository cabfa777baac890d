"""Saving, loading and locating trained cascades.

File format (``.safetensors``): tensors ``stage{s}.conv{i}.weight`` /
``stage{s}.conv{i}.bias`` (PyTorch layout, s = 1…n, i = 1…6) and ``gammas``
(n + 1 values, initial deconvolution first); metadata (str → str) holds
``format`` (``"napari-fcnn-deblur-cascade/1"``), ``n_stages``, ``noise_level``
and free-form provenance.  Loading never executes code from the file.

Noise-map cascades (:class:`~napari_fcnn_deblur.core.conditioned.NoiseMapCascade`) have their own
format, ``"napari-fcnn-deblur-noisemap/1"``: the same ``stage{s}.conv{i}`` tensors (2 input
channels) and ``gamma_coeffs`` (n + 1, 3) instead of ``gammas``; metadata ``format``, ``kind``
(``"noisemap"``), ``n_stages``, ``width``, ``noise_map_scale``, ``sigma_ref``,
``sigma_gamma_floor`` and free-form provenance.

Volume cascades (:class:`~napari_fcnn_deblur.core.volumetric.VolumeCascade`),
``"napari-fcnn-deblur-volume/1"``: as noise-map files, with two networks per stage,
``stage{s}.lateral.conv{i}.*`` and ``stage{s}.axial.conv{i}.*``; metadata ``kind`` ``"volume"``.
:func:`load_cascade` and :func:`save_cascade` handle all three.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..core.cascade import Cascade
from ..core.conditioned import GAMMA_FLOOR_KEY, NOISE_MAP_SCALE, SIGMA_REF, NoiseMapCascade
from ..core.denoiser import AxialPair, GradientDenoiser
from ..core.volumetric import VolumeCascade

FORMAT = "napari-fcnn-deblur-cascade/1"
NOISEMAP_FORMAT = "napari-fcnn-deblur-noisemap/1"
VOLUME_FORMAT = "napari-fcnn-deblur-volume/1"

#: Metadata entries a noise-map file's format owns (the rest is free-form provenance).
_NOISEMAP_KEYS = ("format", "kind", "n_stages", "width", "noise_map_scale", "sigma_ref")  # + GAMMA_FLOOR_KEY: kept

#: Noise levels (s.d. on [0, 1]) for which per-level cascades are shipped/trained.
TRAINED_NOISE_LEVELS: tuple[float, ...] = (0.01, 0.03, 0.05)

#: File of the shipped noise-map cascade (in the package's ``models`` folder).
NOISEMAP_FILE = "noisemap_cascade.safetensors"

#: ``model=`` names: the shipped noise-map cascade; the shipped per-level cascade nearest to the noise level.
NOISEMAP_MODEL = "noisemap"
PER_LEVEL_MODEL = "per-level"
MODEL_NAMES: tuple[str, ...] = (NOISEMAP_MODEL, PER_LEVEL_MODEL)

#: Metadata entry of the noise-map file holding the measured table of the default choice (JSON).
DEFAULT_RULE_KEY = "default_rule"


class ModelNotFoundError(FileNotFoundError):
    """No trained cascade is installed for the requested noise level."""


def stage_networks(cascade: Cascade) -> list[tuple[str, GradientDenoiser]]:
    """``(tensor-name prefix, network)`` of every network of a cascade, in file order."""
    out = []
    for s, den in enumerate(cascade.denoisers, start=1):
        if isinstance(den, AxialPair):
            out += [(f"stage{s}.lateral", den.lateral), (f"stage{s}.axial", den.axial)]
        else:
            out.append((f"stage{s}", den))
    return out


def state_tensors(cascade: Cascade) -> dict[str, torch.Tensor]:
    if isinstance(cascade, NoiseMapCascade):
        tensors = {"gamma_coeffs": cascade.gamma_coeffs.detach().cpu().float().contiguous()}
    else:
        tensors = {"gammas": cascade.gammas.detach().cpu().float().contiguous()}
    for s, den in stage_networks(cascade):
        for i, conv in enumerate(den.convs, start=1):
            tensors[f"{s}.conv{i}.weight"] = conv.weight.detach().cpu().float().contiguous()
            tensors[f"{s}.conv{i}.bias"] = conv.bias.detach().cpu().float().contiguous()
    return tensors


def save_cascade(cascade: Cascade, path: str | os.PathLike) -> Path:
    """Write ``cascade`` to ``path`` (.safetensors, the format of its kind), atomically."""
    path = Path(path)
    meta = {str(k): str(v) for k, v in cascade.metadata.items()}
    if isinstance(cascade, NoiseMapCascade):
        volume = isinstance(cascade, VolumeCascade)
        meta.update(format=VOLUME_FORMAT if volume else NOISEMAP_FORMAT, kind="volume" if volume else "noisemap",
                    n_stages=str(cascade.n_stages), width=str(cascade.width),
                    noise_map_scale=str(NOISE_MAP_SCALE), sigma_ref=str(SIGMA_REF),
                    **{GAMMA_FLOOR_KEY: str(cascade.gamma_floor)})
    else:
        meta.update(format=FORMAT, n_stages=str(cascade.n_stages), noise_level=str(cascade.noise_level))
    tmp = path.with_name(path.name + ".tmp")
    save_file(state_tensors(cascade), str(tmp), metadata=meta)
    # readable as any other file the user writes (safetensors creates 0600): dask workers run as other users
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
    return path


def check_tensors(tensors: dict[str, torch.Tensor]) -> None:
    """Reject weights that would run but give NaN or zero output: non-float tensors, NaN/inf values, γ ≤ 0."""
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise ValueError(f"tensor {name!r} has dtype {t.dtype}; a cascade's weights are floating point")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"tensor {name!r} contains NaN or infinite values")
    if "gammas" in tensors and not bool((tensors["gammas"] > 0).all()):
        raise ValueError(f"the data weights γ must all be > 0, got {tensors['gammas'].tolist()}")


def cascade_from_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Cascade:
    check_tensors(tensors)
    if metadata.get("format") in (NOISEMAP_FORMAT, VOLUME_FORMAT):
        scale = float(metadata.get("noise_map_scale", NOISE_MAP_SCALE))
        if scale != NOISE_MAP_SCALE:
            raise ValueError(f"noise-map cascade trained with noise_map_scale {scale}, this code uses {NOISE_MAP_SCALE}")
        extra = {k: v for k, v in metadata.items() if k not in _NOISEMAP_KEYS}
        kind = VolumeCascade if metadata["format"] == VOLUME_FORMAT else NoiseMapCascade
        cascade = kind(int(metadata["n_stages"]), width=int(metadata["width"]), metadata=extra)
        with torch.no_grad():
            cascade.gamma_coeffs.copy_(tensors["gamma_coeffs"])
    else:
        n = int(metadata.get("n_stages", len(tensors["gammas"]) - 1))
        nl = metadata.get("noise_level")
        noise = float(nl) if nl not in (None, "None", "") else None
        extra = {k: v for k, v in metadata.items() if k not in ("format", "n_stages", "noise_level")}
        width = int(tensors["stage1.conv1.weight"].shape[0]) if n else 64
        cascade = Cascade(n, gammas=tensors["gammas"].tolist(), noise_level=noise, metadata=extra, width=width)
    for s, den in stage_networks(cascade):
        for i, conv in enumerate(den.convs, start=1):
            if f"{s}.conv{i}.weight" not in tensors or f"{s}.conv{i}.bias" not in tensors:
                raise ValueError(f"the file lacks the weights of {s} layer {i}")
            w, b = tensors[f"{s}.conv{i}.weight"], tensors[f"{s}.conv{i}.bias"]
            if w.shape != conv.weight.shape or b.shape != conv.bias.shape:
                raise ValueError(
                    f"{s} layer {i}: weight {tuple(w.shape)} / bias {tuple(b.shape)} do not match "
                    f"the architecture's {tuple(conv.weight.shape)} / {tuple(conv.bias.shape)}"
                )
            with torch.no_grad():
                conv.weight.copy_(w)
                conv.bias.copy_(b)
    return cascade.eval()


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a cascade file, read from its header only (no weights loaded).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a
    file that is not a napari-fcnn-deblur cascade.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for non-safetensors files
        raise ValueError(f"{path} is not a napari-fcnn-deblur cascade ({err})") from None
    if metadata.get("format") not in (FORMAT, NOISEMAP_FORMAT, VOLUME_FORMAT):
        raise ValueError(f"{path} is not a napari-fcnn-deblur cascade (format {metadata.get('format')!r})")
    return metadata


def load_cascade(path: str | os.PathLike) -> Cascade:
    """Read a cascade written by :func:`save_cascade` (a fresh, uncached copy).

    A noise-map file gives a :class:`~napari_fcnn_deblur.core.conditioned.NoiseMapCascade`.
    """
    metadata = read_metadata(path)
    return cascade_from_tensors(load_file(str(Path(path))), metadata)


def shipped_model_path(noise_level: float) -> Path:
    """Path of the shipped per-level cascade file for one of :data:`TRAINED_NOISE_LEVELS`."""
    ref = resources.files("napari_fcnn_deblur") / "models" / f"fcnn_noise{noise_level:.2f}.safetensors"
    return Path(str(ref))


def noisemap_model_path() -> Path:
    """Path of the shipped noise-map cascade file (:data:`NOISEMAP_FILE`)."""
    return Path(str(resources.files("napari_fcnn_deblur") / "models" / NOISEMAP_FILE))


#: File of the shipped volume cascade (in the package's ``models`` folder).
VOLUME_FILE = "volume_cascade.safetensors"


def volume_model_path() -> Path:
    """Path of the shipped volume cascade file (:data:`VOLUME_FILE`)."""
    return Path(str(resources.files("napari_fcnn_deblur") / "models" / VOLUME_FILE))


def load_cached(path: str | os.PathLike) -> Cascade:
    """The cascade in ``path``, loaded once per file content (shared: do not modify it)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"model file not found: {p}")
    return _cached(str(p.resolve()), file_digest(p))


def nearest_trained_level(noise_level: float) -> float:
    """The trained level closest to ``noise_level`` (absolute difference; ties go to the higher level)."""
    if not (noise_level >= 0 and noise_level < float("inf")):
        raise ValueError(f"noise_level must be a finite s.d. >= 0 on the [0, 1] scale, got {noise_level}")
    return min(TRAINED_NOISE_LEVELS, key=lambda lv: (abs(lv - noise_level), -lv))


def available_models() -> dict[float, Path]:
    """Shipped per-level cascades that are installed: {noise level: file} (the noise-map cascade:
    :func:`noisemap_model_path`)."""
    return {lv: p for lv in TRAINED_NOISE_LEVELS if (p := shipped_model_path(lv)).is_file()}


@functools.lru_cache(maxsize=16)
def _cached(path: str, digest: str) -> Cascade:
    return load_cascade(path)


def file_digest(path: Path) -> str:
    """SHA-256 of a file's content: the model cache's key (a copy that keeps the mtime still reloads)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- choosing the model


def default_rule(path: str | os.PathLike | None = None) -> dict | None:
    """The measured table behind the default model choice, from a noise-map file's metadata (None if absent).

    Written by ``benchmarks/default_model.py --write`` into the :data:`DEFAULT_RULE_KEY` metadata entry:
    ``sigma`` (tested Gaussian levels, ascending), ``noisemap_db`` and ``per_level_db`` (mean PSNR of
    the noise-map cascade and of the nearest per-level cascade at each level) and provenance.
    """
    path = noisemap_model_path() if path is None else Path(path)
    if not Path(path).is_file():
        return None
    text = read_metadata(path).get(DEFAULT_RULE_KEY)
    if not text:
        return None
    try:
        table = json.loads(text)
        sig = [float(v) for v in table["sigma"]]
        nm, pl = [float(v) for v in table["noisemap_db"]], [float(v) for v in table["per_level_db"]]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path}: the {DEFAULT_RULE_KEY!r} metadata is not a valid table") from None
    if not (len(sig) == len(nm) == len(pl) > 0) or any(b <= a for a, b in zip(sig, sig[1:])) or min(sig) <= 0:
        raise ValueError(f"{path}: the {DEFAULT_RULE_KEY!r} table needs ascending levels > 0, one PSNR pair each")
    return table


def per_level_margin(sigma: float, table: dict) -> float:
    """PSNR of the noise-map cascade minus the nearest per-level cascade at Gaussian level ``sigma`` (dB).

    Interpolated linearly in log σ between the table's levels, held at its first / last level outside them.
    """
    sig = np.log(np.asarray(table["sigma"], dtype=np.float64))
    diff = np.asarray(table["noisemap_db"], dtype=np.float64) - np.asarray(table["per_level_db"], dtype=np.float64)
    return float(np.interp(math.log(max(sigma, 1e-6)), sig, diff))


@dataclass(frozen=True)
class ModelChoice:
    """The cascade a run uses, where it comes from and why.

    Attributes
    ----------
    cascade : Cascade
        The model (a cached, shared object; :class:`NoiseMapCascade` for the noise-map cascade).
    source : Path or Cascade
        What loads the same model again (another process: the file).
    label : str
        ``"noise-map cascade"``, ``"per-level cascade 3 %"``, ``"cascade file NAME"`` or ``"given cascade"``.
    reason : str
        Why it was chosen (for the default: the rule and the measured margin).
    """

    cascade: Cascade
    source: "Path | Cascade"
    label: str
    reason: str = ""

    @property
    def is_noisemap(self) -> bool:
        return isinstance(self.cascade, NoiseMapCascade)

    def describe(self) -> str:
        return f"{self.label} ({self.reason})" if self.reason else self.label


def model_name(model) -> str | None:
    """The shipped-model name ``model`` spells (:data:`MODEL_NAMES`, any case), or None."""
    if isinstance(model, str) and model.strip().lower() in MODEL_NAMES:
        return model.strip().lower()
    return None


def per_level_choice(noise_level: float, reason: str) -> ModelChoice:
    """The shipped per-level cascade nearest to ``noise_level``."""
    level = nearest_trained_level(noise_level)
    path = shipped_model_path(level)
    if not path.is_file():
        raise ModelNotFoundError(
            f"no trained model is installed for noise level {level:g} "
            f"(expected {path.name} in the package). Pass model=PATH to use a cascade file "
            "(e.g. one made with `fcnn-deblur train` or `fcnn-deblur import-matconvnet`)."
        )
    return ModelChoice(_cached(str(path.resolve()), file_digest(path)), path, f"per-level cascade {100 * level:g} %",
                       reason)


def noisemap_choice(reason: str) -> ModelChoice:
    """The shipped noise-map cascade."""
    path = noisemap_model_path()
    if not path.is_file():
        raise ModelNotFoundError(
            f"the noise-map cascade is not installed (expected {path.name} in the package); "
            f"use model='{PER_LEVEL_MODEL}' or model=PATH"
        )
    return ModelChoice(_cached(str(path.resolve()), file_digest(path)), path, "noise-map cascade", reason)


def select_model(model: "str | os.PathLike | Cascade | None", noise_level: float,
                 gaussian: bool = True) -> ModelChoice:
    """Resolve the ``model=`` argument of the public API for noise of effective s.d. ``noise_level``.

    Parameters
    ----------
    model : None, "noisemap", "per-level", a path or a Cascade
        None (default): the noise-map cascade, except for plain Gaussian noise (``gaussian``) at a
        level where the nearest per-level cascade validates better — by the measured table of the
        noise-map file (:func:`default_rule`, :func:`per_level_margin` < 0); without a table, or when
        the noise-map file is not installed, the other one.  "noisemap": the shipped noise-map
        cascade.  "per-level": the shipped per-level cascade nearest to ``noise_level`` (the paper's
        setting).  A path loads that file (cached by path and content hash); a
        :class:`Cascade` is used as it is.
    noise_level : float
        Effective noise s.d. on the [0, 1] scale (what picks a per-level cascade).
    gaussian : bool
        Whether the noise is plain Gaussian (one σ everywhere); signal-dependent noise and noise maps
        go to the noise-map cascade by default.
    """
    if isinstance(model, Cascade):
        kind = "noise-map" if isinstance(model, NoiseMapCascade) else "per-level"
        return ModelChoice(model, model, f"given {kind} cascade")
    name = model_name(model)
    if name == NOISEMAP_MODEL:
        return noisemap_choice(f"model='{NOISEMAP_MODEL}'")
    if name == PER_LEVEL_MODEL:
        return per_level_choice(noise_level, f"model='{PER_LEVEL_MODEL}': nearest to the noise level")
    if model is not None:
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path} (or give one of {', '.join(MODEL_NAMES)})")
        return ModelChoice(_cached(str(path.resolve()), file_digest(path)), path, f"cascade file {path.name}")
    if not noisemap_model_path().is_file():
        return per_level_choice(noise_level, "default: the noise-map cascade is not installed")
    if not gaussian:
        return noisemap_choice("default: the noise is not uniform Gaussian")
    table = default_rule()
    if table is None:
        return noisemap_choice("default")
    margin = per_level_margin(noise_level, table)
    where = f"at {100 * noise_level:.3g} % Gaussian noise in the measured table"
    if margin < 0 and available_models():
        return per_level_choice(noise_level, f"default: {-margin:.2f} dB above the noise-map cascade {where}")
    return noisemap_choice(f"default: {margin:+.2f} dB against the nearest per-level cascade {where}")


def get_model(model: "str | os.PathLike | Cascade | None", noise_level: float, gaussian: bool = True) -> Cascade:
    """The cascade :func:`select_model` chooses (arguments as there)."""
    return select_model(model, noise_level, gaussian).cascade
