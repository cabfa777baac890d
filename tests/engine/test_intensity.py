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


def test_forward_and_inverse_are_the_float32_maps_made_in_one_array():
    """(x − offset) / scale and x · scale + offset computed in float32, bit for bit as the plain expressions,
    for any input dtype and layout; the input is never written to."""
    from napari_fcnn_deblur.engine.intensity import IntensityScaling

    sc = IntensityScaling(101.5, 3971.25)
    rng = np.random.default_rng(0)
    inputs = (rng.integers(0, 65535, (3, 17, 19)).astype(np.uint16), rng.normal(500, 300, (5, 7)),
              rng.integers(-5, 10**6, (9,)).astype(np.int64), rng.random((6, 4), dtype=np.float32).T)
    for a in inputs:
        kept = a.copy()
        expected = ((np.asarray(a, np.float32) - np.float32(sc.offset)) / np.float32(sc.scale)).astype(np.float32)
        got = sc.forward(a)
        assert got.dtype == np.float32 and got.shape == a.shape
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(a, kept)
        back = (expected * np.float32(sc.scale) + np.float32(sc.offset)).astype(np.float32)
        np.testing.assert_array_equal(sc.inverse(expected), back)
