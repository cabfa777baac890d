"""The optimised execution paths give the reference fp32 result within a stated tolerance."""

import numpy as np
import torch

from napari_fcnn_deblur.api import run_planes

# bf16 keeps 8 bits of mantissa: per-pixel differences up to ~1e-2 on the [0, 1] scale, mean far below
BF16_MAX_ABS = 0.03
BF16_MEAN_ABS = 3e-3


def test_channels_last_equals_contiguous(camera_case, known_cascade):
    blurry, k, _ = camera_case
    a = run_planes(blurry[None], k, known_cascade, 3, torch.device("cpu"), channels_last=True)
    b = run_planes(blurry[None], k, known_cascade, 3, torch.device("cpu"), channels_last=False)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_bf16_autocast_close_to_fp32(camera_case):
    from napari_fcnn_deblur.model_io import get_model

    blurry, k, _ = camera_case
    cascade = get_model(None, 0.01)  # the shipped network: real activations, not a hand-set one
    ref = run_planes(blurry[None], k, cascade, 3, torch.device("cpu"))
    bf = run_planes(blurry[None], k, cascade, 3, torch.device("cpu"), autocast_dtype=torch.bfloat16)
    diff = np.abs(bf - ref)
    assert diff.max() < BF16_MAX_ABS and diff.mean() < BF16_MEAN_ABS, (diff.max(), diff.mean())
