"""The "FCNN deblur" dock widget, headless (pytest-qt + pytest-xvfb + napari's make_napari_viewer).

No trained weights are needed: a deterministic 3-stage test cascade (each FCNN is an exact
soft-threshold of the gradients, i.e. a sparse-gradient prior) is saved to a file and picked
through the widget's "model file" option.  Only the tests of the 'Model' choices run the shipped
cascades (one stage on a small crop).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.layers import Image  # noqa: E402
from napari.utils.notifications import notification_manager  # noqa: E402

from conftest import slowed_steps, soft_threshold_cascade  # noqa: E402
from napari_fcnn_deblur import Cascade, deblur, save_cascade  # noqa: E402
from napari_fcnn_deblur import _widget as widget_module  # noqa: E402
from napari_fcnn_deblur._widget import (  # noqa: E402
    AUTO,
    DEFAULT_MODEL,
    FROM_FILE,
    NOISEMAP,
    NUMBER,
    PER_LEVEL,
    WHOLE_LAYER,
    DeblurWidget,
)
from napari_fcnn_deblur.data.motion_kernels import random_motion_kernel  # noqa: E402
from napari_fcnn_deblur.data.psf import gaussian_psf  # noqa: E402
from napari_fcnn_deblur.data.samples import blur_valid  # noqa: E402
from napari_fcnn_deblur.io import models as model_io  # noqa: E402

PLUGIN, WIDGET = "napari-fcnn-deblur", "FCNN deblur"


def shrinkage_cascade(n_stages: int = 3, gamma: float = 50.0, threshold: float = 0.03) -> Cascade:
    """A cascade whose FCNNs compute soft-threshold(g, t) exactly (conftest.soft_threshold_cascade)."""
    return soft_threshold_cascade(n_stages, thresholds=(threshold,) * n_stages, gammas=(gamma,) * (n_stages + 1))


@pytest.fixture(scope="session")
def model_file(tmp_path_factory) -> Path:
    return save_cascade(shrinkage_cascade(3), tmp_path_factory.mktemp("models") / "test_cascade.safetensors")


@pytest.fixture(scope="session")
def case() -> dict[str, np.ndarray]:
    """A 146 × 146 crop of 'camera' with a 15 × 15 motion blur and 1 % noise, plus its ground truth."""
    from skimage import data

    sharp = data.camera()[100:260, 180:340].astype(np.float32) / 255
    kernel = random_motion_kernel(np.random.default_rng(3), 15)
    blurry, gt = blur_valid(sharp, kernel, 0.01, seed=0)
    return {"blurry": blurry, "kernel": kernel, "gt": gt}


def psnr(a: np.ndarray, gt: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((np.clip(a, 0, 1) - gt) ** 2)))


@pytest.fixture
def notes():
    """Notifications shown during the test: list of (severity, message)."""
    start = len(notification_manager.records)

    def new() -> list[tuple[str, str]]:
        return [(str(n.severity).lower(), str(n.message)) for n in notification_manager.records[start:]]

    return new


def shown(widget: DeblurWidget, part) -> bool:
    """Whether ``part`` would be visible once the (headless, never shown) window is shown."""
    return part.native.isVisibleTo(widget.native)


def open_widget(viewer, model_file: Path | None) -> DeblurWidget:
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    assert isinstance(widget, DeblurWidget)
    if model_file is not None:
        widget.model_source.value = FROM_FILE
        widget.model_file.value = model_file
    return widget


def given_noise(widget: DeblurWidget, percent: float) -> None:
    """Set 'Noise' to a number: ``percent`` % (the tests that compare with ``deblur(..., 0.01)``)."""
    widget.noise_mode.value = NUMBER
    widget.noise_percent.value = percent


def run_and_wait(qtbot, widget: DeblurWidget, timeout: int = 60_000) -> None:
    widget.run_button.clicked.emit()  # what a click does
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


def snapshot(viewer) -> list[tuple[str, int, bytes]]:
    return [(lyr.name, id(lyr), np.asarray(lyr.data).tobytes()) for lyr in viewer.layers]


@pytest.fixture
def setup(make_napari_viewer, case, model_file):
    viewer = make_napari_viewer()
    viewer.add_image(case["blurry"].copy(), name="blurry", scale=(0.5, 0.5), translate=(10.0, 20.0))
    viewer.add_image(case["kernel"].copy(), name="kernel", colormap="inferno")
    widget = open_widget(viewer, model_file)
    given_noise(widget, 1.0)
    return viewer, widget


def test_run_adds_stages_in_order_and_sharpens(setup, qtbot, case, notes):
    viewer, widget = setup
    assert widget.image_layer.value is viewer.layers["blurry"]
    assert widget.kernel_layer.value is viewer.layers["kernel"]
    assert widget.iterations.max == 3 and widget.iterations.value == 3
    source = viewer.layers["blurry"]
    limits = tuple(source.contrast_limits)

    run_and_wait(qtbot, widget)

    names = [lyr.name for lyr in viewer.layers]
    assert names == ["blurry", "kernel"] + [f"blurry stage {k}" for k in range(4)]
    final = viewer.layers["blurry stage 3"]
    assert viewer.layers.selection.active is final
    for k in range(4):
        out = viewer.layers[f"blurry stage {k}"]
        assert out.data.shape == case["blurry"].shape and out.data.dtype == np.float32
        np.testing.assert_allclose(out.scale, (0.5, 0.5))
        np.testing.assert_allclose(out.translate, (10.0, 20.0))
        assert tuple(out.contrast_limits) == pytest.approx(limits)
        assert out.metadata["napari_fcnn_deblur"]["stage"] == k
    gain = psnr(final.data, case["gt"]) - psnr(case["blurry"], case["gt"])
    assert gain > 3.0, f"final PSNR gain only {gain:.2f} dB"
    np.testing.assert_array_equal(source.data, case["blurry"])  # the source is never modified
    assert widget.progress.value == widget.progress.max == 4
    assert not [n for n in notes() if n[0] == "error"]
    # what the widget shows is exactly what the public API computes
    np.testing.assert_allclose(
        final.data, deblur(case["blurry"], case["kernel"], 0.01, 3, "cpu", widget.model_file.value), atol=1e-5
    )


def test_gradients_and_rerun_update_layers(setup, qtbot):
    viewer, widget = setup
    widget.iterations.value = 2
    widget.show_gradients.value = True
    run_and_wait(qtbot, widget)
    expected = ["blurry stage 0"]
    for k in (1, 2):
        expected += [f"blurry grad x stage {k}", f"blurry grad y stage {k}", f"blurry stage {k}"]
    assert [lyr.name for lyr in viewer.layers][2:] == expected
    for k in (1, 2):
        gx = viewer.layers[f"blurry grad x stage {k}"]
        assert not gx.visible
        lo, hi = gx.contrast_limits
        assert lo == pytest.approx(-hi) and hi > 0
    assert viewer.layers.selection.active is viewer.layers["blurry stage 2"]
    stage0 = viewer.layers["blurry stage 0"]

    # re-run: the same layers are updated (no "[1]" copies), stale gradient layers go, stage 3 is new
    widget.iterations.value = 3
    widget.show_gradients.value = False
    run_and_wait(qtbot, widget)
    names = [lyr.name for lyr in viewer.layers]
    assert names == ["blurry", "kernel", "blurry stage 0", "blurry stage 1", "blurry stage 2", "blurry stage 3"]
    assert viewer.layers["blurry stage 0"] is stage0
    assert viewer.layers.selection.active is viewer.layers["blurry stage 3"]


def test_gui_thread_stays_responsive(setup, qtbot, monkeypatch):
    from qtpy.QtCore import QTimer

    viewer, widget = setup
    threads: list[str] = []
    monkeypatch.setattr(widget_module.DeblurRun, "steps", slowed_steps(widget_module.DeblurRun.steps, 0.125, threads))
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    try:
        t0 = time.perf_counter()
        run_and_wait(qtbot, widget)
        elapsed = time.perf_counter() - t0
    finally:
        timer.stop()
    assert elapsed > 1.0  # four stages, each a progress item and a result, each at least 0.125 s
    gaps = np.diff([t0, *ticks])
    # a frozen GUI thread ticks not at all during the run; a free one on a machine loaded 2–3× (CI next to a
    # training run measured 16 ticks in 2.1 s) still ticks at a tenth of the timer's rate
    assert len(ticks) >= 0.1 * elapsed / 0.02, f"{len(ticks)} ticks in {elapsed:.2f} s"
    # a cascade on the GUI thread would freeze it for the whole run (> 1 s); adding the finished
    # layers may take a few hundred ms on a loaded machine (each one a gap), so only most gaps are bounded
    assert np.percentile(gaps, 90) < 0.5, f"90th percentile gap {np.percentile(gaps, 90):.2f} s"
    assert gaps.max() < 1.0, f"GUI thread blocked for {gaps.max():.2f} s"
    assert threads and threading.main_thread().name not in threads
    assert "blurry stage 3" in viewer.layers


def test_cancel_keeps_finished_layers_then_second_run_works(setup, qtbot, monkeypatch, notes):
    viewer, widget = setup
    monkeypatch.setattr(widget_module.DeblurRun, "steps", slowed_steps(widget_module.DeblurRun.steps, 0.2))
    widget.run_button.clicked.emit()
    assert widget.running and widget.cancel_button.enabled and not widget.run_button.enabled
    assert widget.activity.total == 4  # napari's activity dock shows the same progress
    qtbot.waitUntil(lambda: "blurry stage 0" in viewer.layers, timeout=30_000)
    widget.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    names = [lyr.name for lyr in viewer.layers]
    assert "blurry stage 0" in names and "blurry stage 3" not in names
    assert names[:2] == ["blurry", "kernel"]
    assert names[2:] == [f"blurry stage {k}" for k in range(len(names) - 2)]  # finished stages, in order
    assert any(sev == "info" and "cancelled" in msg for sev, msg in notes())
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    kept = viewer.layers["blurry stage 0"]

    monkeypatch.undo()
    run_and_wait(qtbot, widget)
    assert [lyr.name for lyr in viewer.layers][2:] == [f"blurry stage {k}" for k in range(4)]
    assert viewer.layers["blurry stage 0"] is kept


def _rgb_kernel(viewer, case):
    k = case["kernel"] / case["kernel"].max()
    viewer.add_image(np.stack([k, k, k], axis=-1), name="rgb kernel", rgb=True)
    return {"kernel": "rgb kernel"}


def _big_kernel(viewer, case):
    viewer.add_image(case["blurry"][:20, :20].copy(), name="small image")
    viewer.add_image(np.ones((31, 31), np.float32), name="big kernel")
    return {"image": "small image", "kernel": "big kernel"}


def _empty_layer(viewer, case):
    viewer.add_image(np.zeros((0, 64, 64), np.float32), name="empty", contrast_limits=(0, 1))
    return {"image": "empty"}


def _nan_image(viewer, case):
    bad = case["blurry"].copy()
    bad[40:45, 50:52] = np.nan
    viewer.add_image(bad, name="with holes")
    return {"image": "with holes"}


def _nan_kernel(viewer, case):
    bad = case["kernel"].copy()
    bad[0, 0] = np.nan
    viewer.add_image(bad, name="nan kernel")
    return {"kernel": "nan kernel"}


def no_shipped_models(monkeypatch, tmp_path, noisemap: bool = False, per_level: bool = False) -> None:
    """Make the shipped noise-map and/or per-level cascades look uninstalled (their paths point nowhere)."""
    if noisemap:
        monkeypatch.setattr(model_io, "noisemap_model_path", lambda: tmp_path / "missing_noisemap.safetensors")
    if per_level:
        monkeypatch.setattr(model_io, "shipped_model_path", lambda level: tmp_path / f"missing_{level}.safetensors")


def _no_model(viewer, case, monkeypatch, tmp_path, widget):
    no_shipped_models(monkeypatch, tmp_path, noisemap=True, per_level=True)
    widget.model_source.value = DEFAULT_MODEL
    return {}


def _no_noisemap_model(viewer, case, monkeypatch, tmp_path, widget):
    no_shipped_models(monkeypatch, tmp_path, noisemap=True)
    widget.model_source.value = NOISEMAP
    return {}


def _no_per_level_model(viewer, case, monkeypatch, tmp_path, widget):
    no_shipped_models(monkeypatch, tmp_path, per_level=True)
    widget.model_source.value = PER_LEVEL
    return {}


def _not_a_model(viewer, case, monkeypatch, tmp_path, widget):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a model")
    widget.model_file.value = junk
    return {}


def _blank_image(viewer, case):
    viewer.add_image(np.zeros((64, 64), np.float32), name="blank")
    return {"image": "blank"}


BAD_INPUTS = {
    "rgb kernel": (_rgb_kernel, "error", "colour (RGB)"),
    "kernel larger than image": (_big_kernel, "error", "larger than the image"),
    "empty layer": (_empty_layer, "error", "empty"),
    "NaN in image": (_nan_image, "error", "not numbers (NaN)"),
    "NaN in kernel": (_nan_kernel, "error", "NaN"),
    "no trained model": (_no_model, "error", "No trained model is installed (neither the noise-map cascade"),
    "no noise-map cascade": (_no_noisemap_model, "error", "The noise-map cascade is not installed. Under 'Model', "
                             "choose 'per-level'"),
    "no per-level cascade": (_no_per_level_model, "error", "No per-level cascade is installed for 1 % noise"),
    "not a model file": (_not_a_model, "error", "not a napari-fcnn-deblur model"),
    "blank image": (_blank_image, "warning", "blank"),
}


@pytest.mark.parametrize("case_name", list(BAD_INPUTS))
def test_bad_input_gives_notification_and_changes_nothing(setup, qtbot, case, notes, monkeypatch, tmp_path, case_name):
    viewer, widget = setup
    make, severity, text = BAD_INPUTS[case_name]
    if make in (_no_model, _no_noisemap_model, _no_per_level_model, _not_a_model):
        picks = make(viewer, case, monkeypatch, tmp_path, widget)
    else:
        picks = make(viewer, case)
    if "image" in picks:
        widget.image_layer.value = viewer.layers[picks["image"]]
    if "kernel" in picks:
        widget.kernel_layer.value = viewer.layers[picks["kernel"]]
    before = snapshot(viewer)

    run_and_wait(qtbot, widget)  # pytest-qt fails the test on any exception raised in a Qt callback

    found = [msg for sev, msg in notes() if sev == severity]
    assert any(text in msg for msg in found), f"no {severity} notification with {text!r}: {notes()}"
    assert snapshot(viewer) == before
    assert widget.run_button.enabled and not widget.running


def test_widget_stays_usable_after_an_error(setup, qtbot, case, notes):
    viewer, widget = setup
    viewer.add_image(np.ones((31, 31), np.float32), name="huge kernel")
    viewer.add_image(case["blurry"][:16, :16].copy(), name="tiny")
    widget.image_layer.value = viewer.layers["tiny"]
    widget.kernel_layer.value = viewer.layers["huge kernel"]
    run_and_wait(qtbot, widget)
    assert any(sev == "error" for sev, _ in notes())
    widget.image_layer.value = viewer.layers["blurry"]
    widget.kernel_layer.value = viewer.layers["kernel"]
    widget.iterations.value = 1
    run_and_wait(qtbot, widget)
    assert "blurry stage 1" in viewer.layers


def test_bf16_precision_choice_reaches_the_engine(setup, qtbot, case, notes):
    viewer, widget = setup
    widget.iterations.value = 1
    widget.precision.value = "bf16"
    run_and_wait(qtbot, widget)
    out = viewer.layers["blurry stage 1"].data
    model = widget.model_file.value
    bf = deblur(case["blurry"], case["kernel"], 0.01, 1, "cpu", model, precision="bf16")
    fp = deblur(case["blurry"], case["kernel"], 0.01, 1, "cpu", model)
    np.testing.assert_allclose(out, bf, atol=1e-5)
    assert np.abs(out - fp).max() > 0  # really the bf16 networks, not fp32
    assert not [n for n in notes() if n[0] == "error"]


def test_pickers_offer_image_layers_and_small_2d_kernels(setup):
    viewer, widget = setup
    viewer.add_points(np.zeros((2, 2)), name="points")
    viewer.add_image(np.zeros((5, 300, 300), np.float32), name="stack")
    viewer.add_image(np.zeros((300, 300), np.float32), name="big 2d")
    viewer.add_image(np.zeros((1, 9, 9), np.float32), name="psf 1x9x9")
    image_names = [lyr.name for lyr in widget.image_layer.choices]
    kernel_names = [lyr.name for lyr in widget.kernel_layer.choices]
    assert "points" not in image_names and {"blurry", "stack", "big 2d"} <= set(image_names)
    assert set(kernel_names) == {"kernel", "psf 1x9x9", "blurry"}  # 146 × 146 is still "small"
    assert kernel_names[0] in ("kernel", "psf 1x9x9")  # named kernels / PSFs first
    assert widget.device.choices[0] == "auto" and "cpu" in widget.device.choices
    assert list(widget.noise_mode.choices) == [AUTO, NUMBER]
    assert list(widget.model_source.choices) == [DEFAULT_MODEL, NOISEMAP, PER_LEVEL, FROM_FILE]


def test_iterations_follow_the_model(setup, tmp_path, monkeypatch):
    viewer, widget = setup
    two = save_cascade(shrinkage_cascade(2), tmp_path / "two.safetensors")
    widget.model_file.value = two
    assert widget.iterations.max == 2 and widget.iterations.value == 2
    assert shown(widget, widget.model_file)
    no_shipped_models(monkeypatch, tmp_path, noisemap=True, per_level=True)
    widget.model_source.value = DEFAULT_MODEL
    assert "No trained model is installed" in widget.status.value
    assert not shown(widget, widget.model_file)


def test_stack_current_plane_preview_and_whole_layer(make_napari_viewer, qtbot, case, model_file):
    viewer = make_napari_viewer()
    planes = np.stack([case["blurry"][:64, :64], case["blurry"][40:104, 40:104], case["blurry"][80:144, 70:134]])
    stack = viewer.add_image(planes.copy(), name="stack", scale=(2.0, 1.0, 1.0), translate=(5.0, 0.0, 0.0))
    viewer.add_image(case["kernel"], name="psf")
    widget = open_widget(viewer, model_file)
    given_noise(widget, 1.0)
    assert shown(widget, widget.scope)
    widget.iterations.value = 1
    viewer.dims.set_point(0, 5.0 + 2 * 2.0)  # world position of plane 2

    run_and_wait(qtbot, widget)  # default: current plane (preview)
    preview = viewer.layers["stack stage 1 (preview)"]
    assert preview.data.shape == (1, 64, 64)
    np.testing.assert_allclose(preview.translate, (9.0, 0.0, 0.0))
    expected = deblur(planes[2], case["kernel"], 0.01, 1, "cpu", model_file)
    np.testing.assert_allclose(preview.data[0], expected, atol=1e-5)

    widget.scope.value = WHOLE_LAYER
    widget.run_button.clicked.emit()
    assert "a stack of 3 planes" in widget.status.value  # says what it assumed
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert widget.progress.max == 3 * 2 and widget.progress.value == 6
    whole = viewer.layers["stack stage 1"]
    assert whole.data.shape == planes.shape
    assert viewer.layers.selection.active is whole
    np.testing.assert_allclose(whole.translate, stack.translate)
    np.testing.assert_allclose(whole.data[2], preview.data[0], atol=1e-5)  # the preview predicts the full run
    assert "stack stage 1 (preview)" in viewer.layers  # previews and full results do not overwrite each other
    np.testing.assert_array_equal(stack.data, planes)


def test_results_keep_the_source_frame_and_metadata(make_napari_viewer, qtbot, case, model_file):
    viewer = make_napari_viewer()
    planes = np.stack([case["blurry"][:64, :64], case["blurry"][40:104, 40:104]])
    affine = np.array([[1, 0, 0, 0], [0, np.cos(0.3), -np.sin(0.3), 0], [0, np.sin(0.3), np.cos(0.3), 0], [0, 0, 0, 1]])
    src = viewer.add_image(planes.copy(), name="cells", scale=(0.5, 0.1, 0.1), translate=(1.0, 2.0, 3.0),
                           affine=affine, metadata={"channel": "GFP", "acquired": "2026-11-30"},
                           units=("um", "um", "um"), axis_labels=("z", "y", "x"))
    viewer.add_image(case["kernel"], name="psf")
    widget = open_widget(viewer, model_file)
    widget.scope.value = WHOLE_LAYER
    widget.iterations.value = 1
    widget.show_gradients.value = True
    run_and_wait(qtbot, widget)
    for name in ("cells stage 0", "cells stage 1", "cells grad x stage 1"):
        out = viewer.layers[name]
        assert out.metadata["channel"] == "GFP" and out.metadata["acquired"] == "2026-11-30"
        assert out.metadata["napari_fcnn_deblur"]["source"] == "cells"
        assert tuple(out.axis_labels) == ("z", "y", "x") and tuple(out.units) == tuple(src.units)
        np.testing.assert_allclose(out.affine.affine_matrix, src.affine.affine_matrix)
        np.testing.assert_allclose(out.scale, src.scale)
        np.testing.assert_allclose(out.translate, src.translate)
    assert "napari_fcnn_deblur" not in src.metadata  # the source's own metadata is not touched


def test_pixel_sizes_from_the_layer_scale(make_napari_viewer, qtbot, case, model_file, notes):
    viewer = make_napari_viewer()
    viewer.add_image(case["blurry"].copy(), name="cells", scale=(0.08, 0.08), units="um")
    psf = viewer.add_image(case["kernel"], name="psf", scale=(0.16, 0.16), units="um")
    widget = open_widget(viewer, model_file)
    assert widget.psf_pixel_size.value == pytest.approx(80.0)  # the widefield PSF uses the image's pixel size
    run_and_wait(qtbot, widget)
    errors = [msg for sev, msg in notes() if sev == "error"]
    assert any("must be sampled on the image's pixel grid" in m for m in errors), notes()
    assert len(viewer.layers) == 2  # never used silently
    psf.scale = (0.08, 0.08)
    run_and_wait(qtbot, widget)
    assert "cells stage 3" in viewer.layers


def test_rgb_image(make_napari_viewer, qtbot, case, model_file):
    viewer = make_napari_viewer()
    b = case["blurry"][:64, :64]
    rgb = (np.stack([b, b * 0.8, b * 0.5], axis=-1) * 255).round().astype(np.uint8)
    viewer.add_image(rgb, name="photo", rgb=True)
    viewer.add_image(case["kernel"], name="kernel")
    widget = open_widget(viewer, model_file)
    widget.iterations.value = 1
    widget.show_gradients.value = True
    assert not shown(widget, widget.scope)
    widget.run_button.clicked.emit()
    assert "RGB: the 3 colour channels" in widget.status.value
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    out = viewer.layers["photo stage 1"]
    assert out.rgb and out.data.shape == rgb.shape
    assert viewer.layers["photo grad x stage 1"].data.shape == rgb.shape[:2]
    assert isinstance(out, Image)


# ----------------------------------------------------------------------------- kernel generators, noise estimate


@pytest.fixture(scope="session")
def gaussian_case() -> dict[str, np.ndarray]:
    """The 'camera' crop blurred by a Gaussian PSF (σ = 2 px) with 1 % noise."""
    from skimage import data

    sharp = data.camera()[100:260, 180:340].astype(np.float32) / 255
    blurry, gt = blur_valid(sharp, gaussian_psf(2.0), 0.01, seed=1)
    return {"blurry": blurry, "gt": gt}


def test_generator_parameters_visible_only_for_their_generator(setup):
    viewer, widget = setup
    assert widget.kernel_source.value == "layer"
    assert shown(widget, widget.kernel_layer) and not shown(widget, widget.add_kernel_button)
    params = [widget.psf_sigma, widget.psf_radius, widget.psf_length, widget.psf_angle,
              widget.psf_na, widget.psf_wavelength, widget.psf_pixel_size]
    assert not any(shown(widget, w) for w in params)
    expected = {
        "Gaussian": [widget.psf_sigma],
        "disk (defocus)": [widget.psf_radius],
        "linear motion": [widget.psf_length, widget.psf_angle],
        "widefield (Airy)": [widget.psf_na, widget.psf_wavelength, widget.psf_pixel_size],
    }
    for source, visible in expected.items():
        widget.kernel_source.value = source
        assert [w for w in params if shown(widget, w)] == visible
        assert shown(widget, widget.add_kernel_button) and not shown(widget, widget.kernel_layer)
    assert (widget.psf_sigma.value, widget.psf_radius.value) == (2.0, 3.0)
    assert (widget.psf_length.value, widget.psf_angle.value) == (15.0, 0.0)
    assert (widget.psf_na.value, widget.psf_wavelength.value, widget.psf_pixel_size.value) == (1.4, 520.0, 65.0)


def test_run_with_gaussian_generator_needs_no_kernel_layer(make_napari_viewer, qtbot, gaussian_case, model_file, notes):
    viewer = make_napari_viewer()
    viewer.add_image(gaussian_case["blurry"].copy(), name="blurry")
    widget = open_widget(viewer, model_file)
    assert widget.noise_mode.value == AUTO and not shown(widget, widget.noise_percent)  # the default: estimated
    widget.kernel_source.value = "Gaussian"
    widget.psf_sigma.value = 2.0
    run_and_wait(qtbot, widget)
    assert not [n for n in notes() if n[0] == "error"], notes()
    assert [lyr.name for lyr in viewer.layers] == ["blurry"] + [f"blurry stage {k}" for k in range(4)]
    final = viewer.layers["blurry stage 3"]
    assert final.metadata["napari_fcnn_deblur"]["kernel"] == "Gaussian PSF σ=2"
    gain = psnr(final.data, gaussian_case["gt"]) - psnr(gaussian_case["blurry"], gaussian_case["gt"])
    assert gain > 1.0, f"final PSNR gain only {gain:.2f} dB"
    expected = deblur(gaussian_case["blurry"], gaussian_psf(2.0), "auto", 3, "cpu", model_file)
    np.testing.assert_allclose(final.data, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("Gaussian", "Gaussian PSF σ=2"),
        ("disk (defocus)", "disk PSF r=3"),
        ("linear motion", "linear motion PSF L=15 θ=0°"),
        ("widefield (Airy)", "widefield PSF NA=1.4 λ=520 nm px=65 nm"),
    ],
)
def test_add_kernel_layer_makes_a_pickable_normalised_kernel(setup, source, name):
    viewer, widget = setup
    widget.kernel_source.value = source
    widget.add_kernel_button.clicked.emit()
    layer = viewer.layers[name]
    assert isinstance(layer, Image) and layer.data.ndim == 2
    assert float(np.sum(layer.data)) == pytest.approx(1.0, abs=1e-5)
    assert layer in widget.kernel_layer.choices
    assert widget.image_layer.value is viewer.layers["blurry"]  # the new kernel does not displace the image


def test_no_kernel_layer_error_suggests_generators(make_napari_viewer, qtbot, case, model_file, notes):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((400, 400), np.float32), name="too big to be a kernel")
    widget = open_widget(viewer, model_file)
    assert widget.kernel_layer.value is None
    run_and_wait(qtbot, widget)
    errors = [msg for sev, msg in notes() if sev == "error"]
    assert any("Kernel source" in msg and "Gaussian" in msg for msg in errors), notes()
    assert len(viewer.layers) == 1


def test_estimate_noise_from_image(make_napari_viewer, qtbot, model_file, notes):
    import re

    from skimage import data

    sharp = data.camera()[100:260, 180:340].astype(np.float32) / 255
    blurry, _ = blur_valid(sharp, gaussian_psf(2.0), 0.03, seed=2)
    viewer = make_napari_viewer()
    viewer.add_image(blurry, name="noisy")
    widget = open_widget(viewer, model_file)
    widget.kernel_source.value = "Gaussian"
    widget.noise_mode.value = AUTO
    widget.iterations.value = 1
    run_and_wait(qtbot, widget)
    assert not [n for n in notes() if n[0] == "error"], notes()
    assert "noisy stage 1" in viewer.layers
    m = re.search(r"estimated noise σ = ([0-9.]+) % \(Gaussian\)", widget.status.value)
    assert m, widget.status.value
    assert abs(float(m.group(1)) - 3.0) < 0.3 * 3.0, widget.status.value
    meta = viewer.layers["noisy stage 1"].metadata["napari_fcnn_deblur"]
    assert meta["noise_estimated"] and meta["noise_level"] == pytest.approx(float(m.group(1)) / 100, abs=1e-3)
    assert meta["noise"].startswith("σ = ") and meta["model"].startswith("cascade file test_cascade.safetensors")
    assert "model: cascade file test_cascade.safetensors" in widget.status.value


# ----------------------------------------------------------------------------- noise and model choices


@pytest.fixture
def prepared(monkeypatch) -> list[dict]:
    """The noise_level and model of every DeblurRun.prepare the widget's worker calls (the real one runs)."""
    calls: list[dict] = []
    real = widget_module.DeblurRun.prepare

    def spy(cls, image, kernel, noise_level, iterations, device, model, **kw):
        calls.append({"noise_level": noise_level, "model": model})
        return real(image, kernel, noise_level, iterations, device, model, **kw)

    monkeypatch.setattr(widget_module.DeblurRun, "prepare", classmethod(spy))
    return calls


