"""Tiled engine (networks in tiles, global FFT deconvolutions) against the untiled one."""

import numpy as np
import pytest
import torch

from conftest import line_kernel, psnr
from napari_fcnn_deblur import deblur
from napari_fcnn_deblur.core.cascade import Cascade
from napari_fcnn_deblur.data.psf import gaussian_psf
from napari_fcnn_deblur.data.samples import blur_valid
from napari_fcnn_deblur.engine import tiles as tiling
from napari_fcnn_deblur.engine.run import DeblurRun


@pytest.fixture(scope="module")
def big_case():
    """(blurry 300×340, kernel, sharp) from skimage's astronaut, 1 % noise."""
    from skimage import data

    sharp = data.astronaut()[..., 1][:320, :360].astype(np.float32) / 255
    k = line_kernel(11, 30.0)
    blurry, gt = blur_valid(sharp, k, 0.01, seed=1)
    return blurry[:300, :340].astype(np.float32), k, gt[:300, :340]


@pytest.fixture(scope="module")
def random_cascade():
    """Random FCNN weights; γ ends small (0.05): the late stages lean on the networks."""
    torch.manual_seed(0)
    return Cascade(3, gammas=[250, 5, 3, 0.05], width=8).eval()


def _untiled(image, kernel, cascade, iterations=3):
    return deblur(image, kernel, model=cascade, device="cpu", iterations=iterations, tile_size=4096)


@pytest.mark.parametrize("which", ["known", "random"])
def test_tiled_matches_untiled(big_case, known_cascade, random_cascade, which, monkeypatch):
    blurry, k, gt = big_case
    cascade = known_cascade if which == "known" else random_cascade
    whole = _untiled(blurry, k, cascade)
    calls = []
    original = tiling.TiledNetworks.__call__
    monkeypatch.setattr(tiling.TiledNetworks, "__call__",
                        lambda self, *a: calls.append(self.tile_size) or original(self, *a))
    tiled = deblur(blurry, k, model=cascade, device="cpu", tile_size=100)  # 100 - 2·7 = 86 px cores, uneven edges
    assert calls == [100, 100, 100]  # every stage's network ran in tiles
    assert tiled.shape == blurry.shape and tiled.dtype == np.float32
    err = np.abs(tiled - whole).max()
    assert err < 1e-4, err  # float32 round-off only (the requirement is 1e-3)
    if which == "known":
        assert psnr(tiled, gt) > psnr(blurry, gt) + 2


def test_tiled_matches_untiled_gaussian_square_and_stack(known_cascade):
    from skimage import data

    sharp = data.camera()[100:330, 120:350].astype(np.float32) / 255
    k = gaussian_psf(1.5)
    blurry, _ = blur_valid(sharp, k, 0.01, seed=2)  # 214×214: square padded grid
    stack = (np.stack([blurry, blurry[::-1]]).clip(0, 1) * 4000 + 50).astype(np.uint16)
    whole = _untiled(stack, k, known_cascade, iterations=2)
    tiled = deblur(stack, k, model=known_cascade, iterations=2, tile_size=64)
    assert tiled.dtype == np.float32 and tiled.shape == stack.shape
    np.testing.assert_allclose(tiled, whole, atol=1e-4 * 4000)  # uint16 units: 1e-4 of the range
    assert np.abs(tiled - whole).max() / 4000 < 1e-4


def test_initial_deconvolution_only(big_case, random_cascade):
    blurry, k, _ = big_case
    whole = _untiled(blurry, k, random_cascade, iterations=0)
    tiled = deblur(blurry, k, model=random_cascade, iterations=0, tile_size=64)
    assert np.abs(tiled - whole).max() < 1e-5


def test_small_images_unchanged(camera_case, known_cascade):
    """Images smaller than a tile take the whole-plane path: bit-identical to the prepared run's planes."""
    blurry, k, _ = camera_case
    run = DeblurRun.prepare(blurry, k, 0.01, 3, "cpu", known_cascade)
    expected = run.scaling.inverse(run.run_planes(run.scaling.forward(blurry[None])))[0]
    np.testing.assert_array_equal(deblur(blurry, k, model=known_cascade, device="cpu"), expected)


