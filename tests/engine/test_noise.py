import numpy as np
import pytest

from napari_fcnn_deblur.data.psf import gaussian_psf, linear_motion_psf
from napari_fcnn_deblur.data.samples import blur_valid
from napari_fcnn_deblur.engine.noise import estimate_noise_level


@pytest.mark.parametrize("sigma", [0.01, 0.03, 0.05])
def test_estimate_within_30_percent(sigma):
    from skimage import data

    for sharp in (data.camera() / 255.0, data.moon() / 255.0):
        for k in (gaussian_psf(1.5), linear_motion_psf(15, 30)):
            blurry, _ = blur_valid(sharp.astype(np.float32), k, sigma, seed=2)
            est = estimate_noise_level(blurry)
            assert abs(est / sigma - 1) < 0.3, (sigma, est)


def test_uint16_scale():
    from skimage import data

    blurry, _ = blur_valid(data.camera().astype(np.float32) / 255, gaussian_psf(2.0), 0.03, seed=0)
    u16 = (np.clip(blurry, 0, 1) * 4000 + 100).astype(np.uint16)
    est = estimate_noise_level(u16)
    # the robust [0, 1] map stretches the used range a little: the estimate stays near 3 %
    assert 0.02 < est < 0.045


# ----------------------------------------------------------------------------- issue 14: σ or a·x + b, one estimator


def _camera_blurry(kernel_seed: int = 0) -> np.ndarray:
    """A noiseless blurred camera crop (full [0, 1] range: dark coat, bright sky)."""
    from scipy.signal import fftconvolve
    from skimage import data

    sharp = data.camera()[:320, 96:416] / 255.0
    return fftconvolve(sharp, gaussian_psf(1.5), mode="valid")


@pytest.mark.parametrize("sigma", [0.01, 0.03, 0.10])
def test_auto_gaussian_within_15_percent(sigma):
    from napari_fcnn_deblur.engine.intensity import intensity_scaling
    from napari_fcnn_deblur.engine.noise import estimate_noise

    blur = _camera_blurry()
    y = (blur + np.random.default_rng(3).normal(0, sigma, blur.shape)).astype(np.float32)
    est = estimate_noise(y)
    # on the run's [0, 1] scale: 10 % noise takes the values out of [-0.25, 1.25], so the robust map rescales
    true = sigma / intensity_scaling(y).scale
    assert est.kind == "gaussian" and est.estimated and est.a == 0
    assert abs(est.sigma / true - 1) < 0.15, (sigma, est.sigma, true)
    assert est.describe().startswith("σ = ")


@pytest.mark.parametrize("photons", [30, 100, 300])
def test_auto_poisson_gaussian_sigma_at_mid_intensity_within_15_percent(photons):
    from napari_fcnn_deblur.engine.intensity import intensity_scaling
    from napari_fcnn_deblur.engine.noise import estimate_noise

    read = 0.005
    blur = _camera_blurry()
    rng = np.random.default_rng(photons)
    y = (rng.poisson(photons * np.maximum(blur, 0)) / photons + rng.normal(0, read, blur.shape)).astype(np.float32)
    est = estimate_noise(y)
    sc = intensity_scaling(y)
    assert est.kind == "poisson-gaussian" and est.a > 0
    for x in (0.25, 0.5, 0.75):  # intensities on the run's scale, and the true s.d. there
        true = np.sqrt(max(float(sc.inverse(np.float32(x))), 0) / photons + read**2) / sc.scale
        assert abs(float(est.sd_at(x)) / true - 1) < 0.15, (photons, x, float(est.sd_at(x)), true)
    assert "Poisson–Gaussian a=" in est.describe() and "b=" in est.describe()


def test_auto_stays_gaussian_without_photon_noise_and_reads_stacks():
    """A flat-noise stack is Gaussian (a ≈ 0 falls back to σ); a photon-noise stack gives (a, b) from ≤ 16 planes."""
    from napari_fcnn_deblur.engine.noise import estimate_noise

    blur = _camera_blurry()[:200, :200]
    rng = np.random.default_rng(0)
    flat = np.stack([blur + rng.normal(0, 0.02, blur.shape) for _ in range(3)]).astype(np.float32)
    est = estimate_noise(flat)
    assert est.kind == "gaussian" and est.sigma == pytest.approx(0.02, rel=0.1)
    photon = np.stack([rng.poisson(100 * np.maximum(blur, 0)) / 100 for _ in range(20)]).astype(np.float32)
    est = estimate_noise(photon)
    assert est.kind == "poisson-gaussian" and est.a == pytest.approx(0.01, rel=0.15)


def test_noise_map_arrays_are_validated():
    from napari_fcnn_deblur.engine.layout import PlaneLayout
    from napari_fcnn_deblur.engine.noise import noise_map_level

    layout = PlaneLayout.of((2, 40, 50))
    assert noise_map_level(np.full((2, 40, 50), 0.02), layout).sigma == pytest.approx(0.02)
    one = noise_map_level(np.full((40, 50), 0.03), layout)  # one plane's map serves every plane
    assert one.sd_map.shape == (1, 40, 50) and one.sd_planes(np.zeros((2, 40, 50), np.float32)).shape == (2, 40, 50)
    with pytest.raises(ValueError, match=r"noise map has shape \(40, 49\).*image's shape \(2, 40, 50\)"):
        noise_map_level(np.full((40, 49), 0.02), layout)
    with pytest.raises(ValueError, match="between 0 and 0.5"):
        noise_map_level(np.full((40, 50), -0.01), layout)
    with pytest.raises(ValueError, match="NaN"):
        noise_map_level(np.full((40, 50), np.nan), layout)


def test_poisson_gaussian_sd_runs_in_chunks_of_planes_with_the_same_values(monkeypatch):
    from scipy.ndimage import uniform_filter

    from napari_fcnn_deblur.engine import noise

    level = noise.NoiseLevel("poisson-gaussian", 0.03, 0.002, 1e-4)
    planes = np.random.default_rng(1).random((6, 20, 24), dtype=np.float32)
    expected = level.sd_at(uniform_filter(planes, size=(1, 5, 5), mode="reflect")).astype(np.float32)
    np.testing.assert_array_equal(level.sd_planes(planes), expected)
    monkeypatch.setattr(noise, "SD_CHUNK_PIXELS", 2 * 20 * 24)  # two planes at a time
    np.testing.assert_array_equal(level.sd_planes(planes), expected)
    np.testing.assert_array_equal(level.sd_planes(planes, slice(2, 5)), expected[2:5])