def test_noise_number_reaches_the_engine(setup, qtbot, prepared, notes):
    viewer, widget = setup
    widget.noise_mode.value = AUTO
    assert not shown(widget, widget.noise_percent)  # the number only with 'a number'
    widget.noise_mode.value = NUMBER
    assert shown(widget, widget.noise_percent)
    assert (widget.noise_percent.min, widget.noise_percent.max, widget.noise_percent.step) == (0.1, 30.0, 0.1)
    widget.noise_percent.value = 2.7
    assert widget._prepare_job().noise_level == pytest.approx(0.027)
    widget.iterations.value = 1
    run_and_wait(qtbot, widget)
    assert not [n for n in notes() if n[0] == "error"], notes()
    assert [c["noise_level"] for c in prepared] == [pytest.approx(0.027)]
    meta = viewer.layers["blurry stage 1"].metadata["napari_fcnn_deblur"]
    assert meta["noise_level"] == pytest.approx(0.027) and not meta["noise_estimated"]
    assert meta["noise"].startswith("σ = 0.027 (2.70 %")
    assert "noise σ = 2.7 % (given)" in widget.status.value


def test_auto_noise_of_a_camera_image_shows_the_poisson_gaussian_fit(make_napari_viewer, qtbot, model_file, notes):
    import re

    from skimage import data

    from napari_fcnn_deblur.engine.noise import estimate_noise

    sharp = data.camera()[100:260, 180:340].astype(np.float32) / 255
    blurred, _ = blur_valid(sharp, gaussian_psf(2.0), 0.0, seed=2)
    rng = np.random.default_rng(0)  # 300 photons at full intensity, read noise 2, offset 100: photon noise dominates
    camera = (rng.poisson(np.clip(blurred, 0, None) * 300) + rng.normal(0, 2, blurred.shape) + 100).round()
    camera = camera.astype(np.uint16)
    expected = estimate_noise(camera)  # the engine's rule, on the same intensity map as the run's
    assert expected.kind == "poisson-gaussian"
    viewer = make_napari_viewer()
    viewer.add_image(camera, name="camera")
    widget = open_widget(viewer, model_file)
    widget.kernel_source.value = "Gaussian"
    widget.iterations.value = 1
    run_and_wait(qtbot, widget)
    assert not [n for n in notes() if n[0] == "error"], notes()
    assert f"estimated noise: {expected.describe()}" in widget.status.value
    assert re.search(r"Poisson–Gaussian a=[0-9.e+-]+, b=[0-9.e+-]+", widget.status.value), widget.status.value
    meta = viewer.layers["camera stage 1"].metadata["napari_fcnn_deblur"]
    assert meta["noise"] == expected.describe() and meta["noise_estimated"]