def test_auto_tile_size(monkeypatch):
    monkeypatch.setattr(tiling, "available_memory", lambda dev: 8 << 30)
    assert tiling.auto_tile_size("cpu") == tiling.MAX_TILE_SIZE["cpu"]
    monkeypatch.setattr(tiling, "available_memory", lambda dev: 200 << 20)  # 100 MiB for tiles → ~295 px
    side = tiling.auto_tile_size("cpu")
    assert tiling.MIN_TILE_SIZE <= side <= 300 and side % 16 == 0
    assert side * side * tiling.BYTES_PER_PIXEL <= tiling.MEMORY_FRACTION * (200 << 20)
    # the plane's global FFT arrays come out of the same budget
    assert tiling.auto_tile_size("cpu", plane_pixels=1_000_000) < side
    assert tiling.auto_tile_size("cpu", plane_pixels=4_000_000) == tiling.MIN_TILE_SIZE
    monkeypatch.undo()
    assert tiling.available_memory("cpu") > 0


def test_needs_tiling_and_bad_tile_size(camera_case, known_cascade):
    assert not tiling.needs_tiling((100, 100), (9, 9), 128)
    assert tiling.needs_tiling((120, 120), (9, 9), 128)  # padded to 138 × 138
    blurry, k, _ = camera_case
    for bad in (5, 2.5, "big", True):
        with pytest.raises(ValueError, match="tile_size"):
            deblur(blurry, k, model=known_cascade, tile_size=bad)


def test_boundary_refills_of_the_model_run_in_the_engine_tiled_or_not(big_case):
    """A cascade whose metadata asks for boundary refills gets them through deblur (whole or tiled planes)."""
    from conftest import soft_threshold_cascade
    from napari_fcnn_deblur.core.cascade import REFILLS_KEY

    blurry, k, gt = big_case
    plain = soft_threshold_cascade()
    refilled = soft_threshold_cascade()
    refilled.metadata[REFILLS_KEY] = "2"
    base = _untiled(blurry, k, plain)
    whole = _untiled(blurry, k, refilled)
    tiled = deblur(blurry, k, model=refilled, device="cpu", tile_size=100)
    assert np.abs(tiled - whole).max() < 1e-4
    assert psnr(whole, gt) > psnr(base, gt)


@pytest.mark.parametrize("tile", [30, 41, 4096])
def test_volume_networks_in_z_whole_tiles_match_the_whole_grid(tile, monkeypatch):
    """Volumes: the lateral network on slabs of XY planes and the axial one on YZ slices of the cores, tile by
    tile with the halo, give the whole-grid result; no network call sees more than tile² pixels (or one plane)."""
    from napari_fcnn_deblur.core import denoiser
    from napari_fcnn_deblur.core.conditioned import NoiseMapGrid, network_condition

    torch.manual_seed(0)
    pair = denoiser.AxialPair(4, 2).eval()  # random weights: every input pixel matters
    x, m = torch.rand(2, 9, 45, 52), 0.05 * torch.rand(2, 9, 45, 52)
    calls = []
    original = denoiser.apply_network
    monkeypatch.setattr(denoiser, "apply_network", lambda net, t, *a: calls.append(tuple(t.shape)) or original(net, t, *a))
    with torch.no_grad():
        whole = NoiseMapGrid(m, channels_last=False)(pair, x, 3)
        calls.clear()
        tiled = tiling.TiledNetworks(tile, torch.device("cpu"), False, None, (m,), network_condition)(pair, x, 3)
    for a, b in zip(tiled, whole, strict=True):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)
    limit = tiling.TiledNetworks(tile, torch.device("cpu")).call_pixels
    assert tiling.MIN_CALL_PIXELS <= limit <= max(tile * tile, tiling.MIN_CALL_PIXELS)
    assert all(n * h * w <= 2 * max(limit, h * w) for n, _, h, w in calls)  # x and y run in one call
    if tile < 45:
        assert max(h for _, _, h, _ in calls) <= tile and len(calls) > 4


