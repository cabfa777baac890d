"""The one run path: a prepared run decides everything once, for any array-like, and every entry point uses it."""

import pickle

import numpy as np
import pytest

da = pytest.importorskip("dask.array")

from napari_fcnn_deblur.engine.intensity import EXACT_SIZE, intensity_scaling  # noqa: E402
from napari_fcnn_deblur.engine.noise import estimate_noise_level  # noqa: E402
from napari_fcnn_deblur.engine.run import DeblurRun, Progress, RunOptions, StageResult  # noqa: E402


class ArrayLike:
    """A minimal array-like (shape, dtype, slicing), like a zarr array or a napari layer's data."""

    def __init__(self, a):
        self._a = a
        self.shape, self.dtype, self.ndim = a.shape, a.dtype, a.ndim
        self.reads = 0

    def __getitem__(self, idx):
        self.reads += 1
        return self._a[idx]


def test_one_intensity_rule_for_numpy_dask_and_other_array_likes():
    rng = np.random.default_rng(0)
    big = (rng.random((5, 1000, 1000)) * 3000 + 100).astype(np.uint16)  # 5 M values: the sampled rule
    assert big.size > EXACT_SIZE
    ref = intensity_scaling(big)
    assert intensity_scaling(da.from_array(big, chunks=(1, 500, 500))) == ref
    assert intensity_scaling(ArrayLike(big)) == ref
    small = big[:2, :500, :500]
    assert intensity_scaling(da.from_array(small)) == intensity_scaling(small)
    floats = (big / 4000.0).astype(np.float32)
    assert intensity_scaling(floats) == intensity_scaling(da.from_array(floats, chunks=(1, 1000, 1000)))
    floats[3, 10, 10] = np.nan
    for a in (floats, da.from_array(floats, chunks=(1, 1000, 1000))):
        with pytest.raises(ValueError, match="NaN"):
            intensity_scaling(a)


def test_one_noise_rule_for_numpy_dask_and_other_array_likes():
    rng = np.random.default_rng(1)
    stack = (0.5 + rng.normal(0, 0.03, (40, 64, 64))).astype(np.float32)
    ref = estimate_noise_level(stack)
    assert ref == pytest.approx(0.03, rel=0.1)
    assert estimate_noise_level(da.from_array(stack, chunks=(1, 64, 64))) == ref
    lazy = ArrayLike(stack)
    assert estimate_noise_level(lazy) == ref
    assert lazy.reads <= 16 + 1  # at most 16 planes read (plus the intensity rule's one read)


def test_prepared_run_is_decided_once_and_picklable(camera_case, known_cascade, known_model_file):
    blurry, k, _ = camera_case
    stack = (np.stack([blurry, blurry[::-1]]).clip(0, 1) * 4000 + 100).astype(np.uint16)
    run = DeblurRun.prepare(stack, k, "auto", None, "cpu", known_model_file)
    assert run.iterations == 3 and 0 < run.noise_level < 0.05
    assert run.scaling == intensity_scaling(stack)
    opts = pickle.loads(pickle.dumps(run.options))
    assert isinstance(opts, RunOptions) and opts.model == str(known_model_file)
    again = DeblurRun.from_options(opts)
    np.testing.assert_array_equal(again.deblur(stack), run.deblur(stack))
    # a part of the image (one plane) runs with the whole image's intensity map and noise level
    np.testing.assert_allclose(run.deblur(stack[1]), run.deblur(stack)[1], atol=1e-6 * 4000)


def test_steps_report_progress_then_results_and_stop_when_closed(camera_case, known_cascade):
    blurry, k, _ = camera_case
    stack = np.stack([blurry, blurry * 0.9, blurry * 0.8])
    run = DeblurRun.prepare(stack, k, 0.01, 2, "cpu", known_cascade)
    items = list(run.steps(stack))
    results = [i for i in items if isinstance(i, StageResult)]
    progress = [i for i in items if isinstance(i, Progress)]
    assert [r.stage for r in results] == [0, 1, 2]
    assert progress[-1] == Progress(9, 9) and [p.done for p in progress] == sorted(p.done for p in progress)
    assert results[-1].image.shape == stack.shape and results[1].grad_x.shape == stack.shape
    np.testing.assert_allclose(results[-1].image, run.deblur(stack), atol=1e-5)
    seen = []
    gen = run.stages(stack, progress=seen.append)
    first = next(gen)
    gen.close()  # stops before the next stage
    assert first.stage == 0 and seen and seen[-1].done == 3


