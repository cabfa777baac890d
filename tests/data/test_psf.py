import warnings

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from conftest import SHARED, bead_crop, line_kernel, psnr
from napari_fcnn_deblur.data.motion_kernels import random_motion_kernel
from napari_fcnn_deblur.data.psf import (
    center_psf,
    crop_psf,
    disk_psf,
    frame_background,
    gaussian_psf,
    linear_motion_psf,
    load_psf,
    looks_measured,
    prepare_measured_psf,
    prepare_psf,
    widefield_psf,
)


def _check_kernel(k):
    assert k.ndim == 2 and k.shape[0] % 2 == 1 and k.shape[1] % 2 == 1
    assert k.dtype == np.float32 and k.min() >= 0
    assert np.isclose(k.sum(), 1.0, atol=1e-5)
    cy, cx = ndimage.center_of_mass(k.astype(np.float64))
    assert abs(cy - k.shape[0] // 2) < 0.05 and abs(cx - k.shape[1] // 2) < 0.05


def _second_moment(k):
    r = np.arange(k.shape[0]) - k.shape[0] // 2
    return float((k * r[:, None] ** 2).sum())


@pytest.mark.parametrize("sigma", [0.8, 1.5, 3.0])
def test_gaussian_width(sigma):
    k = gaussian_psf(sigma)
    _check_kernel(k)
    assert np.sqrt(_second_moment(k)) == pytest.approx(sigma, rel=0.02)


@pytest.mark.parametrize("radius", [3.0, 4.5, 7.0])
def test_disk_radius(radius):
    k = disk_psf(radius)
    _check_kernel(k)
    # a uniform disk's second moment per axis is R² / 4
    assert np.sqrt(4 * _second_moment(k)) == pytest.approx(radius, rel=0.05)


@pytest.mark.parametrize("length, angle", [(9, 0), (15, 30), (21, 90), (12, 135)])
def test_linear_motion_length(length, angle):
    k = linear_motion_psf(length, angle)
    _check_kernel(k)
    # a uniform segment of length L has variance L² / 12 along its direction
    yy, xx = np.mgrid[: k.shape[0], : k.shape[1]] - k.shape[0] // 2
    th = np.deg2rad(angle)
    along = xx * np.cos(th) - yy * np.sin(th)
    assert np.sqrt(12 * (k * along**2).sum()) == pytest.approx(length, rel=0.08)


def test_widefield_first_zero():
    na, lam, px = 1.4, 520.0, 40.0
    k = widefield_psf(na, lam, px)
    _check_kernel(k)
    c = k.shape[0] // 2
    profile = k[c, c:]
    airy_px = 0.61 * lam / na / px
    first_min = int(np.argmin(profile[: int(airy_px * 1.6)]))
    assert abs(first_min - airy_px) <= 1.0
    # FWHM of the Airy disk ≈ 0.51 λ / NA
    half = profile[0] / 2
    fwhm = 2 * np.interp(half, profile[::-1][-int(airy_px) - 1 :], np.arange(int(airy_px) + 1)[::-1])
    assert fwhm == pytest.approx(0.51 * lam / na / px, rel=0.2)


def test_center_and_crop():
    k = np.zeros((21, 21))
    k[3:6, 14:17] = 1.0  # off-centre blob
    c = center_psf(k)
    _check_kernel(c)
    assert crop_psf(c).shape == (3, 3)


def test_load_psf_3d_tiff(tmp_path):
    z = np.zeros((5, 31, 31), np.float32)
    z[3] = np.pad(gaussian_psf(2.0, 13), 9)
    z[3] = np.roll(z[3], (2, -3), axis=(0, 1)) * 1000 + 5  # off-centre, scaled, background
    tifffile.imwrite(tmp_path / "psf.tif", z)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        k = load_psf(tmp_path / "psf.tif")
    assert any("focal plane z=3" in str(x.message) for x in w)
    _check_kernel(k)
    assert np.sqrt(_second_moment(k)) == pytest.approx(2.0, rel=0.1)


def test_load_psf_npy_and_errors(tmp_path):
    np.save(tmp_path / "k.npy", linear_motion_psf(9, 0) * 7)
    _check_kernel(load_psf(tmp_path / "k.npy", background=False))
    np.save(tmp_path / "bad.npy", np.zeros((9, 9)))
    with pytest.raises(ValueError, match="no positive mass"):
        load_psf(tmp_path / "bad.npy")
    for bad in (lambda: gaussian_psf(0), lambda: disk_psf(-1), lambda: widefield_psf(0, 500, 50)):
        with pytest.raises(ValueError):
            bad()


# ----------------------------------------------------------------------------- measured PSFs


def test_prepare_measured_psf_removes_offset_recentres_and_crops():
    true = gaussian_psf(1.6)  # 15 × 15
    bead = bead_crop(true, shift=(3, -2), offset=100.0, peak=1000.0, noise=3.0)
    prepared = prepare_measured_psf(bead)
    assert prepared.measured and prepared.input_shape == (31, 31) and prepared.focal_plane is None
    assert prepared.background == pytest.approx(100.0, abs=1.0)
    assert prepared.noise_floor == pytest.approx(9.0, rel=0.25)  # 3 σ of the read noise
    assert prepared.shift == (-3, 2)
    np.testing.assert_allclose(prepared.centroid_offset, (3.0, -2.0), atol=0.15)
    k = prepared.kernel
    _check_kernel(k)
    assert k.shape[0] < 31 and k.shape[1] < 31  # cropped: the noise pedestal does not keep the whole crop
    assert np.sqrt(_second_moment(k)) == pytest.approx(1.6, rel=0.1)
    text = prepared.describe()
    for part in ("background 99", "recentred by (-3, +2) px", f"cropped from 31 × 31 to {k.shape[0]} × {k.shape[1]}",
                 "normalised to sum 1"):
        assert part in text, text


def test_prepare_measured_psf_on_a_3d_bead_uses_its_focal_plane():
    stack = np.stack([bead_crop(gaussian_psf(s), seed=i, peak=p) for i, (s, p) in enumerate([(3, 300), (1.6, 1000),
                                                                                              (3, 300)])])
    prepared = prepare_measured_psf(stack)
    assert prepared.focal_plane == 1 and "focal plane z=1" in prepared.describe()
    assert np.sqrt(_second_moment(prepared.kernel)) == pytest.approx(1.6, rel=0.1)
    with pytest.raises(ValueError, match="no positive mass after subtracting its background"):
        prepare_measured_psf(np.full((9, 9), 100.0))
    with pytest.raises(ValueError, match="2D or 3D"):
        prepare_measured_psf(np.ones((2, 2, 5, 5)))


def _computed_kernels() -> dict[str, np.ndarray]:
    kernels = {
        "gaussian": gaussian_psf(2.0),
        "airy": widefield_psf(1.4, 520, 40),
        "disk": disk_psf(3.0),
        "tiny disk": disk_psf(1.0),
        "linear motion": linear_motion_psf(15, 30),
        "line": line_kernel(11, 30.0),
        "random motion": random_motion_kernel(np.random.default_rng(3), 15),
        "box": np.full((5, 5), 1 / 25),
        "png motion": np.rint(random_motion_kernel(np.random.default_rng(4), 19) * 255 * 8).clip(0, 255)
        .astype(np.uint8),
    }
    for path in sorted((SHARED / "data" / "kernels" / "levin").glob("levin_*.npy")):
        kernels[path.stem] = np.load(path)
    return kernels


@pytest.mark.parametrize("name", list(_computed_kernels()))
def test_auto_leaves_computed_kernels_untouched(name):
    k = _computed_kernels()[name]
    assert not looks_measured(k)
    prepared = prepare_psf(k, "auto")
    assert prepared.kernel is k and not prepared.measured  # the very same array: results are bit-identical
    assert prepared.describe() == "used as it is"


def test_auto_prepares_measured_psfs_and_modes():
    bead = bead_crop(gaussian_psf(1.6))
    assert looks_measured(bead)
    assert prepare_psf(bead, "auto").measured
    # a bead whose offset was already subtracted by the user: noise around 0, negative values
    subtracted = bead.astype(np.float64) - 100.0
    assert frame_background(subtracted) == pytest.approx(0, abs=1) and looks_measured(subtracted)
    assert prepare_psf(subtracted, "auto").measured
    assert prepare_psf(bead, "raw").kernel is bead
    motion = line_kernel(11, 30.0)
    forced = prepare_psf(motion, "measured")
    assert forced.measured and forced.kernel.sum() == pytest.approx(1.0, abs=1e-5)
    centroid = np.array(ndimage.center_of_mass(forced.kernel.astype(np.float64)))
    assert np.all(np.abs(centroid - np.array(forced.kernel.shape) // 2) <= 0.5)  # an exact integer recentring
    stack = np.stack([bead_crop(gaussian_psf(2.0), seed=1, peak=300), bead, bead_crop(gaussian_psf(2.0), seed=2, peak=300)])
    assert prepare_psf(stack, "auto").kernel is stack  # a 3D PSF stays 3D: the engine deconvolves volumes with it
    assert prepare_psf(stack, "measured").focal_plane == 1  # as load_psf: its focal plane
    with pytest.raises(ValueError, match="one of auto, measured, raw"):
        prepare_psf(motion, "clean")
    bad = motion.copy()
    bad[0, 0] = np.nan
    assert prepare_psf(bad, "auto").kernel is bad  # left to the engine's kernel check (a clear NaN message)


def test_measured_bead_deblurs_like_the_true_psf(known_model_file):
    """A bead crop on 100 counts of offset, 3 px off-centre, with noise: prepared, it deblurs like the true PSF."""
    from skimage import data

    from napari_fcnn_deblur import deblur
    from napari_fcnn_deblur.data.samples import blur_valid

    true = gaussian_psf(1.6)
    sharp = data.camera()[100:228, 200:328].astype(np.float32) / 255
    blurry, gt = blur_valid(sharp, true, 0.01, seed=1)
    bead = bead_crop(true, shift=(3, -2))
    results = {
        name: psnr(deblur(blurry, k, 0.01, 2, "cpu", known_model_file), gt)
        for name, k in (("true", true), ("prepared", prepare_psf(bead).kernel), ("raw", bead))
    }
    assert results["prepared"] > results["true"] - 0.3, results
    assert results["prepared"] > results["raw"] + 10, results  # the raw crop is a box on the offset, off-centre