@pytest.mark.parametrize(
    ("choice", "model", "label"),
    [
        (DEFAULT_MODEL, None, ""),  # whichever the measured table picks at 1 %: the engine says
        (NOISEMAP, "noisemap", "noise-map cascade ("),
        (PER_LEVEL, "per-level", "per-level cascade 1 % ("),
    ],
)
def test_each_model_choice_reaches_the_engine(make_napari_viewer, qtbot, case, prepared, notes, choice, model, label):
    viewer = make_napari_viewer()
    viewer.add_image(case["blurry"][:64, :64].copy(), name="crop")
    viewer.add_image(case["kernel"], name="kernel")
    widget = open_widget(viewer, None)  # the shipped cascades
    assert widget.model_source.value == DEFAULT_MODEL
    widget.model_source.value = choice
    assert not shown(widget, widget.model_file) and widget.status.value == ""
    given_noise(widget, 1.0)
    widget.iterations.value = 1
    run_and_wait(qtbot, widget)
    assert not [n for n in notes() if n[0] == "error"], notes()
    assert prepared == [{"noise_level": 0.01, "model": model}]
    expected = model_io.select_model(model, 0.01).describe()  # which model runs, and why
    assert expected.startswith(label)
    meta = viewer.layers["crop stage 1"].metadata["napari_fcnn_deblur"]
    assert meta["model"] == expected and meta["model_choice"] == choice
    assert f"noise σ = 1 % (given); model: {expected}" in widget.status.value


