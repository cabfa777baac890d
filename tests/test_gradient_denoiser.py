import torch

from napari_fcnn_deblur.fft_deconv import image_gradients
from napari_fcnn_deblur.gradient_denoiser import ARCHITECTURE, RECEPTIVE_RADIUS, GradientDenoiser, denoise_gradients


def _net(seed=0):
    torch.manual_seed(seed)
    return GradientDenoiser().eval()


def test_architecture_matches_table_1():
    net = _net()
    convs = net.convs
    assert [(c.kernel_size[0], c.out_channels) for c in convs] == list(ARCHITECTURE)
    assert sum(p.numel() for p in net.parameters()) == 149_953  # as the authors' release
    assert RECEPTIVE_RADIUS == 2 + 5 * 1
    relus = [m for m in net.net if isinstance(m, torch.nn.ReLU)]
    assert len(relus) == 5


def test_output_keeps_shape():
    net = _net()
    with torch.no_grad():
        assert net(torch.rand(2, 1, 33, 47)).shape == (2, 1, 33, 47)


def test_weight_sharing_transposed_image_gives_transposed_result():
    """Denoising the transposed image's gradients gives the transposed denoised gradients."""
    net = _net(1)
    x = torch.rand(1, 30, 41)
    gx, gy = image_gradients(x)
    gx_t, gy_t = image_gradients(x.transpose(-1, -2))
    with torch.no_grad():
        zx, zy = denoise_gradients(net, gx, gy)
        zx_t, zy_t = denoise_gradients(net, gx_t, gy_t)
    # the transposed image's horizontal gradient is the original's vertical one, transposed
    assert torch.allclose(zx_t, zy.transpose(-1, -2), atol=1e-6)
    assert torch.allclose(zy_t, zx.transpose(-1, -2), atol=1e-6)


def test_square_batching_equals_separate_runs():
    net = _net(2)
    gx, gy = torch.rand(2, 24, 24) - 0.5, torch.rand(2, 24, 24) - 0.5
    with torch.no_grad():
        zx, zy = denoise_gradients(net, gx, gy)
        sx = net(gx[:, None])[:, 0]
        sy = net(gy.transpose(-1, -2)[:, None])[:, 0].transpose(-1, -2)
    assert torch.allclose(zx, sx, atol=1e-5) and torch.allclose(zy, sy, atol=1e-5)


def test_channels_last_matches_contiguous():
    net = _net(3)
    gx, gy = torch.rand(1, 40, 52) - 0.5, torch.rand(1, 40, 52) - 0.5
    with torch.no_grad():
        a = denoise_gradients(net, gx, gy, channels_last=True)
        b = denoise_gradients(net, gx, gy, channels_last=False)
    assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1], b[1], atol=1e-5)
