"""napari plugin contributions: npe2 manifest, sample data, .mat kernel reader."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
npe2 = pytest.importorskip("npe2")

from napari_fcnn_deblur import _reader, _sample_data  # noqa: E402
from napari_fcnn_deblur.io import matfiles  # noqa: E402

PLUGIN = "napari-fcnn-deblur"


def test_manifest_is_valid_and_importable():
    mf = npe2.PluginManifest.from_distribution(PLUGIN)
    mf.validate_imports()  # every python_name resolves
    assert [w.display_name for w in mf.contributions.widgets] == ["FCNN deblur"]
    assert {s.key for s in mf.contributions.sample_data} == {"motion_blur", "fluorescence"}
    assert mf.contributions.readers[0].filename_patterns == ["*.mat"]


def test_manifest_menu_and_icon():
    from importlib.resources import files

    mf = npe2.PluginManifest.from_distribution(PLUGIN)
    menus = mf.contributions.menus
    assert [item.command for item in menus["napari/layers/filter"]] == ["napari-fcnn-deblur.make_widget"]
    package, resource = mf.icon.split(":")
    icon = files(package) / resource
    assert icon.is_file()
    import imageio.v3 as iio

    img = iio.imread(icon)
    assert img.shape[0] == img.shape[1] >= 128  # square, at least 128 px (napari hub)


def test_widget_is_in_the_layers_filter_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    from napari._app_model import get_app_model

    items = get_app_model().menus.get_menu("napari/layers/filter")
    titles = [getattr(getattr(i, "command", None), "title", "") for i in items]
    assert any("FCNN deblur" in t for t in titles), titles
    del viewer


PROBE = """
import json, os, sys
import napari
from qtpy import API_NAME
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication

def check():
    v = napari.current_viewer()
    with open(os.environ["PROBE_OUT"], "w") as f:
        json.dump({"docks": list(v.window.dock_widgets), "qt": API_NAME}, f)
    QApplication.instance().quit()

QTimer.singleShot(2000, check)
"""


@pytest.mark.slow
def test_readme_napari_command_opens_the_widget(tmp_path):
    """The README's `napari -w napari-fcnn-deblur` in this environment (scripts/test.sh installs the README's
    `[all]` extra into a fresh one): napari starts with its Qt backend and docks the widget.  A script given
    after `--` (napari runs .py files) records the docked widgets and quits."""
    import json
    import os

    exe = shutil.which("napari", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("napari command not installed next to this Python")
    assert os.environ.get("DISPLAY"), "pytest-xvfb provides a virtual screen"
    probe, out = tmp_path / "probe.py", tmp_path / "probe.json"
    probe.write_text(PROBE)
    r = subprocess.run([exe, "-w", PLUGIN, "--", str(probe)], capture_output=True, text=True, timeout=240,
                       env={**os.environ, "PROBE_OUT": str(out)}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "No Qt bindings" not in r.stderr
    found = json.loads(out.read_text())
    assert any("FCNN deblur" in d for d in found["docks"]), found


def test_npe2_validate_command():
    exe = shutil.which("npe2", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("npe2 command not installed next to this Python")
    out = subprocess.run([exe, "validate", PLUGIN, "--imports"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_pyproject_declares_the_napari_plugin():
    import tomllib

    root = Path(__file__).resolve().parents[1]
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["napari.manifest"] == {PLUGIN: "napari_fcnn_deblur:napari.yaml"}
    assert "Framework :: napari" in meta["project"]["classifiers"]
    assert "Programming Language :: Python :: 3.13" in meta["project"]["classifiers"]
    assert any(r.startswith("napari[all]") for r in meta["project"]["optional-dependencies"]["all"])
    assert "User Support" in meta["project"]["urls"]
    assert any(r.startswith("setuptools>=77") for r in meta["build-system"]["requires"])  # str license + license-files
    assert "version" in meta["project"]  # the one version number; the package and the CLI read it from metadata


@pytest.mark.parametrize("make", [_sample_data.motion_blur_data, _sample_data.fluorescence_data])
def test_sample_data_gives_image_and_kernel(make):
    (image, image_kw, t1), (kernel, kernel_kw, t2) = make()
    assert t1 == t2 == "image"
    assert image.ndim == 2 and image.dtype == np.float32 and min(image.shape) > 256
    assert kernel.ndim == 2 and kernel.shape[0] % 2 == 1 and kernel.sum() == pytest.approx(1, abs=1e-5)
    assert image_kw["metadata"]["ground_truth"].shape == image.shape
    # the kernel sits beside the image, not on top of it
    assert kernel_kw["translate"][1] > image.shape[1]


def test_samples_open_in_napari(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "motion_blur")
    viewer.open_sample(PLUGIN, "fluorescence")
    assert [lyr.name for lyr in viewer.layers] == ["blurry photo", "motion kernel", "blurry fluorescence", "PSF"]


def test_mat_reader(tmp_path, make_napari_viewer):
    from scipy.io import savemat

    k = np.zeros((9, 9))
    k[4, 2:7] = 1 / 5
    cells = np.empty((1, 2), dtype=object)
    cells[0, 0], cells[0, 1] = k, k.T
    path = tmp_path / "kernels.mat"
    savemat(path, {"f": k, "set": cells, "label": "not an array", "scalar": 3.0})
    reader = _reader.napari_get_reader(str(path))
    assert reader is not None
    layers = reader(str(path))
    assert [kw["name"] for _, kw, _ in layers] == ["kernels f", "kernels set[0]", "kernels set[1]"]
    np.testing.assert_allclose(layers[0][0], k)

    viewer = make_napari_viewer()
    viewer.open(path, plugin=PLUGIN)
    assert "kernels f" in viewer.layers


def test_mat_reader_declines_other_files(tmp_path):
    (tmp_path / "x.mat").write_bytes(b"this is not a MAT file at all")
    assert _reader.napari_get_reader(str(tmp_path / "x.mat")) is None
    assert _reader.napari_get_reader(str(tmp_path / "kernel.npy")) is None  # napari reads .npy itself


def test_mat_reader_refuses_junk_and_huge_files(tmp_path, monkeypatch):
    from scipy.io import savemat

    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"\0" * 64 + b"not a MATLAB file" * 20)
    assert _reader.napari_get_reader(str(junk)) is None
    big = tmp_path / "big.mat"
    savemat(big, {"psf": np.zeros((40, 40)), "stack": np.zeros((30, 200, 200))}, do_compression=True)
    assert big.stat().st_size < 200_000  # small on disk, 1.2 M values inside
    monkeypatch.setattr(matfiles, "MAX_VALUES", 1_000_000)
    reader = _reader.napari_get_reader(str(big))
    assert reader is not None
    with pytest.raises(ValueError, match="more than the 1,000,000"):
        reader(str(big))