def test_default_runs_a_per_level_cascade_without_the_noise_map_cascade(make_napari_viewer, qtbot, case, prepared,
                                                                       monkeypatch, tmp_path, notes):
    no_shipped_models(monkeypatch, tmp_path, noisemap=True)
    viewer = make_napari_viewer()
    viewer.add_image(case["blurry"][:64, :64].copy(), name="crop")
    viewer.add_image(case["kernel"], name="kernel")
    widget = open_widget(viewer, None)
    given_noise(widget, 3.0)
    widget.iterations.value = 1
    run_and_wait(qtbot, widget)
    assert not [n for n in notes() if n[0] == "error"], notes()
    assert prepared[0]["model"] is None
    meta = viewer.layers["crop stage 1"].metadata["napari_fcnn_deblur"]
    assert meta["model"] == "per-level cascade 3 % (default: the noise-map cascade is not installed)"


# ----------------------------------------------------------------------------- measured PSF layers


def test_measured_psf_layer_is_prepared_and_said(make_napari_viewer, qtbot, gaussian_case, model_file, notes):
    from conftest import bead_crop
    from napari_fcnn_deblur.data.psf import prepare_psf

    viewer = make_napari_viewer()
    viewer.add_image(gaussian_case["blurry"].copy(), name="blurry")
    bead = bead_crop(gaussian_psf(2.0), shift=(3, -2), offset=100.0)  # uint16 counts on a camera offset
    viewer.add_image(bead.copy(), name="bead psf")
    widget = open_widget(viewer, model_file)
    given_noise(widget, 1.0)
    assert widget.kernel_layer.value is viewer.layers["bead psf"] and widget.kernel_prep.value == "auto"
    assert shown(widget, widget.kernel_prep)
    widget.iterations.value = 1
    run_and_wait(qtbot, widget)
    assert not [n for n in notes() if n[0] == "error"], notes()
    said = [msg for sev, msg in notes() if sev == "info" and "prepared as a measured PSF" in msg]
    assert said and "background 99 subtracted" in said[0] and "recentred by (-3, +2) px" in said[0], notes()
    assert "PSF: background 99 subtracted" in widget.status.value
    out = viewer.layers["blurry stage 1"]
    assert out.metadata["napari_fcnn_deblur"]["kernel_preparation"].startswith("background 99 subtracted")
    prepared = deblur(gaussian_case["blurry"], prepare_psf(bead).kernel, 0.01, 1, "cpu", model_file)
    np.testing.assert_allclose(out.data, prepared, atol=1e-5)
    true = deblur(gaussian_case["blurry"], gaussian_psf(2.0), 0.01, 1, "cpu", model_file)
    assert psnr(out.data, gaussian_case["gt"]) > psnr(true, gaussian_case["gt"]) - 0.3
    np.testing.assert_array_equal(viewer.layers["bead psf"].data, bead)  # the kernel layer is not modified

    widget.kernel_prep.value = "raw"  # as it is: the old behaviour, a box on the offset
    run_and_wait(qtbot, widget)
    raw = viewer.layers["blurry stage 1"]
    assert raw.metadata["napari_fcnn_deblur"]["kernel_preparation"] == "used as it is"
    assert psnr(raw.data, gaussian_case["gt"]) < psnr(true, gaussian_case["gt"]) - 10
    widget.kernel_source.value = "Gaussian"
    assert not shown(widget, widget.kernel_prep)  # generated kernels need no preparation


