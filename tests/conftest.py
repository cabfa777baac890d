"""Shared fixtures: cascades with known weights, synthetic blurred cases, the shared data folder."""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_fcnn_deblur.core.cascade import Cascade
from napari_fcnn_deblur.data.samples import blur_valid

# precision="auto" would mean bf16 on CPUs with native bf16 and fp32 elsewhere: the tests compare
# paths to tight tolerances, so they pin fp32 (bf16 is tested where it is asked for by name).
os.environ["NAPARI_FCNN_DEBLUR_PRECISION"] = "fp32"

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REFERENCE = SHARED / "reference" / "fcnn-cvpr17-official"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """The script ``benchmarks/<name>.py`` as a module ``<name>_benchmark`` (registered in sys.modules: the
    scripts' dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", BENCHMARKS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


# Under pytest-xdist every worker is a process of its own: share the cores among them instead of each
# running torch's default (all cores), which would oversubscribe them.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


def pytest_collection_modifyitems(config, items):
    """Tests marked slow first: with pytest-xdist's work stealing the long ones start at once and the
    short ones fill the other workers around them (serially, the order does not matter)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A test (e.g. a benchmark script run in-process with --threads 1) must not slow down the ones after it."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def soft_threshold_cascade(n_stages: int = 3, thresholds=(0.02, 0.01, 0.005), gammas=(200.0, 60.0, 20.0, 5.0),
                           width: int = 2) -> Cascade:
    """A cascade with hand-set weights: each FCNN is an exact soft-thresholding of the gradient.

    Layer 1 splits g into relu(g - t) and relu(-g - t); the middle layers pass
    both channels through (ReLU of non-negative values is the identity); the
    last layer returns their difference = sign(g) max(|g| - t, 0).  A simple,
    known sparse-gradient denoiser, for tests only (never shipped).  Two hidden channels are all it
    needs (wider networks give the same output: their other channels are zero), so plumbing tests
    run fast.
    """
    c = Cascade(n_stages, gammas=list(gammas[: n_stages + 1]), noise_level=0.01, metadata={"kind": "test"},
                width=width)
    with torch.no_grad():
        for s, den in enumerate(c.denoisers):
            convs = den.convs
            for conv in convs:
                conv.weight.zero_()
                conv.bias.zero_()
            t = thresholds[s]
            k0 = convs[0].kernel_size[0] // 2
            convs[0].weight[0, 0, k0, k0] = 1.0
            convs[0].weight[1, 0, k0, k0] = -1.0
            convs[0].bias[:2] = -t
            for conv in convs[1:-1]:
                conv.weight[0, 0, 1, 1] = 1.0
                conv.weight[1, 1, 1, 1] = 1.0
            convs[-1].weight[0, 0, 1, 1] = 1.0
            convs[-1].weight[0, 1, 1, 1] = -1.0
    return c.eval()


@pytest.fixture(scope="session")
def known_cascade() -> Cascade:
    return soft_threshold_cascade()


@pytest.fixture(scope="session")
def known_model_file(tmp_path_factory, known_cascade) -> Path:
    from napari_fcnn_deblur.io.models import save_cascade

    return save_cascade(known_cascade, tmp_path_factory.mktemp("model") / "test_cascade.safetensors")


def line_kernel(length: int = 9, angle_deg: float = 30.0) -> np.ndarray:
    """Small odd-sized linear motion kernel, sum 1."""
    size = length if length % 2 else length + 1
    k = np.zeros((size, size))
    c = size // 2
    for t in np.linspace(-(length - 1) / 2, (length - 1) / 2, 4 * length):
        y = int(round(c + t * np.sin(np.deg2rad(angle_deg))))
        x = int(round(c + t * np.cos(np.deg2rad(angle_deg))))
        k[y, x] = 1
    return (k / k.sum()).astype(np.float32)


def bead_crop(kernel: np.ndarray, shift=(3, -2), offset: float = 100.0, peak: float = 1000.0, noise: float = 3.0,
              size: int = 31, seed: int = 0) -> np.ndarray:
    """A measured-PSF-like uint16 crop: ``kernel`` scaled to ``peak`` counts, moved by ``shift`` px from the
    middle of a ``size`` × ``size`` crop, on ``offset`` counts of camera offset with Gaussian read noise."""
    a = np.zeros((size, size))
    c, h, w = size // 2, kernel.shape[0] // 2, kernel.shape[1] // 2
    dy, dx = shift
    a[c - h + dy : c + h + 1 + dy, c - w + dx : c + w + 1 + dx] = kernel / kernel.max() * peak
    a += offset + np.random.default_rng(seed).normal(0, noise, a.shape)
    return np.clip(np.rint(a), 0, 65535).astype(np.uint16)


@pytest.fixture(scope="session")
def camera_case():
    """(blurry, kernel, sharp) from a 160×160 crop of skimage's camera, 1 % noise, valid blur."""
    from skimage import data

    sharp = data.camera()[80:256, 180:356].astype(np.float32) / 255
    k = line_kernel(11, 30.0)
    blurry, gt = blur_valid(sharp, k, 0.01, seed=1)
    return blurry, k, gt


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((np.clip(a, 0, 1) - b) ** 2)))


def camera_crops(size: int = 90) -> list[np.ndarray]:
    """Six crops of scikit-image's camera picture on [0, 1]: small natural training images."""
    from skimage import data

    cam = data.camera().astype(np.float32) / 255
    return [cam[r : r + size, c : c + size] for r in (0, 200, 400) for c in (0, 250)]


def soft_volume_cascade():
    """A narrow volume cascade whose lateral and axial networks soft-threshold the gradient (tests only)."""
    from napari_fcnn_deblur.core.conditioned import NoiseMapCascade
    from napari_fcnn_deblur.core.denoiser import GradientDenoiser
    from napari_fcnn_deblur.core.volumetric import VolumeCascade

    planar = NoiseMapCascade(3, width=2)
    plain = soft_threshold_cascade(thresholds=(0.01, 0.005, 0.0025))
    for s in range(3):
        planar.denoisers[s].load_state_dict(GradientDenoiser.from_plain(plain.denoisers[s]).state_dict())
    with torch.no_grad():
        planar.gamma_coeffs.zero_()
        planar.gamma_coeffs[:, 0] = torch.log(torch.tensor([300.0, 200.0, 200.0, 200.0]))
    return VolumeCascade.from_planar(planar)


def slowed_steps(real, delay: float, threads: list[str] | None = None):
    """A ``steps`` method (``DeblurRun.steps``, ``VolumeRun.steps``: ``real``, the unpatched one) that waits
    ``delay`` s before each item and, with ``threads``, records the name of the thread computing it.

    For widget tests that cancel mid-run or watch the GUI thread: ``monkeypatch.setattr(DeblurRun, "steps",
    slowed_steps(DeblurRun.steps, 0.2))``.
    """

    def wrapper(self, *args, **kwargs):
        gen = real(self, *args, **kwargs)
        while True:
            time.sleep(delay)
            if threads is not None:
                threads.append(threading.current_thread().name)
            try:
                item = next(gen)
            except StopIteration:
                return
            yield item

    return wrapper