def test_2d_tiles_are_unchanged_by_the_volume_path():
    """Planes are volumes of one z plane without a z gradient: the plane path is the one it always was."""
    from napari_fcnn_deblur.core.conditioned import network_condition
    from napari_fcnn_deblur.core.denoiser import GradientDenoiser, denoise_gradients
    from napari_fcnn_deblur.core.spectral import image_gradients

    torch.manual_seed(1)
    net = GradientDenoiser(4, 2).eval()
    x, m = torch.rand(2, 50, 61), 0.05 * torch.rand(2, 50, 61)
    with torch.no_grad():
        whole = denoise_gradients(net, image_gradients(x), False, conditions=[network_condition(m)])
        tiled = tiling.TiledNetworks(32, torch.device("cpu"), False, None, (m,), network_condition)(net, x, 2)
    assert [tuple(t.shape) for t in tiled] == [(2, 50, 61)] * 2
    for a, b in zip(tiled, whole, strict=True):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize(("region", "tile"), [
    ((slice(2, 7), slice(11, 34), slice(12, 40)), 4096),  # halos inside the grid: sub-grids
    ((slice(2, 7), slice(11, 34), slice(12, 40)), 21),    # and tiled within them
    ((slice(0, 9), slice(3, 42), slice(20, 30)), 4096),   # halos reaching the frame: whole axes
])
def test_volume_networks_on_a_region_match_the_masked_whole_grid(region, tile, monkeypatch):
    """With a region the networks run on it plus the halo only (fewer voxels), and give the whole-grid
    result inside it and zeros outside: what the stage loop's masking gives."""
    from napari_fcnn_deblur.core import denoiser
    from napari_fcnn_deblur.core.conditioned import NoiseMapGrid, network_condition
    from napari_fcnn_deblur.core.spectral import zero_outside

    torch.manual_seed(2)
    pair = denoiser.AxialPair(4, 2).eval()
    x, m = torch.rand(2, 9, 45, 52), 0.05 * torch.rand(2, 9, 45, 52)
    seen = []
    original = denoiser.apply_network
    monkeypatch.setattr(denoiser, "apply_network", lambda net, t, *a: seen.append(t[:, :1].numel()) or original(net, t, *a))
    with torch.no_grad():
        whole = [zero_outside(z, region) for z in NoiseMapGrid(m, channels_last=False)(pair, x, 3)]
        full_work = sum(seen)
        seen.clear()
        tiled = tiling.TiledNetworks(tile, torch.device("cpu"), False, None, (m,), network_condition, region)(pair, x, 3)
    for a, b in zip(tiled, whole, strict=True):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)
        assert a[0, 0].abs().sum() == 0 or region[0].start == 0  # z plane 0 outside the first region
    if tile > 100:
        assert sum(seen) < full_work  # fewer pixels through the networks


def test_plane_networks_on_a_region_match_the_masked_whole_grid():
    from napari_fcnn_deblur.core.conditioned import network_condition
    from napari_fcnn_deblur.core.denoiser import GradientDenoiser, denoise_gradients
    from napari_fcnn_deblur.core.spectral import image_gradients, zero_outside

    torch.manual_seed(3)
    net = GradientDenoiser(4, 2).eval()
    x, m = torch.rand(2, 50, 61), 0.05 * torch.rand(2, 50, 61)
    region = (slice(12, 38), slice(10, 50))
    with torch.no_grad():
        whole = denoise_gradients(net, image_gradients(x), False, conditions=[network_condition(m)])
        whole = [zero_outside(z, region) for z in whole]
        tiled = tiling.TiledNetworks(32, torch.device("cpu"), False, None, (m,), network_condition, region)(net, x, 2)
    for a, b in zip(tiled, whole, strict=True):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="one slice per grid axis"):
        tiling.TiledNetworks(32, torch.device("cpu"), region=(slice(0, 5),))(net, x, 2)
