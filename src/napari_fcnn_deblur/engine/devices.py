"""Choosing the torch device the cascade runs on."""

from __future__ import annotations

import numpy as np
import torch


def tensor_on(array, device: "str | torch.device", dtype=np.float32) -> torch.Tensor:
    """``array`` as a ``dtype`` tensor on ``device``.

    A contiguous, writable array of that dtype is shared on the CPU (no copy); anything else (read-only
    arrays such as broadcast views or memory maps, other dtypes, strided views) is copied first, so the
    tensor never aliases memory that must not be written.
    """
    a = np.asarray(array)
    if a.dtype != dtype or not a.flags.c_contiguous or not a.flags.writeable:
        a = np.array(a, dtype=dtype, order="C", copy=True)
    return torch.from_numpy(a).to(device)


def available_devices() -> list[str]:
    """Devices usable here, best first, e.g. ``["cuda", "cpu"]`` (``"auto"`` not included)."""
    out = []
    if torch.cuda.is_available():
        out.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    out.append("cpu")
    return out


def resolve_device(device: "str | torch.device" = "auto") -> torch.device:
    """``"auto"`` → CUDA, then Apple MPS, then CPU; an explicit device must be available."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
    name = device.strip().lower()
    if name == "auto":
        return torch.device(available_devices()[0])
    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but no CUDA GPU is available here; use 'auto' or 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA GPU(s) exist")
    elif dev.type == "mps":
        if "mps" not in available_devices():
            raise ValueError(f"device {device!r} requested but Apple MPS is not available here; use 'auto' or 'cpu'")
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {device!r}: use 'auto', 'cpu', 'cuda' or 'mps'")
    return dev


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def has_fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (not emulated, which can be slower than fp32).

    CUDA: ``torch.cuda.is_bf16_supported()`` (Ampere and later).  CPU: the AVX-512 BF16 or
    AMX-BF16 instructions (read from ``/proc/cpuinfo``; other systems answer False).
    """
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})
    return False


#: Arithmetic of the networks: names accepted by ``precision`` → autocast dtype (None = fp32).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}

#: Environment variable that fixes what ``precision="auto"`` means ("fp32" or "bf16"),
#: e.g. for bit-for-bit reproducible pipelines across machines.
PRECISION_ENV = "NAPARI_FCNN_DEBLUR_PRECISION"


def check_precision(precision, device: torch.device) -> torch.dtype | None:
    """``precision`` ("auto", "fp32" or "bf16") checked against ``device``; returns the autocast dtype.

    "auto" is bf16 where the device computes it natively (:func:`has_fast_bf16`), else
    fp32: on the validation benchmark bf16 networks changed the mean PSNR by less than 0.01 dB and
    ran 2–3× faster (``docs/benchmarks.md``).  The environment variable :data:`PRECISION_ENV`
    overrides what "auto" means.
    """
    import os

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
