import warnings

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from napari_fcnn_deblur.data.psf import (
    center_psf,
    crop_psf,
    disk_psf,
    gaussian_psf,
    linear_motion_psf,
    load_psf,
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
