import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from conftest import psnr
from napari_fcnn_deblur.cli import main


@pytest.fixture
def files(tmp_path, camera_case):
    blurry, k, gt = camera_case
    img = tmp_path / "blurry.png"
    iio.imwrite(img, (blurry.clip(0, 1) * 255).round().astype(np.uint8))
    kern = tmp_path / "kernel.npy"
    np.save(kern, k)
    return img, kern, gt


def test_png_round_trip(files, tmp_path, known_model_file):
    img, kern, gt = files
    out = tmp_path / "out.png"
    assert main(["deblur", str(img), "--kernel", str(kern), "--model", str(known_model_file), "-o", str(out), "-q"]) == 0
    res = iio.imread(out)
    assert res.dtype == np.uint8 and res.shape == gt.shape
    blurry = iio.imread(img)
    assert psnr(res / 255.0, gt) > psnr(blurry / 255.0, gt) + 2


def test_refuses_to_overwrite(files, tmp_path, known_model_file, capsys):
    img, kern, _ = files
    out = tmp_path / "out.tif"
    out.write_bytes(b"precious")
    args = ["deblur", str(img), "--kernel", str(kern), "--model", str(known_model_file), "-o", str(out), "-q"]
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert main(args + ["--overwrite"]) == 0
    assert tifffile.imread(out).dtype == np.float32


def test_save_stages_and_bad_kernel(files, tmp_path, known_model_file, capsys):
    img, kern, _ = files
    out = tmp_path / "res.tif"
    assert main(["deblur", str(img), "-k", str(kern), "--model", str(known_model_file), "-o", str(out), "--save-stages",
                 "--iterations", "2", "-q"]) == 0
    assert sorted(p.name for p in tmp_path.glob("res_stage*.tif")) == ["res_stage0.tif", "res_stage1.tif", "res_stage2.tif"]
    np.save(tmp_path / "zero.npy", np.zeros((5, 5)))
    assert main(["deblur", str(img), "-k", str(tmp_path / "zero.npy"), "--model", str(known_model_file),
                 "-o", str(tmp_path / "x.tif")]) == 2
    assert "all zero" in capsys.readouterr().err
    assert not (tmp_path / "x.tif").exists()


