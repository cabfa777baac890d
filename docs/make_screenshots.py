"""Regenerate the screenshots in docs/images/ from the real widget in a real napari window.

Run headless with::

    xvfb-run -a python docs/make_screenshots.py            # shipped (trained) models
    xvfb-run -a python docs/make_screenshots.py --model my_cascade.safetensors
    xvfb-run -a python docs/make_screenshots.py --demo-cascade   # no trained weights yet: a hand-set cascade

Writes ``widget.png`` (whole window after a run), ``before_after.png``, ``stages.png``,
``gradients.png`` (window, show gradients on) and ``stack_preview.png`` (a time series,
current-plane preview).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def demo_cascade_file(folder: Path) -> Path:
    """A 3-stage cascade whose FCNNs soft-threshold the gradients (a stand-in until trained weights exist)."""
    import torch

    from napari_fcnn_deblur import Cascade, save_cascade

    cascade = Cascade(3, gammas=[50.0] * 4, noise_level=0.01, metadata={"kind": "demo soft-threshold"})
    with torch.no_grad():
        for den in cascade.denoisers:
            convs = den.convs
            for conv in convs:
                conv.weight.zero_()
                conv.bias.zero_()
            c = convs[0].kernel_size[0] // 2
            convs[0].weight[0, 0, c, c], convs[0].weight[1, 0, c, c] = 1.0, -1.0
            convs[0].bias[:2] = -0.03
            for conv in convs[1:-1]:
                conv.weight[0, 0, 1, 1] = conv.weight[1, 1, 1, 1] = 1.0
            convs[-1].weight[0, 0, 1, 1], convs[-1].weight[0, 1, 1, 1] = 1.0, -1.0
    return save_cascade(cascade, folder / "demo_cascade.safetensors")


def wait_for(widget, timeout: float = 900.0) -> None:
    from qtpy.QtWidgets import QApplication

    t0 = time.time()
    while widget.running:
        QApplication.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout:
            raise TimeoutError("the run did not finish")
    for _ in range(20):  # let the canvas catch up
        QApplication.processEvents()
        time.sleep(0.01)


def only_visible(viewer, *names: str) -> None:
    for layer in viewer.layers:
        layer.visible = layer.name in names


def caption(img: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    im = Image.fromarray(np.ascontiguousarray(img[..., :3]))
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=max(14, im.width // 28))
    box = draw.textbbox((8, 6), text, font=font)
    draw.rectangle((box[0] - 4, box[1] - 3, box[2] + 4, box[3] + 3), fill=(0, 0, 0))
    draw.text((8, 6), text, fill=(255, 255, 255), font=font)
    return np.asarray(im)


def row(images: list[np.ndarray], gap: int = 6) -> np.ndarray:
    h = min(i.shape[0] for i in images)
    parts = []
    for i, im in enumerate(images):
        parts.append(im[:h, :, :3])
        if i < len(images) - 1:
            parts.append(np.full((h, gap, 3), 255, np.uint8))
    return np.concatenate(parts, axis=1)


def canvas_shot(viewer, layer_name: str, size=(420, 420)) -> np.ndarray:
    only_visible(viewer, layer_name)
    viewer.reset_view()
    return viewer.screenshot(canvas_only=True, size=size, flash=False)


def psnr(a: np.ndarray, gt: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((np.clip(a, 0, 1) - gt) ** 2)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="cascade file to use instead of the shipped models")
    parser.add_argument("--demo-cascade", action="store_true", help="use a hand-set soft-threshold cascade")
    parser.add_argument("--out", default=str(HERE / "images"), help="output folder (default docs/images)")
    args = parser.parse_args(argv)

    import imageio.v3 as iio
    import napari

    from napari_fcnn_deblur import available_models
    from napari_fcnn_deblur._sample_data import fluorescence_data
    from napari_fcnn_deblur._widget import FROM_FILE, WHOLE_LAYER

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = Path(args.model) if args.model else None
    if args.demo_cascade:
        model = demo_cascade_file(Path(tempfile.mkdtemp(prefix="fcnn_screens_")))
    if model is None and not available_models():
        print("error: no trained model is installed; pass --model PATH or --demo-cascade", file=sys.stderr)
        return 2
    print(f"model: {model or 'shipped'}")

    from napari._qt import qt_main_window

    qt_main_window.SHOW_QT_WARNING = False  # the PyQt5 deprecation toast would sit on every picture
    viewer = napari.Viewer(show=True, title="napari: FCNN deblur")
    viewer.window._qt_window.resize(1440, 900)
    viewer.open_sample("napari-fcnn-deblur", "motion_blur")
    gt = viewer.layers["blurry photo"].metadata["ground_truth"]
    _, widget = viewer.window.add_plugin_dock_widget("napari-fcnn-deblur", "FCNN deblur")
    if model is not None:
        widget.model_source.value = FROM_FILE
        widget.model_file.value = model

    # 1. the window after a run: the final stage on top, selected
    widget.run()
    wait_for(widget)
    viewer.reset_view()
    iio.imwrite(out / "widget.png", viewer.screenshot(canvas_only=False, flash=False))
    n = widget.iterations.value
    print(
        "PSNR blurry",
        round(psnr(viewer.layers["blurry photo"].data, gt), 2),
        "dB; stages",
        [round(psnr(viewer.layers[f"blurry photo stage {k}"].data, gt), 2) for k in range(n + 1)],
    )

    # 2. before / after, 3. every stage (canvas views of the same layers)
    before = canvas_shot(viewer, "blurry photo")
    after = canvas_shot(viewer, f"blurry photo stage {n}")
    iio.imwrite(out / "before_after.png", row([caption(before, "blurry input"), caption(after, f"after stage {n}")]))
    stages = [
        caption(
            canvas_shot(viewer, f"blurry photo stage {k}", (320, 320)),
            "initial deconvolution" if k == 0 else f"stage {k}",
        )
        for k in range(n + 1)
    ]
    iio.imwrite(out / "stages.png", row([caption(canvas_shot(viewer, "blurry photo", (320, 320)), "input"), *stages]))

    # 4. fluorescence sample with gradients shown
    viewer.layers.clear()
    viewer.open_sample("napari-fcnn-deblur", "fluorescence")
    widget.show_gradients.value = True
    widget.run()
    wait_for(widget)
    only_visible(viewer, "PSF", f"blurry fluorescence grad x stage {n}")
    viewer.layers.selection.active = viewer.layers[f"blurry fluorescence grad x stage {n}"]
    viewer.reset_view()
    iio.imwrite(out / "gradients.png", viewer.screenshot(canvas_only=False, flash=False))

    # 5. a time series: preview of the plane on screen
    viewer.layers.clear()
    widget.show_gradients.value = False
    (image, _, _), (kernel, kernel_kw, _) = fluorescence_data()
    rng = np.random.default_rng(0)
    frames = np.stack([np.roll(image, (3 * t, 2 * t), axis=(0, 1)) * (1 - 0.05 * t) for t in range(8)])
    frames = (frames + rng.normal(0, 0.002, frames.shape)).astype(np.float32)
    viewer.add_image(frames, name="time series", colormap="green", contrast_limits=(0, 1))
    viewer.add_image(kernel, **{k: v for k, v in kernel_kw.items() if k != "metadata"})
    viewer.dims.set_current_step(0, 5)
    widget.image_layer.value = viewer.layers["time series"]
    widget.scope.value = widget.scope.choices[0]
    widget.run()
    wait_for(widget)
    viewer.reset_view()
    iio.imwrite(out / "stack_preview.png", viewer.screenshot(canvas_only=False, flash=False))
    assert WHOLE_LAYER in widget.scope.choices

    viewer.close()
    print(f"screenshots written to {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
