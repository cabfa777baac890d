"""The optimised execution paths give the reference fp32 result within a stated tolerance."""

import numpy as np
import torch

from napari_fcnn_deblur.core.cascade import WholeGrid
from napari_fcnn_deblur.engine.run import DeblurRun

# bf16 keeps 8 bits of mantissa: per-pixel differences up to ~1e-2 on the [0, 1] scale, mean far below
BF16_MAX_ABS = 0.03
BF16_MEAN_ABS = 3e-3


def test_channels_last_equals_contiguous(camera_case, known_cascade):
    blurry, k, _ = camera_case
    y, kt = torch.from_numpy(blurry)[None], torch.from_numpy(k)
    with torch.inference_mode():
        a = list(known_cascade.run(y, kt, denoise=WholeGrid(channels_last=True)))[-1].image
        b = list(known_cascade.run(y, kt, denoise=WholeGrid(channels_last=False)))[-1].image
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_bf16_autocast_close_to_fp32(camera_case):
    from napari_fcnn_deblur.io.models import get_model

    blurry, k, _ = camera_case
    blurry = np.ascontiguousarray(blurry[:96, :96])  # bf16 is emulated (slow) on most CPUs: a small plane
    cascade = get_model(None, 0.01)  # the shipped network: real activations, not a hand-set one
    ref = DeblurRun.prepare(blurry, k, model=cascade, device="cpu", precision="fp32").run_planes(blurry[None])
    bf = DeblurRun.prepare(blurry, k, model=cascade, device="cpu", precision="bf16").run_planes(blurry[None])
    diff = np.abs(bf - ref)
    assert diff.max() < BF16_MAX_ABS and diff.mean() < BF16_MEAN_ABS, (diff.max(), diff.mean())


def test_cache_tiles_equal_whole_network_full_width():
    """The CPU's cache-sized tiles (inference) give the whole-image network's output (autograd path)."""
    from napari_fcnn_deblur.core.denoiser import CPU_TILE_CORE, GradientDenoiser, apply_network

    torch.manual_seed(0)
    net = GradientDenoiser().eval()
    # two planes, sides not multiples of the tile core, larger than one tile in both directions
    t = torch.randn(2, 1, CPU_TILE_CORE * 2 + 37, CPU_TILE_CORE + 61) * 0.05
    with torch.no_grad():
        tiled = apply_network(net, t)
    with torch.enable_grad():  # autograd keeps the whole image in one call
        whole = apply_network(net, t).detach()
    assert tiled.shape == whole.shape
    torch.testing.assert_close(tiled, whole, atol=1e-6, rtol=0)
    with torch.no_grad():  # and the layout of the weights follows the input's memory format
        contiguous = apply_network(net, t, channels_last=False)
    torch.testing.assert_close(contiguous, whole, atol=1e-5, rtol=0)


def test_precision_option_through_the_public_paths(camera_case, tmp_path):
    """precision="bf16" reaches the networks from deblur, deblur_stages, the tiled engine, dask and the CLI."""
    import dask.array as da
    import tifffile

    from napari_fcnn_deblur import deblur, deblur_stages
    from napari_fcnn_deblur.cli import main

    blurry, k, _ = camera_case
    blurry = np.ascontiguousarray(blurry[:56, :64])  # bf16 is emulated (slow) on most CPUs: a small plane
    ref = deblur(blurry, k, 0.01, device="cpu")
    bf = deblur(blurry, k, 0.01, device="cpu", precision="bf16")
    diff = np.abs(bf - ref)
    assert 0 < diff.max() < BF16_MAX_ABS and diff.mean() < BF16_MEAN_ABS  # it really ran in bf16
    last = list(deblur_stages(blurry, k, 0.01, device="cpu", precision="bf16"))[-1].image
    np.testing.assert_allclose(last, bf, atol=1e-5)
    tiled = deblur(blurry, k, 0.01, device="cpu", precision="bf16", tile_size=40)
    tiled32 = deblur(blurry, k, 0.01, device="cpu", tile_size=40)
    assert 0 < np.abs(tiled - tiled32).max() < BF16_MAX_ABS and np.abs(tiled - tiled32).mean() < BF16_MEAN_ABS
    lazy = deblur(da.from_array(blurry), k, 0.01, device="cpu", precision="bf16").compute(scheduler="sync")
    np.testing.assert_allclose(lazy, bf, atol=1e-5)
    img, kern, out = tmp_path / "in.tif", tmp_path / "k.npy", tmp_path / "out.tif"
    tifffile.imwrite(img, blurry.astype(np.float32))
    np.save(kern, k)
    assert main(["deblur", str(img), "-k", str(kern), "-o", str(out), "--precision", "bf16", "--device", "cpu", "-q"]) == 0
    np.testing.assert_allclose(tifffile.imread(out), bf, atol=1e-5)


def test_precision_is_validated():
    import pytest

    from napari_fcnn_deblur import deblur

    with pytest.raises(ValueError, match="precision must be .auto. or one of"):
        deblur(np.zeros((32, 32), np.float32), np.ones((3, 3)), precision="fp16")


def test_auto_precision_follows_the_hardware_and_the_environment(monkeypatch):
    import pytest

    from napari_fcnn_deblur.engine import devices
    from napari_fcnn_deblur.engine.devices import PRECISION_ENV, check_precision

    cpu = torch.device("cpu")
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    monkeypatch.setattr(devices, "_cpu_flags", lambda: {"avx512f", "amx_bf16"})
    assert check_precision("auto", cpu) is torch.bfloat16
    monkeypatch.setattr(devices, "_cpu_flags", lambda: {"avx2", "fma"})
    assert check_precision("auto", cpu) is None  # emulated bf16 can be slower than fp32
    assert check_precision("bf16", cpu) is torch.bfloat16  # asked for by name: always honoured
    monkeypatch.setenv(PRECISION_ENV, "bf16")
    assert check_precision("auto", cpu) is torch.bfloat16
    assert check_precision("fp32", cpu) is None
    monkeypatch.setenv(PRECISION_ENV, "half")
    with pytest.raises(ValueError, match=PRECISION_ENV):
        check_precision("auto", cpu)
