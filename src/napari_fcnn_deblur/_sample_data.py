"""Offline sample data for napari (File ▸ Open Sample ▸ FCNN deblur): a blurry image and its kernel."""

from __future__ import annotations

from typing import Any

import numpy as np

from .data.samples import Sample, fluorescence_sample, motion_blur_sample

LayerData = tuple[np.ndarray, dict[str, Any], str]

#: Gap (pixels) between the image and the kernel shown to its right.
KERNEL_GAP = 16


def _layers(sample: Sample, image_name: str, kernel_name: str, image_colormap: str) -> list[LayerData]:
    w = sample.blurry.shape[1]
    # The sharp original rides along in metadata so demos can measure the improvement.
    image_kwargs = {
        "name": image_name,
        "colormap": image_colormap,
        "contrast_limits": (0.0, 1.0),
        "metadata": {"sample": sample.name, "ground_truth": sample.sharp},
    }
    # Why the translate: at its true pixel size the kernel would hide the image's top-left corner,
    # so it is shown beside the image (the widget reads only its pixels, never its position).
    kernel_kwargs = {
        "name": kernel_name,
        "colormap": "inferno",
        "translate": (0.0, float(w + KERNEL_GAP)),
        "contrast_limits": (0.0, float(sample.kernel.max())),
        "metadata": {"sample": sample.name},
    }
    return [(sample.blurry, image_kwargs, "image"), (sample.kernel, kernel_kwargs, "image")]


def motion_blur_data() -> list[LayerData]:
    """The 'camera' photo blurred by a 21 × 21 camera-shake kernel, 1 % noise (two layers)."""
    return _layers(motion_blur_sample(noise_level=0.01), "blurry photo", "motion kernel", "gray")


def fluorescence_data() -> list[LayerData]:
    """A fluorescence-like phantom blurred by a Gaussian PSF (σ = 2 px), 1 % noise (two layers)."""
    return _layers(fluorescence_sample(noise_level=0.01), "blurry fluorescence", "PSF", "green")