def test_options_are_validated_before_any_work(camera_case, known_cascade):
    blurry, k, _ = camera_case
    bad = [
        (dict(noise_level=-1), "noise_level"),
        (dict(noise_level="loud"), "noise_level"),
        (dict(iterations=9), "iterations"),
        (dict(device="tpu"), "device"),
        (dict(precision="fp8"), "precision"),
        (dict(tile_size=3), "tile_size"),
        (dict(intensity_range=(1, 0)), "intensity_range"),
    ]
    for kwargs, word in bad:
        with pytest.raises(ValueError, match=word):
            DeblurRun.prepare(blurry, k, model=known_cascade, **{"noise_level": 0.01, **kwargs})
    with pytest.raises(ValueError, match="real numeric"):
        DeblurRun.prepare(np.zeros((20, 20), bool), k, model=known_cascade)
    with pytest.raises(ValueError, match="larger than the image"):
        DeblurRun.prepare(blurry[:5, :5], k, model=known_cascade)


def test_robustness_at_the_boundary(camera_case, known_cascade):
    """Values and options that used to give NaN, inf or a TypeError are clear ValueErrors (or a warning)."""
    import datetime
    import warnings

    from napari_fcnn_deblur import deblur

    blurry, k, _ = camera_case
    with pytest.raises(ValueError, match="real numeric"):
        DeblurRun.prepare(np.zeros((20, 20), "m8[s]"), k[:5, :5], model=known_cascade)
    with pytest.raises(ValueError, match="real numeric"):
        deblur(np.full((20, 20), datetime.timedelta(seconds=1)), k[:5, :5], model=known_cascade)
    with pytest.raises(ValueError, match="model must be"):
        DeblurRun.prepare(blurry, k, model=123)
    huge = blurry.astype(np.float64) * 1e39
    with pytest.raises(ValueError, match="beyond what float32 holds"):
        deblur(huge, k, model=known_cascade)
    with pytest.raises(ValueError, match="beyond what float32 holds"):
        deblur(blurry, k, model=known_cascade, intensity_range=(0, 1e39))
    huge_k = k.astype(np.float64) / k.max() * 1.5e308
    assert not np.isfinite(huge_k.sum())  # its sum overflows float64
    out = deblur(blurry, huge_k, model=known_cascade)
    np.testing.assert_allclose(out, deblur(blurry, k, model=known_cascade), atol=1e-5)
    with pytest.raises(ValueError, match="too small to estimate"):
        deblur(np.random.default_rng(0).random((1, 40)), np.ones((1, 3)), noise_level="auto", model=known_cascade)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        deblur(blurry * 1e-6, k, model=known_cascade)
    assert any("span only" in str(w.message) for w in caught)


def test_a_suspended_or_abandoned_run_leaves_the_callers_grad_mode_alone(camera_case, known_cascade):
    """Stage generators must not hold torch's inference mode across a yield (it is thread-global state)."""
    import torch

    from napari_fcnn_deblur import deblur_stages

    blurry, k, _ = camera_case
    gen = deblur_stages(blurry, k, 0.01, model=known_cascade)
    next(gen)  # suspended between stages
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    del gen
    stacked = deblur_stages(np.stack([blurry, blurry * 0.5]), [k, k], 0.01, model=known_cascade, channel_axis=0)
    list(stacked)  # zip over per-channel generators leaves the others suspended at the end
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    x = torch.ones(2, requires_grad=True)
    (x * 2).sum().backward()  # autograd still works after
    assert x.grad is not None
