"""``fcnn-deblur deblur -k``: measured PSFs are prepared like ``psf.load_psf``; computed kernels are used unchanged."""

import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from conftest import SHARED, bead_crop, line_kernel, psnr
from napari_fcnn_deblur import deblur
from napari_fcnn_deblur.cli import main
from napari_fcnn_deblur.data.motion_kernels import random_motion_kernel
from napari_fcnn_deblur.data.psf import gaussian_psf
from napari_fcnn_deblur.data.samples import blur_valid


@pytest.fixture(scope="module")
def gaussian_case():
    """A 128 × 128 'camera' crop blurred by a Gaussian PSF (σ = 1.6 px), 1 % noise, and its ground truth."""
    from skimage import data

    sharp = data.camera()[100:228, 200:328].astype(np.float32) / 255
    blurry, gt = blur_valid(sharp, gaussian_psf(1.6), 0.01, seed=1)
    return blurry, gt


def test_a_measured_bead_is_prepared_and_deblurs_like_the_true_psf(tmp_path, gaussian_case, known_model_file):
    blurry, gt = gaussian_case
    np.save(tmp_path / "blurry.npy", blurry)
    tifffile.imwrite(tmp_path / "bead.tif", bead_crop(gaussian_psf(1.6), shift=(3, -2), offset=100.0))  # uint16
    np.save(tmp_path / "true.npy", gaussian_psf(1.6))
    common = ["--model", str(known_model_file), "--iterations", "2", "--noise", "0.01", "--device", "cpu"]
    r = subprocess.run([sys.executable, "-m", "napari_fcnn_deblur.cli", "deblur", str(tmp_path / "blurry.npy"),
                        "-k", str(tmp_path / "bead.tif"), "-o", str(tmp_path / "bead.npy"), *common],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "bead.tif: measured PSF: background 99" in r.stderr and "recentred by (-3, +2) px" in r.stderr, r.stderr
    assert main(["deblur", str(tmp_path / "blurry.npy"), "-k", str(tmp_path / "true.npy"), "-o",
                 str(tmp_path / "true_out.npy"), "-q", *common]) == 0
    assert main(["deblur", str(tmp_path / "blurry.npy"), "-k", str(tmp_path / "bead.tif"), "--kernel-prep", "raw",
                 "-o", str(tmp_path / "raw.npy"), "-q", *common]) == 0
    got = {name: psnr(np.load(tmp_path / f"{name}.npy"), gt) for name in ("bead", "true_out", "raw")}
    assert got["bead"] > got["true_out"] - 0.3, got
    assert got["bead"] > got["raw"] + 10, got  # as it is, the crop is a box on the offset, off-centre


def _kernel_files(tmp_path) -> list:
    np.save(tmp_path / "line.npy", line_kernel(11, 30.0))
    png = np.rint(random_motion_kernel(np.random.default_rng(4), 19) * 255 * 8).clip(0, 255).astype(np.uint8)
    iio.imwrite(tmp_path / "motion.png", png)
    files = [tmp_path / "line.npy", tmp_path / "motion.png"]
    levin = SHARED / "data" / "kernels" / "levin" / "levin_4.npy"  # its centroid is 2 px off the middle
    return files + ([levin] if levin.is_file() else [])


def test_computed_kernels_give_bit_identical_results(tmp_path, gaussian_case, known_model_file, capsys):
    blurry, _ = gaussian_case
    np.save(tmp_path / "blurry.npy", blurry[:72, :72])
    common = ["--model", str(known_model_file), "--iterations", "1", "--device", "cpu"]
    for kernel in _kernel_files(tmp_path):
        outs = {}
        for prep in ("auto", "raw"):
            out = tmp_path / f"{kernel.stem}_{prep}.npy"
            assert main(["deblur", str(tmp_path / "blurry.npy"), "-k", str(kernel), "--kernel-prep", prep,
                         "-o", str(out), *common]) == 0
            outs[prep] = np.load(out)
        assert "measured PSF" not in capsys.readouterr().err
        np.testing.assert_array_equal(outs["auto"], outs["raw"])
        k = np.load(kernel) if kernel.suffix == ".npy" else iio.imread(kernel)
        expected = deblur(blurry[:72, :72], k.astype(np.float64), 0.01, 1, "cpu", known_model_file)
        np.testing.assert_array_equal(outs["auto"], expected)  # what the kernel gave before: no preparation


def test_a_kernel_that_cannot_be_a_measured_psf_is_a_one_line_error(tmp_path, known_model_file, capsys):
    np.save(tmp_path / "img.npy", np.random.default_rng(0).random((40, 40)).astype(np.float32))
    np.save(tmp_path / "flat.npy", np.full((9, 9), 100.0))
    assert main(["deblur", str(tmp_path / "img.npy"), "-k", str(tmp_path / "flat.npy"), "--kernel-prep", "measured",
                 "--model", str(known_model_file), "-o", str(tmp_path / "out.npy")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: kernel ") and "flat.npy: the PSF has no positive mass" in err, err
    assert not (tmp_path / "out.npy").exists()