def test_console_script_installed():
    r = subprocess.run([sys.executable, "-m", "napari_fcnn_deblur.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "deblur" in r.stdout


def test_core_imports_without_qt():
    code = (
        "import sys; import napari_fcnn_deblur, napari_fcnn_deblur.cli; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', 'PySide2', 'PySide6', 'magicgui')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_default_runs_every_stage_of_the_model(files, tmp_path):
    """Without --iterations, a 4-stage model gives 4 stages (not a fixed 3)."""
    from conftest import soft_threshold_cascade
    from napari_fcnn_deblur.io.models import save_cascade

    img, kern, _ = files
    four = save_cascade(
        soft_threshold_cascade(4, thresholds=(0.02, 0.01, 0.005, 0.003), gammas=(200.0, 60.0, 20.0, 5.0, 2.0)),
        tmp_path / "four.safetensors",
    )
    out = tmp_path / "res.tif"
    assert main(["deblur", str(img), "-k", str(kern), "--model", str(four), "-o", str(out), "--save-stages", "-q"]) == 0
    assert sorted(p.name for p in tmp_path.glob("res_stage*.tif")) == [f"res_stage{s}.tif" for s in range(5)]
    np.testing.assert_array_equal(tifffile.imread(out), tifffile.imread(tmp_path / "res_stage4.tif"))


def test_a_kernel_path_that_is_a_folder_or_not_an_image_is_a_one_line_error(tmp_path):
    img = tmp_path / "in.npy"
    np.save(img, np.random.default_rng(0).random((40, 40)).astype(np.float32))
    (tmp_path / "kdir").mkdir()
    (tmp_path / "junk.png").write_bytes(b"not an image")
    for kernel in (tmp_path / "kdir", tmp_path / "junk.png"):
        r = subprocess.run([sys.executable, "-m", "napari_fcnn_deblur.cli", "deblur", str(img), "-k", str(kernel),
                            "-o", str(tmp_path / "out.tif")], capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("error:") and "Traceback" not in r.stderr, r.stderr


def test_models_lists_every_shipped_cascade(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for title, fmt, stages, width in [
            ("noise-map cascade (the default; model='noisemap')", "napari-fcnn-deblur-noisemap/1", 5, 64),
            ("per-level cascade 1 % (model='per-level')", "napari-fcnn-deblur-cascade/1", 3, 64),
            ("per-level cascade 3 % (model='per-level')", "napari-fcnn-deblur-cascade/1", 3, 64),
            ("per-level cascade 5 % (model='per-level')", "napari-fcnn-deblur-cascade/1", 3, 64),
            ("volume cascade (3D PSFs)", "napari-fcnn-deblur-volume/1", 3, 16)]:
        assert title in out, title
        block = out[out.index(title):].split("\n")[1:4]
        assert block[0].startswith("  file: ") and block[0].endswith(" MB)"), block
        assert block[1].startswith(f"  format: {fmt}, {stages} stages, width {width}"), block
        assert block[2].startswith("  for: "), block
    assert "default (model=None): " in out and "not installed" not in out
    assert "model='per-level' picks it for σ < 2 %" in out and "picks it for σ ≥ 4 %" in out


def test_models_says_what_is_missing_and_the_default_rule(tmp_path, monkeypatch, capsys):
    import json

    from napari_fcnn_deblur.core.cascade import Cascade
    from napari_fcnn_deblur.core.conditioned import NoiseMapCascade
    from napari_fcnn_deblur.io import models as model_io

    table = {"sigma": [0.01, 0.05], "noisemap_db": [30.0, 26.0], "per_level_db": [30.2, 25.0],
             "date": "2026-01-02", "measured_by": "benchmarks/default_model.py"}
    nm = NoiseMapCascade(2, width=4, metadata={model_io.DEFAULT_RULE_KEY: json.dumps(table)})
    nm_path = model_io.save_cascade(nm, tmp_path / "nm.safetensors")
    one = model_io.save_cascade(Cascade(2, noise_level=0.01, width=4), tmp_path / "fcnn_noise0.01.safetensors")
    monkeypatch.setattr(model_io, "noisemap_model_path", lambda: nm_path)
    monkeypatch.setattr(model_io, "shipped_model_path",
                        lambda level: one if level == 0.01 else tmp_path / f"missing{level:.2f}.safetensors")
    monkeypatch.setattr(model_io, "volume_model_path", lambda: tmp_path / "no_volume.safetensors")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert f"  file: {nm_path} (" in out and "kB)" in out
    assert "  format: napari-fcnn-deblur-noisemap/1, 2 stages, width 4" in out
    assert ("default (model=None): used for Poisson–Gaussian noise, noise maps and Gaussian noise except near "
            "σ = 1 %, where the nearest per-level cascade measured better (by 0.20 dB)") in out
    assert "table: measured 2026-01-02 by benchmarks/default_model.py at Gaussian σ = 1, 5 %" in out
    assert "picks it for σ < 2 %; default (model=None) for Gaussian σ near 1 %" in out
    assert f"per-level cascade 3 % (model='per-level')\n  not installed (expected {tmp_path / 'missing0.03.safetensors'})" in out
    assert "volume cascade (3D PSFs)\n  not installed" in out
    # without the noise-map file the default is the per-level cascade
    monkeypatch.setattr(model_io, "noisemap_model_path", lambda: tmp_path / "none.safetensors")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "noise-map cascade (the default; model='noisemap')\n  not installed" in out
    assert "default (model=None): the nearest per-level cascade instead (this one is not installed)" in out
    assert "picks it for σ < 2 %; also the default (model=None) there" in out
