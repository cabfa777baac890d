"""fcnn-deblur deblur --noise NUMBER|auto|MAP_FILE and --model noisemap|per-level|PATH: parsed, run, reported (issue 14)."""

import numpy as np
import pytest
import tifffile

from napari_fcnn_deblur import deblur
from napari_fcnn_deblur.cli import main


@pytest.fixture
def photon_case(tmp_path):
    from scipy.signal import fftconvolve
    from skimage import data

    from napari_fcnn_deblur.data.psf import gaussian_psf

    k = gaussian_psf(1.5)
    blur = fftconvolve(data.camera()[100:260, 150:310] / 255.0, k, mode="valid")
    rng = np.random.default_rng(0)
    img = (rng.poisson(100 * blur) / 100 + rng.normal(0, 0.005, blur.shape)).astype(np.float32)
    tifffile.imwrite(tmp_path / "img.tif", img)
    np.save(tmp_path / "k.npy", k)
    return img, k, ["deblur", str(tmp_path / "img.tif"), "-k", str(tmp_path / "k.npy"), "--iterations", "1"]


def test_noise_auto_reports_poisson_gaussian_and_the_model(photon_case, tmp_path, capsys):
    _, _, args = photon_case
    assert main(args + ["--noise", "auto", "-o", str(tmp_path / "out.tif"), "-q"]) == 0
    err = capsys.readouterr().err
    assert "estimated noise level: Poisson–Gaussian a=" in err and "b=" in err
    assert "model: noise-map cascade (default: the noise is not uniform Gaussian)" in err


def test_noise_map_file_and_named_models(photon_case, tmp_path, capsys):
    img, k, args = photon_case
    sd = np.full(img.shape, 0.04, np.float32)
    np.save(tmp_path / "sd.npy", sd)
    assert main(args + ["--noise", str(tmp_path / "sd.npy"), "-o", str(tmp_path / "a.tif")]) == 0
    err = capsys.readouterr().err
    assert "noise level: per-pixel noise map (RMS σ = 0.04" in err and "model: noise-map cascade" in err
    expected = deblur(img, k, noise_level=sd, iterations=1)
    np.testing.assert_allclose(tifffile.imread(tmp_path / "a.tif"), expected, atol=1e-6)
    assert main(args + ["--noise", "0.02", "--model", "per-level", "-o", str(tmp_path / "b.tif")]) == 0
    assert "noise level: σ = 0.02 (2.00 % of the [0, 1] range); model: per-level cascade 3 %" in capsys.readouterr().err


def test_bad_noise_arguments_are_refused_before_any_work(photon_case, tmp_path, capsys):
    _, _, args = photon_case
    for bad, message in [("loud", "expected a number, 'auto' or a noise map file"),
                         (str(tmp_path / "missing.npy"), "noise map file not found")]:
        with pytest.raises(SystemExit):
            main(args + ["--noise", bad, "-o", str(tmp_path / "x.tif")])
        assert message in capsys.readouterr().err
    np.save(tmp_path / "small.npy", np.full((5, 5), 0.02, np.float32))
    assert main(args + ["--noise", str(tmp_path / "small.npy"), "-o", str(tmp_path / "x.tif")]) != 0
    assert "noise map has shape (5, 5)" in capsys.readouterr().err
    assert not (tmp_path / "x.tif").exists()
