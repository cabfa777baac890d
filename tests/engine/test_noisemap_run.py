"""The noise-map cascade through the engine (issue 14): the noise reaches the network, the default model, the report."""

import numpy as np
import pytest

from conftest import psnr
from napari_fcnn_deblur import deblur, deblur_stages
from napari_fcnn_deblur.data.samples import blur_valid
from napari_fcnn_deblur.engine.run import DeblurRun
from napari_fcnn_deblur.io import models as model_io


def _sharp(size: int = 128) -> np.ndarray:
    from skimage import data

    return data.camera()[60 : 60 + size, 150 : 150 + size].astype(np.float64) / 255


def _kernel() -> np.ndarray:
    from napari_fcnn_deblur.data.motion_kernels import random_motion_kernel

    return random_motion_kernel(np.random.default_rng(11), 15)


def _roughness(img: np.ndarray) -> float:
    """Mean squared horizontal and vertical differences: lower is smoother."""
    return float(np.mean(np.diff(img, axis=0) ** 2) + np.mean(np.diff(img, axis=1) ** 2))


def test_the_noise_map_reaches_the_network_more_noise_smoother():
    """Same image, same γ (same σ_eff per plane): only the map's layout differs, and the noisier half comes out smoother."""
    k = _kernel()
    blurry, _ = blur_valid(_sharp(), k, 0.03, seed=1)
    h, w = blurry.shape
    left = np.full(blurry.shape, 0.01, np.float32)
    left[:, w // 2 :] = 0.06
    right = left[:, ::-1].copy()  # the same values, so the same σ_eff and γ: only the network sees a difference
    kw = dict(model="noisemap", intensity_range=(0, 1), device="cpu")
    a, b = deblur(blurry, k, noise_level=left, **kw), deblur(blurry, k, noise_level=right, **kw)
    lo, hi = (slice(8, h - 8), slice(8, w // 2 - 8)), (slice(8, h - 8), slice(w // 2 + 8, w - 8))
    # left half: told 1 % in a, 6 % in b → b smoother there; right half the other way round
    assert _roughness(b[lo]) < 0.8 * _roughness(a[lo])
    assert _roughness(a[hi]) < 0.8 * _roughness(b[hi])
    # and a constant map is the float noise level
    flat = deblur(blurry, k, noise_level=np.full(blurry.shape, 0.03, np.float32), **kw)
    np.testing.assert_allclose(flat, deblur(blurry, k, noise_level=0.03, **kw), atol=1e-5)


def test_default_at_10_percent_beats_the_5_percent_cascade():
    k = _kernel()
    blurry, gt = blur_valid(_sharp(144), k, 0.10, seed=2)
    kw = dict(noise_level=0.10, intensity_range=(0, 1), device="cpu")
    stages = list(deblur_stages(blurry, k, **kw))
    default = stages[-1]
    assert default.model.startswith("noise-map cascade (default")
    assert default.noise.kind == "gaussian" and default.noise_level == pytest.approx(0.10)
    per_level = deblur(blurry, k, model="per-level", **kw)
    gain = psnr(default.image, gt) - psnr(per_level, gt)
    assert gain > 1.0, gain


def test_photon_noise_auto_runs_the_noise_map_with_the_estimated_function():
    k = _kernel()
    sharp = _sharp(160)
    from scipy.signal import fftconvolve

    blur = fftconvolve(sharp, k, mode="valid")
    oy, ox = k.shape[0] // 2, k.shape[1] // 2
    gt = sharp[oy : oy + blur.shape[0], ox : ox + blur.shape[1]]
    rng = np.random.default_rng(5)
    y = (rng.poisson(60 * np.maximum(blur, 0)) / 60 + rng.normal(0, 0.005, blur.shape)).astype(np.float32)
    run = DeblurRun.prepare(y, k, "auto", device="cpu", intensity_range=(0, 1))
    assert run.noise.kind == "poisson-gaussian" and run.uses_noise_map
    assert run.noise.a == pytest.approx(1 / 60, rel=0.25)
    assert "not uniform Gaussian" in run.model_description
    out = run.deblur(y)
    per_level = deblur(y, k, "auto", model="per-level", device="cpu", intensity_range=(0, 1))
    assert psnr(out, gt) > psnr(per_level, gt) + 0.5


def test_per_level_files_still_load_and_run_and_say_so():
    k = _kernel()
    blurry, gt = blur_valid(_sharp(), k, 0.03, seed=3)
    path = model_io.shipped_model_path(0.03)
    res = list(deblur_stages(blurry, k, 0.03, model=path, device="cpu"))[-1]
    assert res.model == f"cascade file {path.name}" and psnr(res.image, gt) > psnr(blurry, gt) + 2
    named = list(deblur_stages(blurry, k, 0.02, model="per-level", device="cpu"))[-1]
    assert named.model.startswith("per-level cascade 3 %")  # nearest to 2 %: ties go up
    np.testing.assert_array_equal(deblur(blurry, k, 0.03, model="PER-LEVEL", device="cpu"), res.image)


def test_tiled_noise_map_run_matches_the_whole_plane():
    k = _kernel()
    blurry, _ = blur_valid(_sharp(112), k, 0.03, seed=4)
    sd = np.linspace(0.01, 0.05, blurry.size, dtype=np.float32).reshape(blurry.shape)
    kw = dict(noise_level=sd, model="noisemap", device="cpu", iterations=2)
    whole = deblur(blurry, k, **kw)
    tiled = deblur(blurry, k, tile_size=64, **kw)
    np.testing.assert_allclose(tiled, whole, atol=2e-5)


def test_noise_map_arguments_are_checked_at_the_boundary():
    k = _kernel()
    blurry, _ = blur_valid(_sharp(), k, 0.03, seed=5)
    with pytest.raises(ValueError, match=r"noise map has shape \(10, 10\); it must have the image's shape"):
        deblur(blurry, k, noise_level=np.full((10, 10), 0.02))
    with pytest.raises(ValueError, match="one level per channel needs channel_axis"):
        deblur(blurry, k, noise_level=[0.01, 0.02])
    da = pytest.importorskip("dask.array")
    with pytest.raises(ValueError, match="needs a numpy image"):
        deblur(da.from_array(blurry), k, noise_level=np.full(blurry.shape, 0.02))
    with pytest.raises(ValueError, match="'noisemap', 'per-level'"):
        deblur(blurry, k, model=3)
    with pytest.raises(FileNotFoundError, match="or give one of noisemap, per-level"):
        deblur(blurry, k, model="noise-map")


def test_channels_get_their_slice_of_the_noise_map_and_dask_follows_the_estimate():
    k = _kernel()
    a, _ = blur_valid(_sharp(), k, 0.02, seed=6)
    b, _ = blur_valid(_sharp()[::-1].copy(), k, 0.02, seed=7)
    img = np.stack([a, b])  # (C, Y, X)
    sd = np.stack([np.full(a.shape, 0.02, np.float32), np.full(a.shape, 0.06, np.float32)])
    kw = dict(model="noisemap", device="cpu", iterations=1, intensity_range=(0, 1))
    both = deblur(img, k, noise_level=sd, channel_axis=0, **kw)
    np.testing.assert_allclose(both[1], deblur(b, k, noise_level=0.06, **kw), atol=1e-5)
    da = pytest.importorskip("dask.array")
    lazy = deblur(da.from_array(img, chunks=(1,) + a.shape), k, noise_level="auto", **kw).compute()
    np.testing.assert_allclose(lazy, deblur(img, k, noise_level="auto", **kw), atol=1e-5)


def test_a_callers_noise_map_is_never_aliased_and_read_only_maps_run_quietly():
    """One plane's map (the engine broadcasts it) or a read-only one: no torch warning, the caller's array
    untouched and not shared with the run; the same result as a writable copy."""
    import warnings

    k = _kernel()
    blurry, _ = blur_valid(_sharp(64), k, 0.03, seed=2)
    sd = np.full(blurry.shape, 0.03, np.float32)
    frozen = sd.copy()
    frozen.setflags(write=False)
    kw = dict(model="noisemap", intensity_range=(0, 1), device="cpu", iterations=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it wraps a read-only array
        out_frozen = deblur(blurry, k, noise_level=frozen, **kw)
        out_stack = deblur(np.stack([blurry, blurry]), k, noise_level=frozen, **kw)  # one plane's map, 2 planes
    out = deblur(blurry, k, noise_level=sd, **kw)
    np.testing.assert_array_equal(out_frozen, out)
    # a batch of two planes may take other oneDNN kernels than one plane (seen on an AMX CPU: 7e-7 apart)
    np.testing.assert_allclose(out_stack[1], out, rtol=0, atol=1e-5)
    run = DeblurRun.prepare(blurry, k, noise_level=sd, **kw)
    assert not np.shares_memory(run.noise.sd_map, sd)
    np.testing.assert_array_equal(sd, np.float32(0.03))
