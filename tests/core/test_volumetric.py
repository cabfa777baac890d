"""The volumetric cascade: 2D networks on the planes and slices of a volume, through the one stage loop."""

from __future__ import annotations

import numpy as np
import torch

from napari_fcnn_deblur.core.denoiser import (
    CPU_BATCH_PIXELS,
    AxialPair,
    GradientDenoiser,
    apply_network,
    denoise_gradients,
    direction_network,
    direction_networks,
)
from napari_fcnn_deblur.core.volumetric import VolumeCascade
from napari_fcnn_deblur.data.phantoms import blur_volume, phantom_3d
from napari_fcnn_deblur.data.psf3d import widefield_psf_3d


def _net(seed: int, width: int = 4, cin: int = 1) -> GradientDenoiser:
    torch.manual_seed(seed)
    return GradientDenoiser(width, cin).eval()


def test_volume_gradients_run_on_xy_planes_and_yz_slices():
    pair = AxialPair(4, 1).eval()
    pair.lateral.load_state_dict(_net(1).state_dict())
    pair.axial.load_state_dict(_net(2).state_dict())
    g = [torch.randn(2, 5, 9, 11) for _ in range(3)]
    with torch.no_grad():
        zx, zy, zz = denoise_gradients(pair, g, channels_last=False)
        # x: every XY plane as a 2D image; y: the same planes transposed; z: YZ slices, z along their last axis
        ex = torch.stack([pair.lateral(g[0][n, d][None, None])[0, 0] for n in range(2) for d in range(5)]).reshape(2, 5, 9, 11)
        ey = torch.stack([pair.lateral(g[1][n, d].T[None, None])[0, 0].T for n in range(2) for d in range(5)]).reshape(2, 5, 9, 11)
        ez = torch.stack([pair.axial(g[2][n, :, :, w].T[None, None])[0, 0].T
                          for n in range(2) for w in range(11)]).reshape(2, 11, 5, 9).permute(0, 2, 3, 1)
    torch.testing.assert_close(zx, ex, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(zy, ey, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(zz, ez, rtol=1e-5, atol=1e-6)
    assert direction_networks(pair, 3) == [pair.lateral, pair.lateral, pair.axial]
    assert direction_networks(pair.lateral, 2) == [pair.lateral, pair.lateral]


def test_a_direction_alone_runs_through_its_own_network_and_view():
    """``directions=`` runs a gradient as the direction it is (the z gradients of a block alone), with its
    condition map turned the same way: as in the full call."""
    pair = AxialPair(4, 2).eval()
    pair.lateral.load_state_dict(_net(1, cin=2).state_dict())
    pair.axial.load_state_dict(_net(2, cin=2).state_dict())
    g, m = [torch.randn(1, 5, 9, 11) for _ in range(3)], torch.rand(1, 5, 9, 11)
    with torch.no_grad():
        full = denoise_gradients(pair, g, channels_last=False, conditions=[m])
        (zz,) = denoise_gradients(pair, [g[2]], channels_last=False, conditions=[m], directions=(2,))
        (zy,) = denoise_gradients(pair, [g[1]], channels_last=False, conditions=[m], directions=(1,))
    torch.testing.assert_close(zz, full[2])
    torch.testing.assert_close(zy, full[1])
    assert direction_network(pair, 2) is pair.axial and direction_network(pair.lateral, 2) is pair.lateral


def test_large_plane_batches_run_in_chunks_with_the_same_result(monkeypatch):
    from napari_fcnn_deblur.core import denoiser

    net = _net(3)
    t = torch.randn(7, 1, 20, 24)
    with torch.no_grad():
        whole = apply_network(net, t, channels_last=False)
        monkeypatch.setattr(denoiser, "CPU_BATCH_PIXELS", 2 * 20 * 24)
        chunked = apply_network(net, t, channels_last=False)
    assert CPU_BATCH_PIXELS >= 4_000_000  # the engine's 2D plane batches (≤ 2 M px × 2 directions) run whole
    torch.testing.assert_close(chunked, whole)


def _phantom_case():
    psf = widefield_psf_3d((7, 11, 11), (0.3, 0.1, 0.1), 1.2, 0.52, 1.333)
    vol = phantom_3d((22, 40, 40), "filaments", density=0.6, seed=3)
    data, sharp = blur_volume(vol, psf, photons=300.0, read_noise=1.0, offset=0.0, rng=np.random.default_rng(0))
    y = data / 300.0
    sd = np.sqrt(np.clip(y, 0, None) / 300.0 + (1.0 / 300.0) ** 2)
    return (torch.from_numpy(y)[None].float(), torch.from_numpy(psf).float(), torch.from_numpy(sd)[None].float(),
            sharp)


def _psnr(x, gt):
    return 10 * np.log10(float(gt.max()) ** 2 / np.mean((x - gt) ** 2))


def test_volume_cascade_from_a_planar_one_deblurs_a_phantom():
    """A volume cascade warm-started from a 2D noise-map cascade whose networks soft-threshold the gradient
    (narrow, hand-set) gains a clear PSNR margin over the blurry volume, in 3D through the one stage loop."""
    from conftest import soft_volume_cascade

    vc = soft_volume_cascade()
    y, k, sd, sharp = _phantom_case()
    with torch.no_grad():
        stages = [st.image[0].numpy() for st in vc.run(y, k, sd)]
    assert stages[0].shape == sharp.shape
    before = _psnr(y[0].numpy(), sharp)
    after = _psnr(stages[-1], sharp)
    assert after > before + 2.0, (before, [round(_psnr(s, sharp), 2) for s in stages])


def test_volume_cascade_round_trips_through_a_file(tmp_path):
    from napari_fcnn_deblur.io.models import load_cascade, read_metadata, save_cascade

    vc = VolumeCascade(2, width=3)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in vc.parameters():
            p.normal_()
    path = save_cascade(vc, tmp_path / "v.safetensors")
    assert read_metadata(path)["kind"] == "volume"
    back = load_cascade(path)
    assert isinstance(back, VolumeCascade) and back.n_stages == 2 and back.width == 3
    for a, b in zip(vc.state_dict().values(), back.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
