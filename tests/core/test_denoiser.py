import pytest
import torch

from napari_fcnn_deblur.core.denoiser import (
    ARCHITECTURE,
    CPU_TILE_CORE,
    RECEPTIVE_RADIUS,
    GradientDenoiser,
    apply_network,
    cpu_tile_core,
    denoise_gradients,
    tile_windows,
)
from napari_fcnn_deblur.core.spectral import image_gradients


def _net(seed=0, width=64):
    torch.manual_seed(seed)
    return GradientDenoiser(width).eval()


def test_architecture_matches_table_1():
    net = _net()
    convs = net.convs
    assert [(c.kernel_size[0], c.out_channels) for c in convs] == list(ARCHITECTURE)
    assert sum(p.numel() for p in net.parameters()) == 149_953  # as the authors' release
    assert RECEPTIVE_RADIUS == 2 + 5 * 1
    assert len([m for m in net.net if isinstance(m, torch.nn.ReLU)]) == 5
    assert net.width == 64


def test_narrow_network_keeps_the_layout():
    net = _net(width=4)
    assert net.width == 4 and [c.out_channels for c in net.convs] == [4, 4, 4, 4, 4, 1]
    with torch.no_grad():
        assert net(torch.rand(2, 1, 33, 47)).shape == (2, 1, 33, 47)


def test_weight_sharing_transposed_image_gives_transposed_result():
    """Denoising the transposed image's gradients gives the transposed denoised gradients."""
    net = _net(1, width=8)
    x = torch.rand(1, 30, 41)
    with torch.no_grad():
        zx, zy = denoise_gradients(net, image_gradients(x))
        zx_t, zy_t = denoise_gradients(net, image_gradients(x.transpose(-1, -2)))
    assert torch.allclose(zx_t, zy.transpose(-1, -2), atol=1e-6)
    assert torch.allclose(zy_t, zx.transpose(-1, -2), atol=1e-6)


def test_square_batching_equals_separate_runs():
    net = _net(2, width=8)
    gx, gy = torch.rand(2, 24, 24) - 0.5, torch.rand(2, 24, 24) - 0.5
    with torch.no_grad():
        zx, zy = denoise_gradients(net, [gx, gy])
        sx = net(gx[:, None])[:, 0]
        sy = net(gy.transpose(-1, -2)[:, None])[:, 0].transpose(-1, -2)
    assert torch.allclose(zx, sx, atol=1e-5) and torch.allclose(zy, sy, atol=1e-5)


def test_channels_last_matches_contiguous():
    net = _net(3, width=8)
    g = [torch.rand(1, 40, 52) - 0.5, torch.rand(1, 40, 52) - 0.5]
    with torch.no_grad():
        a = denoise_gradients(net, g, channels_last=True)
        b = denoise_gradients(net, g, channels_last=False)
    assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1], b[1], atol=1e-5)


@pytest.mark.parametrize("shape,core,halo", [((50, 37), 16, 7), ((10, 300), 192, 7), ((5,), 2, 1)])
def test_tile_windows_cover_the_grid_once(shape, core, halo):
    count = torch.zeros(shape)
    for window, keep in tile_windows(shape, core, halo):
        for w, k, n in zip(window, keep, shape):
            assert 0 <= w.start and w.stop <= n and k.stop - k.start <= core
            assert w.start + k.start - w.start >= 0
        dst = tuple(slice(w.start + k.start, w.start + k.stop) for w, k in zip(window, keep))
        count[dst] += 1
    assert torch.all(count == 1)


def test_cpu_cache_tiles_equal_the_whole_plane(monkeypatch):
    from napari_fcnn_deblur.core import denoiser

    net = _net(4, width=4)
    core = cpu_tile_core(net.width)
    assert core == round(CPU_TILE_CORE * 4) and cpu_tile_core(64) == cpu_tile_core(128) == CPU_TILE_CORE
    t = torch.rand(2, 1, core + 60, core // 2 + 30) - 0.5
    windows = []
    original = denoiser.tile_windows
    monkeypatch.setattr(denoiser, "tile_windows", lambda *a: windows.append(a[1]) or original(*a))
    with torch.no_grad():
        whole = net(t)
    with torch.inference_mode():
        tiled = apply_network(net, t, channels_last=False)
    assert windows == [core, core]  # tiled, plane by plane, with the width's core
    assert torch.allclose(tiled, whole, atol=1e-5)


def test_extra_input_channels_keep_the_plain_keys_and_follow_the_gradient_view():
    from napari_fcnn_deblur.core.denoiser import network_inputs

    plain, cond = GradientDenoiser(8), GradientDenoiser(8, in_channels=2)
    assert list(plain.state_dict()) == list(cond.state_dict())
    assert cond.convs[0].weight.shape[1] == 2 and plain.in_channels == 1
    gx, gy, m = torch.rand(2, 6, 9), torch.rand(2, 6, 9), torch.rand(2, 6, 9)
    ix, iy = network_inputs([gx, gy], [m])
    assert torch.equal(ix, torch.stack([gx, m], 1))
    assert torch.equal(iy, torch.stack([gy.transpose(-1, -2), m.transpose(-1, -2)], 1))  # the map turns with g_y
    torch.manual_seed(1)
    net = GradientDenoiser(4, in_channels=2).eval()
    with torch.no_grad():
        zx, zy = denoise_gradients(net, [gx, gy], conditions=[m])
        torch.testing.assert_close(zy, net(iy)[:, 0].transpose(-1, -2))
        torch.testing.assert_close(zx, net(ix)[:, 0])


def test_multiply_adds_per_pixel_follow_the_layers():
    # Table 1 at width 64: 5·5·1·64 + 4·(3·3·64·64) + 3·3·64·1
    assert GradientDenoiser(64, 1).macs_per_pixel == 1600 + 4 * 36864 + 576 == 149_632
    # a noise-map network of width 16 (two input channels)
    assert GradientDenoiser(16, 2).macs_per_pixel == 25 * 2 * 16 + 4 * 9 * 16 * 16 + 9 * 16 == 10_160
