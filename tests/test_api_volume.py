"""The public API with a 3D PSF: volumetric deconvolution, stages, dask, spacing, errors."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import soft_volume_cascade
from napari_fcnn_deblur import deblur, deblur_stages
from napari_fcnn_deblur.data.phantoms import blur_volume, phantom_3d
from napari_fcnn_deblur.data.psf3d import resample_psf, widefield_psf_3d
from napari_fcnn_deblur.engine.volume import VolumeRun


@pytest.fixture(scope="module")
def case():
    psf = widefield_psf_3d((7, 11, 11), (0.3, 0.1, 0.1), 1.2, 0.52, 1.333)
    vol = phantom_3d((22, 40, 40), "filaments", density=0.6, seed=3)
    data, sharp = blur_volume(vol, psf, photons=300.0, read_noise=1.0, offset=0.0, rng=np.random.default_rng(0))
    return (data / 300).astype(np.float32), psf, sharp, soft_volume_cascade()


def _psnr(x, gt):
    return 10 * np.log10(1.0 / np.mean((np.asarray(x, np.float64) - gt) ** 2))


def test_a_3d_psf_deconvolves_the_volume(case):
    y, psf, sharp, vc = case
    out = deblur(y, psf, "auto", model=vc, device="cpu")
    assert out.shape == y.shape and out.dtype == np.float32
    assert _psnr(out, sharp) > _psnr(y, sharp) + 2.0
    np.testing.assert_array_equal(out, VolumeRun.prepare(y, psf, "auto", model=vc, device="cpu").deblur(y))
    stages = list(deblur_stages(y, psf, "auto", model=vc, device="cpu"))
    assert [s.stage for s in stages] == [0, 1, 2, 3]
    np.testing.assert_array_equal(stages[-1].image, out)
    assert stages[1].grad_z.shape == y.shape


def test_dask_runs_one_task_per_volume(case):
    da = pytest.importorskip("dask.array")
    y, psf, _, vc = case
    stack = np.stack([y, y[:, ::-1]])
    lazy = deblur(da.from_array(stack, chunks=(1, 11, 20, 20)), psf, 0.01, model=vc, device="cpu", iterations=1)
    assert isinstance(lazy, da.Array) and lazy.numblocks == (2, 1, 1, 1)
    np.testing.assert_allclose(lazy.compute(), deblur(stack, psf, 0.01, model=vc, device="cpu", iterations=1),
                               rtol=1e-5, atol=1e-5)


def test_dask_chunks_holding_several_volumes_become_one_task_per_volume(case):
    da = pytest.importorskip("dask.array")
    y, psf, _, vc = case
    stack = np.stack([y, y[:, ::-1], y[:, :, ::-1]])
    lazy = deblur(da.from_array(stack, chunks=(3, 11, 20, 20)), psf, 0.01, model=vc, device="cpu", iterations=1)
    assert lazy.numblocks == (3, 1, 1, 1)
    np.testing.assert_allclose(lazy.compute(), deblur(stack, psf, 0.01, model=vc, device="cpu", iterations=1),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axis", [0, 1])
def test_one_3d_psf_serves_every_channel_of_a_volume(case, axis):
    y, psf, _, vc = case  # psf: 7 planes, 3 channels
    channels = [y, 0.5 * y, y[:, ::-1]]
    stack = np.stack(channels, axis=axis)
    out = deblur(stack, psf, 0.01, model=vc, device="cpu", iterations=1, channel_axis=axis)
    assert out.shape == stack.shape
    for c, ch in enumerate(channels):
        np.testing.assert_allclose(np.take(out, c, axis=axis),
                                   deblur(ch, psf, 0.01, model=vc, device="cpu", iterations=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(deblur(stack, [psf] * 3, 0.01, model=vc, device="cpu", iterations=1,
                                         channel_axis=axis), out)
    stages = list(deblur_stages(stack, psf, 0.01, model=vc, device="cpu", iterations=1, channel_axis=axis))
    np.testing.assert_array_equal(stages[-1].image, out)
    # as many PSF planes as channels: one PSF, or one 2D kernel per channel? Never guessed: the list says which
    psf3 = widefield_psf_3d((3, 11, 11), (0.3, 0.1, 0.1), 1.2, 0.52, 1.333)
    with pytest.raises(ValueError, match=r"\[psf\] \* 3 for the one PSF, or list\(kernels\)"):
        deblur(stack, psf3, 0.01, model=vc, device="cpu", iterations=1, channel_axis=axis)
    one = deblur(stack, [psf3] * 3, 0.01, model=vc, device="cpu", iterations=1, channel_axis=axis)
    np.testing.assert_allclose(np.take(one, 1, axis=axis),
                               deblur(channels[1], psf3, 0.01, model=vc, device="cpu", iterations=1),
                               rtol=1e-5, atol=1e-6)


def test_2d_channel_images_keep_stacked_kernels_and_their_1_percent_default(camera_case, known_model_file):
    blurry, k, _ = camera_case
    k2 = np.rot90(k)
    cyx = np.stack([blurry, blurry[::-1]])
    out = deblur(cyx, np.stack([k, k2]), model=known_model_file, channel_axis=0, iterations=1)
    np.testing.assert_array_equal(out[1], deblur(blurry[::-1], k2, 0.01, model=known_model_file, iterations=1))


def test_dask_volumes_too_large_for_one_tile_stay_one_task_with_networks_in_tiles(case):
    da = pytest.importorskip("dask.array")
    y, psf, _, vc = case
    stack = np.stack([y, y[:, ::-1]])
    lazy = deblur(da.from_array(stack, chunks=(1, 11, 20, 20)), psf, 0.01, model=vc, device="cpu", iterations=1,
                  tile_size=32)
    assert lazy.numblocks == (2, 1, 1, 1)
    np.testing.assert_allclose(lazy.compute(), deblur(stack, psf, 0.01, model=vc, device="cpu", iterations=1),
                               rtol=1e-5, atol=1e-5)


def test_spacing_resamples_the_psf(case):
    y, psf, _, vc = case
    fine = widefield_psf_3d((13, 21, 21), (0.15, 0.05, 0.05), 1.2, 0.52, 1.333)
    a = deblur(y, fine, 0.01, model=vc, device="cpu", iterations=1, spacing=(0.3, 0.1, 0.1),
               psf_spacing=(0.15, 0.05, 0.05))
    b = deblur(y, resample_psf(fine, (0.15, 0.05, 0.05), (0.3, 0.1, 0.1)), 0.01, model=vc, device="cpu",
               iterations=1)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_2d_kernels_are_resampled_too(camera_case, known_model_file):
    from napari_fcnn_deblur.data.psf import gaussian_psf

    blurry, _, _ = camera_case
    fine = gaussian_psf(3.0)
    a = deblur(blurry, fine, 0.01, model=known_model_file, spacing=(0.2, 0.2), psf_spacing=(0.1, 0.1))
    b = deblur(blurry, resample_psf(fine, (0.1, 0.1), (0.2, 0.2)), 0.01, model=known_model_file)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "image, kernel, kw, message",
    [
        (np.ones((40, 40), np.float32), np.ones((3, 5, 5)), {}, "needs a volume"),
        (np.ones((10, 40, 40), np.float32), np.ones((13, 5, 5)), {}, "larger than the volume"),
        (np.ones((10, 40, 40), np.float32), np.ones((3, 5, 5)), {"psf_spacing": (1, 1, 1)}, "not the image's spacing"),
        (np.ones((10, 40, 40), np.float32), np.ones((3, 5, 5)), {"model": "per-level"}, "volume cascade"),
    ],
)
def test_volume_errors(image, kernel, kw, message):
    kw.setdefault("model", soft_volume_cascade())
    with pytest.raises(ValueError, match=message):
        deblur(image, kernel, 0.01, **kw)


def test_the_default_noise_is_auto_for_a_3d_psf_and_one_percent_for_2d(case, camera_case, known_model_file):
    y, psf, _, vc = case
    np.testing.assert_array_equal(deblur(y, psf, model=vc, device="cpu", iterations=1),
                                  deblur(y, psf, "auto", model=vc, device="cpu", iterations=1))
    first = next(deblur_stages(y, psf, model=vc, device="cpu", iterations=1))
    assert first.noise.estimated
    blurry, k, _ = camera_case
    np.testing.assert_array_equal(deblur(blurry, k, model=known_model_file, iterations=1),
                                  deblur(blurry, k, 0.01, model=known_model_file, iterations=1))
