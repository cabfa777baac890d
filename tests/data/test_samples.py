"""Sample cases of napari_fcnn_deblur.data.samples: the photon-noise model and its true s.d. map."""

import numpy as np
import pytest

from napari_fcnn_deblur.data.psf import gaussian_psf
from napari_fcnn_deblur.data.samples import blur_valid, blur_valid_photons, poisson_gaussian_noise


def test_poisson_gaussian_noise_has_the_stated_mean_and_sd():
    clean = np.repeat(np.array([0.0, 0.1, 0.5, 1.0]), 50_000).reshape(4, -1)
    noisy, sd = poisson_gaussian_noise(clean, 100.0, 0.01, np.random.default_rng(0))
    assert noisy.shape == sd.shape == clean.shape
    expected = np.sqrt(clean[:, 0] / 100 + 0.01**2)
    np.testing.assert_allclose(sd[:, 0], expected)
    np.testing.assert_allclose(noisy.mean(axis=1), clean[:, 0], atol=4e-3)
    np.testing.assert_allclose(noisy.std(axis=1), expected, rtol=0.02)
    # deterministic for a seed; negative intensities count as 0
    again, _ = poisson_gaussian_noise(clean, 100.0, 0.01, np.random.default_rng(0))
    np.testing.assert_array_equal(noisy, again)
    _, sd_neg = poisson_gaussian_noise(np.full((2, 2), -0.1), 100.0, 0.01, np.random.default_rng(0))
    np.testing.assert_allclose(sd_neg, 0.01)
    with pytest.raises(ValueError, match="photons > 0"):
        poisson_gaussian_noise(clean, 0.0, 0.01, np.random.default_rng(0))


def test_blur_valid_photons_matches_blur_valid_geometry():
    rng = np.random.default_rng(1)
    sharp = rng.uniform(0, 1, (40, 50)).astype(np.float32)
    k = gaussian_psf(1.5)
    y, gt, sd = blur_valid_photons(sharp, k, 30.0, 0.005, seed=3)
    y0, gt0 = blur_valid(sharp, k, 0.0)
    assert y.shape == gt.shape == sd.shape == y0.shape and y.dtype == np.float32
    np.testing.assert_array_equal(gt, gt0)
    np.testing.assert_allclose(sd, np.sqrt(np.maximum(y0.astype(np.float64), 0) / 30 + 0.005**2), rtol=1e-5)
    assert np.array_equal(y, blur_valid_photons(sharp, k, 30.0, 0.005, seed=3)[0])
    assert not np.array_equal(y, blur_valid_photons(sharp, k, 30.0, 0.005, seed=4)[0])
