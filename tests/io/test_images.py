"""Image files: the output-type rule and safe writing."""

from __future__ import annotations

import numpy as np
import pytest

from napari_fcnn_deblur.io.images import to_output_dtype


def test_output_type_rule():
    r = np.array([-0.2, 0.0, 0.5, 1.0, 1.3], np.float32)
    f = np.zeros(1, np.float32)
    np.testing.assert_array_equal(to_output_dtype(r, "float32", f), r)
    np.testing.assert_array_equal(to_output_dtype(r, "uint8", f, (0.0, 1.0)), [0, 0, 128, 255, 255])
    np.testing.assert_array_equal(to_output_dtype(r, "uint16", f, (0.0, 1.0)), [0, 0, 32768, 65535, 65535])
    u8 = np.zeros(1, np.uint8)
    np.testing.assert_array_equal(to_output_dtype(np.array([0, 1, 255.4]), "uint16", u8, (0, 255)), [0, 257, 65535])
    np.testing.assert_array_equal(to_output_dtype(np.array([-3.0, 7.6, 300]), "input", u8), [0, 8, 255])  # units
    u16 = np.zeros(1, np.uint16)
    np.testing.assert_array_equal(to_output_dtype(np.array([99.0, 1100.0, 4200]), "uint8", u16, (100, 4100)),
                                  [0, 64, 255])
    np.testing.assert_array_equal(to_output_dtype(np.array([99.0, 1100.0]), "uint16", u16), [99, 1100])  # own type
    with pytest.raises(ValueError, match="needs the intensity range"):
        to_output_dtype(r, "uint8", f)