# ----------------------------------------------------------------------------- whole stacks: memory, on-disk layers


def test_whole_stack_run_peak_memory_under_2_5x_the_layer(model_file, tmp_path):
    """The worker of a whole-layer stack run with per-stage and gradient layers: numpy peak < 2.5 × float32 size.

    Before, the run kept a float32 copy of the stack per stage and two more per stage for the
    gradients (3 stages: 10 copies; tracemalloc peak ≈ 14 × the float32 size). tracemalloc sees
    numpy's buffers, not torch's (one chunk's working memory, independent of the stack's depth).
    """
    import tracemalloc

    from napari_fcnn_deblur import deblur_stages

    stack = np.random.default_rng(0).random((16, 96, 96), dtype=np.float32)  # already on [0, 1]: identity map
    kernel = random_motion_kernel(np.random.default_rng(3), 15)
    folder = widget_module._ScratchFolder()
    job = widget_module._Job("stack", stack, False, kernel, 0.01, 3, "cpu", model_file, (), False,
                             gradients=True, scratch=folder.new_run())
    tracemalloc.start()
    try:
        items = list(widget_module._deblur_items(job))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    stages = [it.result for it in items if isinstance(it, widget_module._StageDone)]
    assert not [it for it in items if isinstance(it, widget_module._Failed)]
    assert peak < 2.5 * stack.nbytes, f"peak {peak / stack.nbytes:.2f} × the layer's float32 size"
    assert [s.stage for s in stages] == [0, 1, 2, 3]
    final = stages[-1].image
    assert type(final) is np.ndarray and final.shape == stack.shape  # the result is in memory
    for s in stages[:-1]:
        assert isinstance(s.image, np.memmap) and Path(s.image.filename).parent == job.scratch
    assert all(isinstance(g, np.memmap) for s in stages[1:] for g in (s.grad_x, s.grad_y))
    # the same numbers as the whole-image engine (checked on one plane: same intensity map, noise and model)
    expected = list(deblur_stages(stack[5], kernel, 0.01, 3, "cpu", model_file))
    for got, want in zip(stages, expected, strict=True):
        np.testing.assert_allclose(got.image[5], want.image, atol=1e-5)
        if want.grad_x is not None:
            np.testing.assert_allclose(got.grad_x[5], want.grad_x, atol=1e-5)
    root = folder.root
    folder.close()
    assert not root.exists()


