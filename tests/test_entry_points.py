"""One stack, four entry points (deblur, deblur on dask, the CLI, the widget's whole-layer run): one result."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
da = pytest.importorskip("dask.array")
tifffile = pytest.importorskip("tifffile")

from napari_fcnn_deblur import deblur  # noqa: E402
from napari_fcnn_deblur._widget import AUTO, FROM_FILE, NUMBER, WHOLE_LAYER  # noqa: E402
from napari_fcnn_deblur.cli import main  # noqa: E402


@pytest.mark.parametrize("noise", ["0.01", "auto"])
def test_stack_gives_the_same_result_through_every_entry_point(make_napari_viewer, qtbot, camera_case,
                                                               known_model_file, tmp_path, noise):
    blurry, k, _ = camera_case
    planes = np.stack([blurry[:96, :100], blurry[40:136, 50:150], blurry[70:166, 20:120], blurry[5:101, 60:160]])
    # uint16 camera-like data: the intensity map (percentiles) matters, unlike a [0, 1] float image
    stack = (planes.clip(0, 1) * 3500 + 120).round().astype(np.uint16)
    level = "auto" if noise == "auto" else float(noise)
    eager = deblur(stack, k, level, model=known_model_file, device="cpu", precision="fp32")
    lazy = deblur(da.from_array(stack, chunks=(2, 48, 50)), k, level, model=known_model_file, device="cpu",
                  precision="fp32").compute(scheduler="sync")
    src, kern, out = tmp_path / "stack.tif", tmp_path / "psf.npy", tmp_path / "out.tif"
    tifffile.imwrite(src, stack)
    np.save(kern, k)
    assert main(["deblur", str(src), "-k", str(kern), "-o", str(out), "--noise", noise, "--model",
                 str(known_model_file), "--device", "cpu", "--precision", "fp32", "-q"]) == 0
    cli = tifffile.imread(out)

    viewer = make_napari_viewer()
    viewer.add_image(stack.copy(), name="stack")
    viewer.add_image(k, name="psf")
    _, widget = viewer.window.add_plugin_dock_widget("napari-fcnn-deblur", "FCNN deblur")
    widget.model_source.value = FROM_FILE
    widget.model_file.value = known_model_file
    widget.image_layer.value = viewer.layers["stack"]
    widget.kernel_layer.value = viewer.layers["psf"]
    if noise == "auto":
        widget.noise_mode.value = AUTO
    else:
        widget.noise_mode.value, widget.noise_percent.value = NUMBER, 1.0  # %: noise_level 0.01
    widget.scope.value = WHOLE_LAYER
    widget.device.value, widget.precision.value = "cpu", "fp32"
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    gui = np.asarray(viewer.layers["stack stage 3"].data)

    tol = 1e-5 * float(stack.max() - stack.min())
    for name, other in (("dask", lazy), ("CLI", cli), ("widget", gui)):
        assert other.shape == stack.shape, name
        err = float(np.abs(other - eager).max())
        assert err < tol, f"{name} differs from deblur by {err:.3g} (> {tol:.3g})"
