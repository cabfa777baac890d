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
    assert isinstance(c, NoiseMapCascade) and c.n_stages == 5 and c.width == 64 and c.refills == 20
    table = default_rule()
    assert table is not None and table["measured_by"] == "benchmarks/default_model.py"
    assert {0.01, 0.03, 0.05, 0.10} <= set(table["sigma"])
    assert len(table["noisemap_db"]) == len(table["per_level_db"]) == len(table["sigma"])


@pytest.mark.parametrize("kind, min_gain", [("widefield", 3.0), ("confocal", 5.0)])
def test_shipped_volume_cascade_deconvolves_a_held_out_camera_stack(kind, min_gain):
    """The shipped volume cascade (the default for a 3D PSF) on a uint16 camera stack of a structure it never
    trained on (hollow nuclei, a benchmark seed): 100 photons, 2 e⁻ read noise, offset 100, noise "auto";
    measured +4.6 / +7.3 dB (widefield / confocal)."""
    from napari_fcnn_deblur.data.phantoms import BENCHMARK_SEED_START, blur_volume, phantom_3d
    from napari_fcnn_deblur.data.psf3d import confocal_psf_3d, widefield_psf_3d

    psf = {"widefield": lambda: widefield_psf_3d((15, 21, 21), (0.25, 0.1, 0.1), 1.2, 0.52, 1.333),
           "confocal": lambda: confocal_psf_3d((15, 21, 21), (0.2, 0.08, 0.08), 1.4, 0.488, 0.52, 1.515)}[kind]()
    vol = phantom_3d((32, 64, 64), "hollow_nuclei", density=0.5, seed=BENCHMARK_SEED_START + 7)
    data, sharp = blur_volume(vol, psf, photons=100.0, read_noise=2.0, offset=100.0, rng=np.random.default_rng(5),
                              uint16=True)
    out = deblur(data, psf, "auto", device="cpu")
    assert out.shape == data.shape and out.dtype == np.float32

    def db(units):  # camera units → phantom units: (ADU − offset) / photons
        x = (np.asarray(units, np.float64) - 100.0) / 100.0
        return 10 * np.log10(float(sharp.max()) ** 2 / np.mean((x - sharp) ** 2))

    assert db(out) > db(data) + min_gain, (db(data), db(out))