def _stack_viewer(make_napari_viewer, case, model_file):
    viewer = make_napari_viewer()
    planes = np.stack([case["blurry"][:64, :64], case["blurry"][40:104, 40:104], case["blurry"][80:144, 70:134]])
    viewer.add_image(planes, name="stack")
    viewer.add_image(case["kernel"], name="psf")
    widget = open_widget(viewer, model_file)
    widget.scope.value = WHOLE_LAYER
    widget.iterations.value = 2
    widget.show_gradients.value = True
    return viewer, widget


def test_whole_stack_layers_on_disk_and_their_files_removed(make_napari_viewer, qtbot, case, model_file):
    viewer, widget = _stack_viewer(make_napari_viewer, case, model_file)
    run_and_wait(qtbot, widget)
    final = viewer.layers["stack stage 2"]
    assert type(final.data) is np.ndarray  # the answer is a normal in-memory layer
    on_disk = ["stack stage 0", "stack stage 1", "stack grad x stage 1", "stack grad y stage 1",
               "stack grad x stage 2", "stack grad y stage 2"]
    files = {name: Path(viewer.layers[name].data.filename) for name in on_disk}
    assert all(f.is_file() and f.parent.parent == widget._scratch.root for f in files.values())
    assert viewer.layers["stack stage 1"].metadata["napari_fcnn_deblur"]["on_disk"]
    lo, hi = viewer.layers["stack grad x stage 1"].contrast_limits
    assert lo == pytest.approx(-hi) and hi > 0

    viewer.layers.remove("stack grad x stage 1")  # its file goes with it
    assert not files["stack grad x stage 1"].exists() and files["stack stage 0"].exists()

    widget.show_gradients.value = False
    run_and_wait(qtbot, widget)  # a re-run updates the layers: the old files go, the gradient layers too
    assert not any(f.exists() for f in files.values())
    assert [lyr.name for lyr in viewer.layers] == ["stack", "psf", "stack stage 0", "stack stage 1", "stack stage 2"]
    new_file = Path(viewer.layers["stack stage 0"].data.filename)
    assert new_file.is_file()

    root, stage0 = widget._scratch.root, viewer.layers["stack stage 0"]
    viewer.layers.clear()  # what closing the viewer does: every file goes, and the temporary folder
    assert not root.exists() and widget._scratch.root is None
    assert np.isfinite(np.asarray(stage0.data)).all()  # a layer kept elsewhere stays readable (POSIX)


