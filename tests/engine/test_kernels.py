import numpy as np
import pytest

from napari_fcnn_deblur.engine.kernels import prepare_kernel


def test_normalises_and_keeps_input():
    k = np.ones((5, 5)) * 3.0
    before = k.copy()
    out = prepare_kernel(k)
    assert out.dtype == np.float32 and out.shape == (5, 5)
    assert np.isclose(out.sum(), 1.0)
    np.testing.assert_array_equal(k, before)


def test_even_kernel_padded_to_odd_keeping_centre():
    k = np.zeros((4, 6))
    k[2, 3] = 1.0  # the centre pixel (h // 2, w // 2) of an even kernel
    out = prepare_kernel(k)
    assert out.shape == (5, 7)
    assert out[2, 3] == 1.0  # still the centre of the odd kernel


def test_integer_kernel_accepted():
    out = prepare_kernel(np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], dtype=np.uint8))
    assert np.isclose(out.sum(), 1.0) and out[1, 1] == pytest.approx(0.5)


def test_tiny_negative_noise_clipped():
    k = np.ones((3, 3))
    k[0, 0] = -0.001
    assert prepare_kernel(k).min() == 0


@pytest.mark.parametrize(
    "kernel, shape, match",
    [
        (np.zeros((5, 5)), None, "all zero"),
        (np.full((3, 3), np.nan), None, "NaN"),
        (np.array([[1.0, np.inf], [0, 1]]), None, "NaN or infinite"),
        (np.array([[1.0, -1.0, 0.5]]), None, "negative"),
        (-np.ones((3, 3)), None, "negative"),
        (np.ones((3, 3, 3)), None, "2D"),
        (np.ones(5), None, "2D"),
        (np.ones((0, 3)), None, "empty|2D"),
        (np.ones((31, 31)), (20, 40), "larger than the image"),
        (np.ones((3, 3), dtype=bool), None, "numeric"),
        (np.ones((3, 3), dtype=complex), None, "real"),
    ],
)
def test_rejects_non_kernels(kernel, shape, match):
    with pytest.raises(ValueError, match=match):
        prepare_kernel(kernel, shape)
