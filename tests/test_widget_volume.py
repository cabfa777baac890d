"""The widget on z-stacks with a 3D PSF: volumetric runs (VolumeRun), previews of a slab, generated 3D PSFs,
voxel sizes, errors, cancel.  Headless (pytest-qt + pytest-xvfb); the model is the narrow hand-set volume
cascade of conftest (its networks soft-threshold the gradients), saved to a file and picked as "model file".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

import test_widget  # noqa: E402
from conftest import slowed_steps, soft_volume_cascade  # noqa: E402
from napari_fcnn_deblur import _widget as widget_module  # noqa: E402
from napari_fcnn_deblur import deblur, save_cascade  # noqa: E402
from napari_fcnn_deblur._widget import (  # noqa: E402
    AUTO,
    CONFOCAL_3D,
    CURRENT_PLANE,
    DEFAULT_MODEL,
    NOISEMAP,
    NUMBER,
    PER_LEVEL,
    WHOLE_LAYER,
    WIDEFIELD_3D,
)
from napari_fcnn_deblur.data.phantoms import blur_volume, phantom_3d  # noqa: E402
from napari_fcnn_deblur.data.psf3d import widefield_psf_3d  # noqa: E402
from napari_fcnn_deblur.engine.volume import VolumeRun  # noqa: E402
from test_widget import open_widget, run_and_wait, shown, snapshot  # noqa: E402

notes = test_widget.notes  # the fixture: notifications shown during the test

SPACING = (0.3, 0.1, 0.1)  # µm: dz, dy, dx
PHOTONS, OFFSET = 1000.0, 100.0


@pytest.fixture(scope="module")
def volume_model(tmp_path_factory) -> Path:
    return save_cascade(soft_volume_cascade(), tmp_path_factory.mktemp("models") / "volume.safetensors")


@pytest.fixture(scope="module")
def stack() -> dict[str, np.ndarray]:
    """A camera z-stack (uint16, offset 100, photon and read noise) of filaments, 12 × 40 × 40, its 5 × 9 × 9
    widefield PSF and the sharp truth."""
    psf = widefield_psf_3d((5, 9, 9), SPACING, 1.2, 0.52, 1.333)
    vol = phantom_3d((16, 48, 48), "filaments", density=0.6, seed=3)
    data, sharp = blur_volume(vol, psf, photons=PHOTONS, read_noise=1.0, offset=OFFSET,
                              rng=np.random.default_rng(0), uint16=True)
    return {"data": data, "psf": psf, "sharp": sharp}


def psnr(camera: np.ndarray, sharp: np.ndarray) -> float:
    x = (np.asarray(camera, np.float64) - OFFSET) / PHOTONS
    return float(10 * np.log10(1.0 / np.mean((x - sharp) ** 2)))


def volume_viewer(make_napari_viewer, stack, model, psf_scale=SPACING, **image_kw):
    viewer = make_napari_viewer()
    kw = {"scale": SPACING, "units": ("um",) * 3, **image_kw}
    viewer.add_image(stack["data"].copy(), name="cells", **kw)
    viewer.add_image(stack["psf"].copy(), name="psf", scale=psf_scale, units=("um",) * 3)
    widget = open_widget(viewer, model)
    # a computed PSF, used as it is (whether 'auto' takes a small computed 3D box for a bead stack is
    # psf.looks_measured's rule, tested with the data layer)
    widget.kernel_prep.value = "raw"
    return viewer, widget


def test_volume_run_adds_3d_stage_layers_with_the_source_frame(make_napari_viewer, qtbot, stack, volume_model,
                                                               notes):
    viewer, widget = volume_viewer(make_napari_viewer, stack, volume_model, translate=(1.0, 2.0, 3.0),
                                   metadata={"channel": "GFP"}, axis_labels=("z", "y", "x"))
    assert widget.kernel_layer.value is viewer.layers["psf"]
    assert "volume (Z, Y, X) with a 3D PSF: 3D deconvolution" in widget.layout_info.value
    assert widget.noise_mode.value == AUTO  # camera z-stacks: the noise is estimated
    widget.scope.value = WHOLE_LAYER
    widget.run_button.clicked.emit()
    assert "volume (Z, Y, X) with a 3D PSF: 3D deconvolution" in widget.status.value
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    assert not [n for n in notes() if n[0] == "error"], notes()
    assert [lyr.name for lyr in viewer.layers] == ["cells", "psf"] + [f"cells stage {k}" for k in range(4)]
    src = viewer.layers["cells"]
    for k in range(4):
        out = viewer.layers[f"cells stage {k}"]
        assert out.data.shape == stack["data"].shape and out.data.dtype == np.float32
        np.testing.assert_allclose(out.scale, SPACING)
        np.testing.assert_allclose(out.translate, (1.0, 2.0, 3.0))
        assert tuple(out.units) == tuple(src.units) and tuple(out.axis_labels) == ("z", "y", "x")
        meta = out.metadata["napari_fcnn_deblur"]
        assert out.metadata["channel"] == "GFP" and meta["volumetric"] and meta["stage"] == k
        assert meta["kernel_shape"] == (5, 9, 9) and meta["noise"].startswith("Poisson–Gaussian")
    assert widget.progress.value == widget.progress.max == 4  # volume-steps
    assert "estimated noise: Poisson–Gaussian" in widget.status.value  # the engine's estimate, in words
    assert f"model: volume cascade {volume_model}" in widget.status.value
    assert viewer.layers["cells stage 3"].metadata["napari_fcnn_deblur"]["model"] == f"volume cascade {volume_model}"
    final = viewer.layers["cells stage 3"].data
    gain = psnr(final, stack["sharp"]) - psnr(stack["data"], stack["sharp"])
    assert gain > 2.0, f"PSNR gain only {gain:.2f} dB"
    expected = deblur(stack["data"], stack["psf"], "auto", model=volume_model, device="cpu")
    np.testing.assert_allclose(final, expected, rtol=1e-5, atol=1e-3)  # exactly the public API's volume run
    np.testing.assert_array_equal(src.data, stack["data"])


def test_kernel_picker_offers_3d_psfs_and_the_mode_follows_the_kernel(make_napari_viewer, stack, volume_model):
    viewer, widget = volume_viewer(make_napari_viewer, stack, volume_model)
    viewer.add_image(np.zeros((3, 300, 300), np.float32), name="big stack")
    viewer.add_image(np.ones((9, 9), np.float32), name="kernel 2d")
    names = [lyr.name for lyr in widget.kernel_layer.choices]
    assert {"psf", "kernel 2d"} <= set(names) and "big stack" not in names
    assert widget.noise_mode.value == AUTO
    widget.kernel_layer.value = viewer.layers["kernel 2d"]  # a 2D kernel on a z-stack: plane by plane, as before
    assert widget.layout_info.value.startswith("2D kernel: the plane on screen of a stack of 12")
    assert widget.noise_mode.value == AUTO  # it was 'auto' already
    widget.noise_mode.value, widget.noise_percent.value = NUMBER, 2.5
    widget.kernel_layer.value = viewer.layers["psf"]  # volumes: estimated ...
    assert widget.noise_mode.value == AUTO and not shown(widget, widget.noise_percent)
    widget.kernel_layer.value = viewer.layers["kernel 2d"]  # ... and the user's number comes back with a 2D kernel
    assert widget.noise_mode.value == NUMBER and widget.noise_percent.value == 2.5
    widget.kernel_layer.value = viewer.layers["psf"]
    assert widget.layout_info.value.startswith("volume (Z, Y, X) with a 3D PSF")
    assert "z-slab around the plane on screen" in widget.layout_info.value
    widget.kernel_source.value = WIDEFIELD_3D
    assert widget.layout_info.value.startswith("volume (Z, Y, X) with a 3D PSF")
    assert shown(widget, widget.psf_z_step) and shown(widget, widget.psf_index)
    assert not shown(widget, widget.psf_excitation) and not shown(widget, widget.psf_pinhole)
    widget.kernel_source.value = CONFOCAL_3D
    assert shown(widget, widget.psf_excitation) and shown(widget, widget.psf_pinhole) and shown(widget, widget.psf_na)
    # voxel size defaults from the image layer's scale and units
    assert widget.psf_z_step.value == pytest.approx(300.0) and widget.psf_pixel_size.value == pytest.approx(100.0)


def test_generated_3d_widefield_psf_run_with_gradients(make_napari_viewer, qtbot, volume_model, notes):
    # the widget's PSF for these optics: the automatic box capped at the volume's odd depth (11) and 31 × 31
    psf = widefield_psf_3d(None, SPACING, 1.2, 0.52, 1.333, max_shape=(11, 31, 31))
    vol = phantom_3d((12, 40, 40), "filaments", density=0.6, seed=3)
    data, sharp = blur_volume(vol, psf, photons=PHOTONS, offset=OFFSET, rng=np.random.default_rng(0), uint16=True,
                              mode="same")
    viewer = make_napari_viewer()
    viewer.add_image(data, name="cells", scale=(300.0, 100.0, 100.0), units=("nm",) * 3)
    widget = open_widget(viewer, volume_model)
    widget.kernel_source.value = WIDEFIELD_3D
    widget.psf_na.value, widget.psf_index.value, widget.psf_wavelength.value = 1.2, 1.333, 520.0
    assert widget.psf_z_step.value == pytest.approx(300.0) and widget.psf_pixel_size.value == pytest.approx(100.0)
    widget.scope.value = WHOLE_LAYER
    widget.iterations.value = 1
    widget.show_gradients.value = True
    run_and_wait(qtbot, widget, 120_000)
    assert not [n for n in notes() if n[0] == "error"], notes()
    names = [lyr.name for lyr in viewer.layers]
    assert names == ["cells", "cells stage 0", "cells grad x stage 1", "cells grad y stage 1",
                     "cells grad z stage 1", "cells stage 1"]
    for role in "xyz":
        g = viewer.layers[f"cells grad {role} stage 1"]
        assert g.data.shape == data.shape and not g.visible
    meta = viewer.layers["cells stage 1"].metadata["napari_fcnn_deblur"]
    assert meta["kernel"].startswith("3D widefield PSF NA=1.2 λ=520 nm n=1.333 voxel 300×100×100 nm")
    assert meta["kernel_shape"] == psf.shape == (11, 31, 31)  # capped: MAX_GENERATED_3D and the volume's odd depth
    gain = psnr(viewer.layers["cells stage 1"].data, sharp) - psnr(data, sharp)
    assert gain > 1.0, f"PSNR gain only {gain:.2f} dB"

    widget.add_kernel_button.clicked.emit()  # the generated PSF as a layer: on the image's voxel size, pickable
    psf_layer = viewer.layers[-1]
    assert psf_layer.data.ndim == 3 and psf_layer in widget.kernel_layer.choices
    np.testing.assert_allclose(psf_layer.scale, SPACING)


def test_psf_layer_at_another_voxel_size_is_resampled(make_napari_viewer, qtbot, stack, volume_model, notes):
    fine = widefield_psf_3d((9, 17, 17), (0.15, 0.05, 0.05), 1.2, 0.52, 1.333)
    viewer, widget = volume_viewer(make_napari_viewer, stack, volume_model)
    viewer.layers.remove("psf")
    viewer.add_image(fine, name="fine psf", scale=(150.0, 50.0, 50.0), units=("nm",) * 3)
    widget.kernel_layer.value = viewer.layers["fine psf"]
    widget.scope.value = WHOLE_LAYER
    widget.iterations.value = 1
    run_and_wait(qtbot, widget, 120_000)
    said = [m for sev, m in notes() if sev == "info" and "resampled" in m]
    assert said and "resampled from voxels of 0.15 × 0.05 × 0.05 µm to the image's 0.3 × 0.1 × 0.1 µm" in said[0]
    assert "(9 × 17 × 17 → 5 × 9 × 9 voxels)" in said[0], said
    out = viewer.layers["cells stage 1"]
    assert out.metadata["napari_fcnn_deblur"]["kernel_shape"] == (5, 9, 9)
    expected = deblur(stack["data"], fine, "auto", 1, "cpu", volume_model, spacing=SPACING,
                      psf_spacing=(0.15, 0.05, 0.05))
    np.testing.assert_allclose(out.data, expected, rtol=1e-5, atol=1e-3)


def test_preview_deconvolves_only_the_slab_around_the_plane_on_screen(make_napari_viewer, qtbot, volume_model):
    psf = widefield_psf_3d((5, 9, 9), SPACING, 1.2, 0.52, 1.333)
    vol = phantom_3d((24, 40, 40), "filaments", density=0.6, seed=4)
    data, _ = blur_volume(vol, psf, photons=PHOTONS, offset=OFFSET, rng=np.random.default_rng(1), mode="same")
    viewer = make_napari_viewer()
    viewer.add_image(data, name="deep", scale=SPACING, translate=(5.0, 0.0, 0.0))
    viewer.add_image(psf, name="psf")  # scale 1: taken on the image's voxel grid
    widget = open_widget(viewer, volume_model)
    widget.kernel_prep.value = "raw"
    assert widget.scope.value == CURRENT_PLANE
    widget.iterations.value = 1
    viewer.dims.set_point(0, 5.0 + 20 * 0.3)  # plane 20 on screen
    run_and_wait(qtbot, widget, 120_000)
    assert [lyr.name for lyr in viewer.layers] == ["deep", "psf", "deep stage 0 (preview)", "deep stage 1 (preview)"]
    out = viewer.layers["deep stage 1 (preview)"]
    assert out.data.shape == (11, 40, 40)  # ±5 planes (the PSF's depth) around z = 20, moved inside the volume
    np.testing.assert_allclose(out.translate, (5.0 + 13 * 0.3, 0.0, 0.0))  # planes 13..23, in place
    np.testing.assert_allclose(out.scale, SPACING)
    assert out.metadata["napari_fcnn_deblur"]["slab"] == (13, 24)
    assert "3D preview of planes z 13–23" in widget.status.value
    run = VolumeRun.prepare(data, psf, "auto", 1, "cpu", volume_model)  # the whole layer's intensity map and noise
    np.testing.assert_allclose(out.data, run.deblur(data[13:24]), rtol=1e-5, atol=1e-3)


def test_stack_of_volumes_whole_layer_and_preview(make_napari_viewer, qtbot, stack, volume_model, notes):
    two = np.stack([stack["data"][:, :24, :24], stack["data"][:, 16:, 16:]])  # (T, Z, Y, X) = (2, 12, 24, 24)
    viewer = make_napari_viewer()
    viewer.add_image(two, name="movie", scale=(60.0, *SPACING))
    viewer.add_image(stack["psf"], name="psf")
    widget = open_widget(viewer, volume_model)
    widget.kernel_prep.value = "raw"
    widget.iterations.value = 1
    widget.show_gradients.value = True
    widget.scope.value = WHOLE_LAYER
    assert widget.layout_info.value.startswith("a stack of 2 volumes (…, Z, Y, X) with a 3D PSF")
    run_and_wait(qtbot, widget, 120_000)
    assert not [n for n in notes() if n[0] == "error"], notes()
    assert widget.progress.max == 2 * 2  # volume-steps
    final, stage0 = viewer.layers["movie stage 1"], viewer.layers["movie stage 0"]
    assert final.data.shape == two.shape and type(final.data) is np.ndarray
    assert isinstance(stage0.data, np.memmap)  # a whole stack: intermediate stages and gradients on disk
    assert viewer.layers["movie grad z stage 1"].data.shape == two.shape
    expected = deblur(two, stack["psf"], "auto", 1, "cpu", volume_model)
    np.testing.assert_allclose(final.data, expected, rtol=1e-5, atol=1e-3)

    widget.scope.value = CURRENT_PLANE  # the preview: the slab of the volume on screen (t = 1, z = 2)
    widget.show_gradients.value = False
    viewer.dims.set_point(0, 60.0)
    viewer.dims.set_point(1, 2 * 0.3)
    run_and_wait(qtbot, widget, 120_000)
    preview = viewer.layers["movie stage 1 (preview)"]
    assert preview.data.shape == (1, 11, 24, 24)
    np.testing.assert_allclose(preview.translate, (60.0, 0.0, 0.0, 0.0))
    assert preview.metadata["napari_fcnn_deblur"]["plane"] == (1,)


def _psf_on_a_plane(viewer, stack):
    viewer.add_image(stack["data"][5].copy(), name="one plane")
    return "one plane", "psf"


def _psf_deeper_than_the_volume(viewer, stack):
    viewer.add_image(stack["data"][:4].copy(), name="thin", scale=SPACING, units=("um",) * 3)
    return "thin", "psf"


def _psf_voxels_without_image_voxels(viewer, stack):
    viewer.add_image(stack["data"].copy(), name="no voxel size")
    return "no voxel size", "psf"


def _psf_voxels_without_unit(viewer, stack):
    viewer.add_image(stack["psf"].copy(), name="psf in pixels?", scale=(3.0, 1.0, 1.0))
    return "cells", "psf in pixels?"


VOLUME_ERRORS = {
    "3D PSF with a 2D image": (_psf_on_a_plane, "is a 3D PSF (5 × 9 × 9 voxels), but the image 'one plane' is a single 2D plane"),
    "3D PSF larger than the volume": (_psf_deeper_than_the_volume, "is larger than the volume 'thin'"),
    "image states no voxel size": (_psf_voxels_without_image_voxels, "cannot be resampled to the image's grid"),
    "only one has a unit": (_psf_voxels_without_unit, "only one of them has a length unit"),
}


@pytest.mark.parametrize("case_name", list(VOLUME_ERRORS))
def test_volume_problems_give_clear_errors_and_change_nothing(make_napari_viewer, qtbot, stack, volume_model, notes,
                                                              case_name):
    viewer, widget = volume_viewer(make_napari_viewer, stack, volume_model)
    make, text = VOLUME_ERRORS[case_name]
    image, kernel = make(viewer, stack)
    widget.image_layer.value = viewer.layers[image]
    widget.kernel_layer.value = viewer.layers[kernel]
    before = snapshot(viewer)
    run_and_wait(qtbot, widget)
    errors = [m for sev, m in notes() if sev == "error"]
    assert any(text in m for m in errors), notes()
    assert snapshot(viewer) == before and not widget.running


def test_a_2d_cascade_file_is_refused_for_a_3d_psf(make_napari_viewer, qtbot, stack, notes, tmp_path):
    from conftest import soft_threshold_cascade

    planar = save_cascade(soft_threshold_cascade(), tmp_path / "planar.safetensors")
    viewer, widget = volume_viewer(make_napari_viewer, stack, planar)
    before = snapshot(viewer)
    run_and_wait(qtbot, widget)
    assert any("a 3D PSF needs a volume cascade" in m for sev, m in notes() if sev == "error"), notes()
    assert snapshot(viewer) == before


@pytest.mark.parametrize("choice", [NOISEMAP, PER_LEVEL])
def test_a_2d_model_name_is_refused_for_a_3d_psf(make_napari_viewer, qtbot, stack, notes, choice):
    viewer, widget = volume_viewer(make_napari_viewer, stack, None)  # the shipped models
    assert widget.model_source.value == DEFAULT_MODEL and widget.status.value == ""  # the volume cascade
    widget.model_source.value = choice
    assert "deblurs 2D planes only" in widget.status.value  # said before Run ...
    before = snapshot(viewer)
    run_and_wait(qtbot, widget)
    errors = [m for sev, m in notes() if sev == "error"]  # ... and at Run: nothing runs, no layer
    assert any("deblurs 2D planes only; a 3D PSF is deconvolved by the volume cascade" in m
               and f"choose '{DEFAULT_MODEL}'" in m for m in errors), notes()
    assert snapshot(viewer) == before and not widget.running


def test_measured_bead_stack_is_prepared_in_3d(make_napari_viewer, qtbot, stack, volume_model, notes):
    bead = np.zeros((9, 21, 21))
    bead[3:8, 7:16, 4:13] = stack["psf"] / stack["psf"].max() * 2000  # off-centre by (+1, +1, -2)
    bead = np.rint(bead + 100 + np.random.default_rng(0).normal(0, 2, bead.shape)).astype(np.uint16)
    viewer, widget = volume_viewer(make_napari_viewer, stack, volume_model)
    viewer.add_image(bead, name="bead psf", scale=SPACING, units=("um",) * 3)
    widget.kernel_layer.value = viewer.layers["bead psf"]
    widget.kernel_prep.value = "auto"
    widget.iterations.value = 1
    run_and_wait(qtbot, widget, 120_000)
    said = [m for sev, m in notes() if sev == "info" and "prepared as a measured PSF" in m]
    assert said and "bead z-stack: background and 2 σ of its noise subtracted" in said[0], notes()
    meta = viewer.layers["cells stage 1 (preview)"].metadata["napari_fcnn_deblur"]
    assert meta["kernel_preparation"].startswith("bead z-stack") and meta["kernel_shape"][0] <= 9


def test_cancel_stops_a_volume_run(make_napari_viewer, qtbot, stack, volume_model, monkeypatch, notes):
    viewer, widget = volume_viewer(make_napari_viewer, stack, volume_model)
    widget.scope.value = WHOLE_LAYER
    monkeypatch.setattr(widget_module.VolumeRun, "steps", slowed_steps(widget_module.VolumeRun.steps, 0.3))
    widget.run_button.clicked.emit()
    assert widget.running and widget.activity.total == 4
    qtbot.waitUntil(lambda: "cells stage 0" in viewer.layers, timeout=60_000)
    widget.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    names = [lyr.name for lyr in viewer.layers]
    assert names[:2] == ["cells", "psf"] and "cells stage 3" not in names
    assert names[2:] == [f"cells stage {k}" for k in range(len(names) - 2)]  # finished stages, in order
    assert viewer.layers["cells stage 0"].data.shape == stack["data"].shape
    assert any(sev == "info" and "cancelled" in m for sev, m in notes()), notes()
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_a_psf_layer_without_voxel_size_is_taken_on_the_image_grid_and_said_so(make_napari_viewer, qtbot, stack,
                                                                              volume_model, notes):
    viewer, widget = volume_viewer(make_napari_viewer, stack, volume_model)
    viewer.layers.remove("psf")
    viewer.add_image(stack["psf"].copy(), name="plain psf")  # scale 1, no unit: no voxel size stated
    widget.kernel_layer.value = viewer.layers["plain psf"]
    widget.scope.value = WHOLE_LAYER
    widget.iterations.value = 1
    run_and_wait(qtbot, widget, 120_000)
    said = [m for sev, m in notes() if sev == "info" and "states no voxel size" in m]
    assert said and "taken on the image's voxel grid of 0.3 × 0.1 × 0.1 µm" in said[0], notes()
    out = viewer.layers["cells stage 1"]
    expected = deblur(stack["data"], stack["psf"], "auto", 1, "cpu", volume_model)
    np.testing.assert_allclose(out.data, expected, rtol=1e-5, atol=1e-3)