def test_cancelled_whole_stack_run_leaves_the_viewer_as_it_was(make_napari_viewer, qtbot, case, model_file,
                                                              monkeypatch, notes):
    viewer, widget = _stack_viewer(make_napari_viewer, case, model_file)
    before = snapshot(viewer)
    monkeypatch.setattr(widget_module.DeblurRun, "steps", slowed_steps(widget_module.DeblurRun.steps, 0.1))
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.progress.value > 0, timeout=30_000)
    widget.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    assert snapshot(viewer) == before
    assert any(sev == "info" and "nothing was added" in msg for sev, msg in notes()), notes()
    assert widget._scratch.root is None  # the cancelled run's files are gone, and the temporary folder


def test_whole_stack_run_refused_without_disk_space(make_napari_viewer, qtbot, case, model_file, monkeypatch, notes):
    viewer, widget = _stack_viewer(make_napari_viewer, case, model_file)
    before = snapshot(viewer)
    monkeypatch.setattr(widget_module._ScratchFolder, "free_bytes", lambda self: 1000)
    run_and_wait(qtbot, widget)
    errors = [msg for sev, msg in notes() if sev == "error"]
    assert any("keeps its intermediate stages and gradients on disk" in m and "TMPDIR" in m for m in errors), notes()
    assert snapshot(viewer) == before and widget._scratch.root is None
