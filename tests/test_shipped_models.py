"""The cascades shipped in the package: present, loadable, and they really deblur at every level."""

import numpy as np
import pytest

from conftest import psnr
from napari_fcnn_deblur import deblur
from napari_fcnn_deblur.data.psf import gaussian_psf
from napari_fcnn_deblur.data.samples import blur_valid
from napari_fcnn_deblur.io.models import (
    TRAINED_NOISE_LEVELS,
    available_models,
    default_rule,
    load_cascade,
    noisemap_model_path,
    shipped_model_path,
)


def test_every_level_is_shipped():
    assert sorted(available_models()) == sorted(TRAINED_NOISE_LEVELS)
    for level in TRAINED_NOISE_LEVELS:
        c = load_cascade(shipped_model_path(level))
        assert c.n_stages == 3 and c.noise_level == pytest.approx(level)
        g = c.gammas.detach().numpy()
        assert np.all(g > 0) and np.all(np.diff(g) <= 0)  # later stages trust the data less
        assert c.metadata.get("trained_by") == "napari-fcnn-deblur train"  # ours, not an imported release


@pytest.mark.parametrize("level", TRAINED_NOISE_LEVELS)
def test_shipped_cascade_deblurs(level, camera_case):
    from skimage import data

    from napari_fcnn_deblur.data.motion_kernels import random_motion_kernel

    sharp = data.camera()[60:252, 150:342].astype(np.float32) / 255
    k = random_motion_kernel(np.random.default_rng(11), 17)
    blurry, gt = blur_valid(sharp, k, level, seed=4)
    out = deblur(blurry, k, noise_level=level, device="cpu")
    gain = psnr(out, gt) - psnr(blurry, gt)
    assert gain > {0.01: 5.0, 0.03: 3.0, 0.05: 2.5}[level], gain


def test_smooth_psf_also_improves():
    from skimage import data

    sharp = data.camera()[60:252, 150:342].astype(np.float32) / 255
    blurry, gt = blur_valid(sharp, gaussian_psf(1.5), 0.01, seed=5)
    assert psnr(deblur(blurry, gaussian_psf(1.5), noise_level=0.01), gt) > psnr(blurry, gt) + 1.5


def test_noisemap_cascade_is_shipped_with_its_default_table():
    """The noise-map cascade is installed and carries the measured table of the default choice."""
    from napari_fcnn_deblur.core.conditioned import NoiseMapCascade

    c = load_cascade(noisemap_model_path())
    assert isinstance(c, NoiseMapCascade) and c.n_stages == 4 and c.width == 64 and c.refills == 20
    table = default_rule()
    assert table is not None and table["measured_by"] == "benchmarks/default_model.py"
    assert {0.01, 0.03, 0.05, 0.10} <= set(table["sigma"])
    assert len(table["noisemap_db"]) == len(table["per_level_db"]) == len(table["sigma"])
