import numpy as np
import pytest
import torch

from conftest import psnr
from napari_fcnn_deblur import StageResult, deblur, deblur_stages
from napari_fcnn_deblur.engine.devices import resolve_device


def test_deblur_sharpens(camera_case, known_cascade):
    blurry, k, gt = camera_case
    out = deblur(blurry, k, model=known_cascade, device="cpu")
    assert out.shape == blurry.shape and out.dtype == np.float32
    assert psnr(out, gt) > psnr(blurry, gt) + 3


def test_stages_yield_every_step_and_match_deblur(camera_case, known_cascade):
    blurry, k, gt = camera_case
    results = list(deblur_stages(blurry, k, iterations=3, model=known_cascade))
    assert [r.stage for r in results] == [0, 1, 2, 3]
    assert all(isinstance(r, StageResult) and r.iterations == 3 for r in results)
    assert results[0].grad_x is None and results[0].grad_y is None
    for r in results[1:]:
        assert r.grad_x.shape == blurry.shape and r.grad_y.shape == blurry.shape
    np.testing.assert_allclose(results[-1].image, deblur(blurry, k, model=known_cascade), atol=1e-5)
    # the known cascade improves stage by stage on this case
    scores = [psnr(r.image, gt) for r in results]
    assert scores[-1] > scores[0]


def test_closing_the_generator_stops_early(camera_case, known_cascade):
    blurry, k, _ = camera_case
    gen = deblur_stages(blurry, k, model=known_cascade)
    first = next(gen)
    gen.close()
    assert first.stage == 0
    with pytest.raises(StopIteration):
        next(gen)


def test_fewer_iterations(camera_case, known_cascade):
    blurry, k, _ = camera_case
    assert [r.stage for r in deblur_stages(blurry, k, iterations=1, model=known_cascade)] == [0, 1]
    with pytest.raises(ValueError, match="iterations must be between 0 and 3"):
        deblur(blurry, k, iterations=4, model=known_cascade)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
def test_dtypes_keep_shape_and_units(camera_case, known_cascade, dtype):
    blurry, k, gt = camera_case
    if dtype == np.uint8:
        img = (blurry.clip(0, 1) * 255).round().astype(dtype)
        unit = 255.0
    elif dtype == np.uint16:
        img = (blurry.clip(0, 1) * 3000 + 200).round().astype(dtype)
        unit = None
    else:
        img = blurry.astype(dtype)
        unit = 1.0
    before = img.copy()
    out = deblur(img, k, model=known_cascade)
    np.testing.assert_array_equal(img, before)  # never modified in place
    assert out.shape == img.shape and out.dtype == np.float32
    if unit is not None:
        assert psnr(out / unit, gt) > psnr(img / unit, gt) + 2
    else:  # output stays in the input's own units
        assert abs(np.median(out) - np.median(img.astype(np.float32))) < 100


def test_rgb_per_channel(camera_case, known_cascade):
    blurry, k, _ = camera_case
    rgb = np.stack([blurry, blurry * 0.5, blurry * 0.8], axis=-1)
    out = deblur(rgb, k, model=known_cascade)
    assert out.shape == rgb.shape
    single = deblur(blurry, k, model=known_cascade)
    np.testing.assert_allclose(out[..., 0], single, atol=1e-4)
    rgba = np.concatenate([rgb, np.ones(rgb.shape[:2] + (1,), np.float32)], axis=-1)
    out4 = deblur(rgba, k, model=known_cascade)
    assert out4.shape == rgba.shape and np.all(out4[..., 3] == 1)


def test_stack_plane_by_plane(camera_case, known_cascade):
    blurry, k, _ = camera_case
    stack = np.stack([blurry, blurry[::-1].copy(), blurry[:, ::-1].copy()])
    out = deblur(stack, k, model=known_cascade)
    assert out.shape == stack.shape
    np.testing.assert_allclose(out[1], deblur(stack[1], k, model=known_cascade), atol=1e-4)
    res = list(deblur_stages(stack[None], k, iterations=2, model=known_cascade))  # (T, Z, Y, X)
    assert res[-1].image.shape == (1,) + stack.shape and res[-1].grad_x.shape == (1,) + stack.shape
    np.testing.assert_allclose(res[-1].image[0], deblur(stack, k, iterations=2, model=known_cascade), atol=1e-4)


def test_stack_in_several_batches_matches(camera_case, known_cascade, monkeypatch):
    from napari_fcnn_deblur.engine import run as run_module

    blurry, k, _ = camera_case
    stack = np.stack([blurry, blurry * 0.9])
    whole = [r.image for r in deblur_stages(stack, k, model=known_cascade)]
    monkeypatch.setattr(run_module, "MAX_BATCH_PIXELS", 10)  # one plane per batch
    split = [r.image for r in deblur_stages(stack, k, model=known_cascade)]
    for a, b in zip(whole, split):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(deblur(stack, k, model=known_cascade), whole[-1], atol=1e-5)


