import numpy as np

from napari_fcnn_deblur.engine.intensity import intensity_scaling


def test_unit_float_images_used_as_they_are():
    a = np.random.default_rng(0).normal(0.5, 0.3, (20, 20)).clip(-0.1, 1.1).astype(np.float32)
    s = intensity_scaling(a)
    assert (s.offset, s.scale) == (0.0, 1.0)


def test_uint8_full_range():
    s = intensity_scaling(np.array([[0, 10], [20, 30]], np.uint8))
    assert (s.offset, s.scale) == (0.0, 255.0)


def test_uint16_robust_range_and_round_trip():
    rng = np.random.default_rng(1)
    a = rng.integers(100, 4000, (64, 64)).astype(np.uint16)
    a[0, 0] = 65535  # a hot pixel must not set the scale
    s = intensity_scaling(a)
    scaled = s.forward(a)
    assert np.percentile(scaled, 50) > 0.2 and np.percentile(scaled, 99) <= 1.0
    np.testing.assert_allclose(s.inverse(scaled), a.astype(np.float32), rtol=1e-5, atol=1e-2)


def test_constant_image_does_not_divide_by_zero():
    s = intensity_scaling(np.full((8, 8), 7.0))
    assert np.all(np.isfinite(s.forward(np.full((8, 8), 7.0))))
