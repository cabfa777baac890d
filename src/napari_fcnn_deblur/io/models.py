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
``sigma_gamma_floor`` and free-form provenance.  :func:`load_cascade` and :func:`save_cascade`
handle both.
"""

from __future__ import annotations

import functools
import hashlib
import os
from importlib import resources
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..core.cascade import Cascade
from ..core.conditioned import NOISE_MAP_SCALE, SIGMA_GAMMA_FLOOR, SIGMA_REF, NoiseMapCascade

FORMAT = "napari-fcnn-deblur-cascade/1"
NOISEMAP_FORMAT = "napari-fcnn-deblur-noisemap/1"

#: Metadata entries a noise-map file's format owns (the rest is free-form provenance).
_NOISEMAP_KEYS = ("format", "kind", "n_stages", "width", "noise_map_scale", "sigma_ref", "sigma_gamma_floor")

#: Noise levels (s.d. on [0, 1]) for which cascades are shipped/trained.
TRAINED_NOISE_LEVELS: tuple[float, ...] = (0.01, 0.03, 0.05)


class ModelNotFoundError(FileNotFoundError):
    """No trained cascade is installed for the requested noise level."""


def state_tensors(cascade: Cascade) -> dict[str, torch.Tensor]:
    if isinstance(cascade, NoiseMapCascade):
        tensors = {"gamma_coeffs": cascade.gamma_coeffs.detach().cpu().float().contiguous()}
    else:
        tensors = {"gammas": cascade.gammas.detach().cpu().float().contiguous()}
    for s, den in enumerate(cascade.denoisers, start=1):
        for i, conv in enumerate(den.convs, start=1):
            tensors[f"stage{s}.conv{i}.weight"] = conv.weight.detach().cpu().float().contiguous()
            tensors[f"stage{s}.conv{i}.bias"] = conv.bias.detach().cpu().float().contiguous()
    return tensors


def save_cascade(cascade: Cascade, path: str | os.PathLike) -> Path:
    """Write ``cascade`` to ``path`` (.safetensors, the format of its kind), atomically."""
    path = Path(path)
    meta = {str(k): str(v) for k, v in cascade.metadata.items()}
    if isinstance(cascade, NoiseMapCascade):
        meta.update(format=NOISEMAP_FORMAT, kind="noisemap", n_stages=str(cascade.n_stages), width=str(cascade.width),
                    noise_map_scale=str(NOISE_MAP_SCALE), sigma_ref=str(SIGMA_REF),
                    sigma_gamma_floor=str(SIGMA_GAMMA_FLOOR))
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
    if metadata.get("format") == NOISEMAP_FORMAT:
        scale = float(metadata.get("noise_map_scale", NOISE_MAP_SCALE))
        if scale != NOISE_MAP_SCALE:
            raise ValueError(f"noise-map cascade trained with noise_map_scale {scale}, this code uses {NOISE_MAP_SCALE}")
        extra = {k: v for k, v in metadata.items() if k not in _NOISEMAP_KEYS}
        cascade = NoiseMapCascade(int(metadata["n_stages"]), width=int(metadata["width"]), metadata=extra)
        with torch.no_grad():
            cascade.gamma_coeffs.copy_(tensors["gamma_coeffs"])
    else:
        n = int(metadata.get("n_stages", len(tensors["gammas"]) - 1))
        nl = metadata.get("noise_level")
        noise = float(nl) if nl not in (None, "None", "") else None
        extra = {k: v for k, v in metadata.items() if k not in ("format", "n_stages", "noise_level")}
        width = int(tensors["stage1.conv1.weight"].shape[0]) if n else 64
        cascade = Cascade(n, gammas=tensors["gammas"].tolist(), noise_level=noise, metadata=extra, width=width)
    for s, den in enumerate(cascade.denoisers, start=1):
        for i, conv in enumerate(den.convs, start=1):
            w, b = tensors[f"stage{s}.conv{i}.weight"], tensors[f"stage{s}.conv{i}.bias"]
            if w.shape != conv.weight.shape or b.shape != conv.bias.shape:
                raise ValueError(
                    f"stage {s} layer {i}: weight {tuple(w.shape)} / bias {tuple(b.shape)} do not match "
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
    if metadata.get("format") not in (FORMAT, NOISEMAP_FORMAT):
        raise ValueError(f"{path} is not a napari-fcnn-deblur cascade (format {metadata.get('format')!r})")
    return metadata


def load_cascade(path: str | os.PathLike) -> Cascade:
    """Read a cascade written by :func:`save_cascade` (a fresh, uncached copy).

    A noise-map file gives a :class:`~napari_fcnn_deblur.core.conditioned.NoiseMapCascade`.
    """
    metadata = read_metadata(path)
    return cascade_from_tensors(load_file(str(Path(path))), metadata)


def shipped_model_path(noise_level: float) -> Path:
    """Path of the shipped cascade file for one of :data:`TRAINED_NOISE_LEVELS`."""
    ref = resources.files("napari_fcnn_deblur") / "models" / f"fcnn_noise{noise_level:.2f}.safetensors"
    return Path(str(ref))


def nearest_trained_level(noise_level: float) -> float:
    """The trained level closest to ``noise_level`` (absolute difference; ties go to the higher level)."""
    if not (noise_level >= 0 and noise_level < float("inf")):
        raise ValueError(f"noise_level must be a finite s.d. >= 0 on the [0, 1] scale, got {noise_level}")
    return min(TRAINED_NOISE_LEVELS, key=lambda lv: (abs(lv - noise_level), -lv))


def available_models() -> dict[float, Path]:
    """Shipped cascades that are installed: {noise level: file}."""
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


def get_model(model: "str | os.PathLike | Cascade | None", noise_level: float) -> Cascade:
    """Resolve the ``model=`` argument of the public API to a (cached) cascade.

    ``None`` picks the shipped cascade nearest to ``noise_level``; a path loads
    that file (cached by path and content hash); a :class:`Cascade` is
    used as it is.
    """
    if isinstance(model, Cascade):
        return _plain(model)
    if model is None:
        level = nearest_trained_level(noise_level)
        path = shipped_model_path(level)
        if not path.is_file():
            raise ModelNotFoundError(
                f"no trained model is installed for noise level {level:g} "
                f"(expected {path.name} in the package). Pass model=PATH to use a cascade file "
                "(e.g. one made with `fcnn-deblur train` or `fcnn-deblur import-matconvnet`)."
            )
    else:
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
    return _plain(_cached(str(path.resolve()), file_digest(path)))


def _plain(cascade: Cascade) -> Cascade:
    if isinstance(cascade, NoiseMapCascade):
        raise ValueError(
            "this is a noise-map cascade (in training): it needs a per-pixel noise map, which deblur() does not "
            "pass yet; run it with NoiseMapCascade.run(y, kernel, noise_map)"
        )
    return cascade