def test_model_file_argument(camera_case, known_model_file, known_cascade):
    blurry, k, _ = camera_case
    np.testing.assert_allclose(
        deblur(blurry, k, model=known_model_file), deblur(blurry, k, model=known_cascade), atol=1e-6
    )


@pytest.mark.parametrize(
    "image, kernel, kwargs, match",
    [
        (np.ones(10), np.ones((3, 3)), {}, "at least 2D"),
        (np.ones((0, 10)), np.ones((3, 3)), {}, "empty"),
        (np.full((20, 20), np.nan), np.ones((3, 3)), {}, "NaN"),
        (np.ones((20, 20), bool), np.ones((3, 3)), {}, "numeric"),
        (np.ones((20, 20)), np.ones((25, 25)), {}, "larger than the image"),
        (np.ones((20, 20)), np.zeros((3, 3)), {}, "all zero"),
        (np.ones((20, 20)), -np.ones((3, 3)), {}, "negative"),
        (np.ones((20, 20)), np.ones((3, 3, 3)), {}, "2D"),
        (np.ones((20, 20)), np.ones((3, 3)), {"noise_level": -1}, "noise_level"),
        (np.ones((20, 20)), np.ones((3, 3)), {"noise_level": "loud"}, "noise_level"),
        (np.ones((20, 20)), np.ones((3, 3)), {"iterations": 2.5}, "iterations"),
        (np.ones((20, 20)), np.ones((3, 3)), {"device": "tpu"}, "device"),
    ],
)
def test_bad_inputs_raise_value_error(known_cascade, image, kernel, kwargs, match):
    img_before, k_before = image.copy(), kernel.copy()
    with pytest.raises(ValueError, match=match):
        deblur(image, kernel, model=known_cascade, **kwargs)
    with pytest.raises(ValueError, match=match):
        next(deblur_stages(image, kernel, model=known_cascade, **kwargs))
    np.testing.assert_array_equal(image, img_before)
    np.testing.assert_array_equal(kernel, k_before)


def test_device_resolution():
    assert resolve_device("auto").type in {"cuda", "mps", "cpu"}
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_channel_axis_deblurs_each_channel_with_its_own_kernel(camera_case, known_cascade):
    import dask.array as da

    from conftest import line_kernel

    blurry, k, _ = camera_case
    k2 = line_kernel(7, 100.0)
    # four fluorophores (Y, X, 4): without channel_axis the 4th would be taken as alpha
    chans = [blurry, blurry[::-1] * 0.5, blurry[:, ::-1] * 3.0, blurry.T.copy() * 2.0]
    img = np.stack(chans, axis=-1)
    kernels = [k, k2, k, k2]
    out = deblur(img, kernels, 0.01, model=known_cascade, channel_axis=-1)
    assert out.shape == img.shape
    for c in range(4):
        np.testing.assert_allclose(out[..., c], deblur(chans[c], kernels[c], 0.01, model=known_cascade), atol=1e-5)
    rgba = deblur(img, k, 0.01, model=known_cascade)
    np.testing.assert_array_equal(rgba[..., 3], img[..., 3])  # the default rule keeps alpha as it was
    # (C, Y, X): each channel gets its own intensity map, unlike one stack
    cyx = np.moveaxis(img, -1, 0)
    np.testing.assert_allclose(deblur(cyx, kernels, 0.01, model=known_cascade, channel_axis=0),
                               np.moveaxis(out, -1, 0), atol=1e-5)
    lazy = deblur(da.from_array(cyx), kernels, 0.01, model=known_cascade, channel_axis=0)
    np.testing.assert_allclose(lazy.compute(scheduler="sync"), np.moveaxis(out, -1, 0), atol=1e-5)
    stages = list(deblur_stages(cyx, kernels, [0.01, 0.01, 0.01, 0.01], model=known_cascade, channel_axis=0))
    assert [s.stage for s in stages] == [0, 1, 2, 3] and len(stages[-1].per_channel) == 4
    assert stages[-1].image.shape == cyx.shape and stages[1].grad_x.shape == cyx.shape
    np.testing.assert_allclose(stages[-1].image, np.moveaxis(out, -1, 0), atol=1e-5)
    with pytest.raises(ValueError, match="one per channel"):
        deblur(cyx, [k, k2], 0.01, model=known_cascade, channel_axis=0)
    with pytest.raises(ValueError, match="out of range"):
        deblur(cyx, k, 0.01, model=known_cascade, channel_axis=5)
    with pytest.raises(ValueError, match="at least 3 axes"):
        deblur(blurry, k, 0.01, model=known_cascade, channel_axis=0)
