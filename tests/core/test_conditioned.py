"""The noise-map-conditioned cascade (core/conditioned.py): conditioned nets, γ(σ), the shared stage loop."""

from __future__ import annotations

import pytest
import torch

from napari_fcnn_deblur.core.cascade import Cascade
from napari_fcnn_deblur.core.conditioned import (
    GAMMA_FLOOR_KEY,
    NOISE_MAP_SCALE,
    SHIPPED_LEVELS,
    SIGMA_GAMMA_FLOOR,
    NoiseMapCascade,
    effective_sigma,
)
from napari_fcnn_deblur.core.denoiser import GradientDenoiser, network_input
from napari_fcnn_deblur.io.models import load_cascade, shipped_model_path


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: one thread is faster, and much faster on cores shared with other jobs."""
    torch.set_num_threads(1)  # conftest restores the count


@pytest.fixture(scope="module")
def shipped():
    return {lv: load_cascade(shipped_model_path(lv)) for lv in SHIPPED_LEVELS}


def _cond(net, g, sd):
    return net(network_input(g, [NOISE_MAP_SCALE * sd]))


def test_conditioned_net_from_a_plain_one_is_the_plain_net_whatever_the_map():
    torch.manual_seed(0)
    plain = GradientDenoiser(width=8)
    cond = GradientDenoiser.from_plain(plain)
    assert cond.in_channels == 2 and cond.width == 8
    assert cond.convs[0].weight[:, 1].abs().max() == 0
    g = torch.randn(3, 20, 24) * 0.05
    ref = plain(g[:, None])
    for sd in (torch.zeros_like(g), torch.full_like(g, 0.05), torch.rand_like(g) * 0.2):
        torch.testing.assert_close(_cond(cond, g, sd), ref, rtol=0, atol=1e-6)


def test_output_follows_the_map_after_a_few_steps():
    """Taught to keep gradients at 1 % and remove them at 10 %, the net shrinks more where the map says noisier."""
    torch.manual_seed(0)
    net = GradientDenoiser.from_plain(GradientDenoiser(width=8))
    g = torch.randn(4, 16, 16) * 0.5
    lo, hi = torch.full_like(g, 0.01), torch.full_like(g, 0.1)
    torch.testing.assert_close(_cond(net, g, lo), _cond(net, g, hi))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(40):
        loss = (_cond(net, g, lo)[:, 0] - g).abs().mean() + _cond(net, g, hi).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        a, b = _cond(net, g, lo).abs().mean(), _cond(net, g, hi).abs().mean()
    assert b < 0.5 * a


def test_gamma_of_sigma_reproduces_the_shipped_schedules(shipped):
    casc = NoiseMapCascade.from_plain_cascades(shipped)
    g = casc.gammas_at(torch.tensor(SHIPPED_LEVELS))
    assert g.shape == (4, 3)
    for j, lv in enumerate(SHIPPED_LEVELS):
        torch.testing.assert_close(g[:, j], shipped[lv].gammas, rtol=1e-4, atol=0)
    # below the lowest shipped level γ is held at its schedule (the quadratic would fall there)
    torch.testing.assert_close(casc.gammas_at(SIGMA_GAMMA_FLOOR / 4)[:, 0], g[:, 0])
    torch.testing.assert_close(casc.gammas, shipped[0.03].gammas, rtol=1e-4, atol=0)
    assert set(casc.state_dict()) == {"gamma_coeffs"} | {f"denoisers.{s}.net.{j}.{p}" for s in range(3)
                                                          for j in (0, 2, 4, 6, 8, 10) for p in ("weight", "bias")}


def test_gamma_floor_is_the_models_own_and_survives_saving(shipped, tmp_path):
    from napari_fcnn_deblur.io.models import save_cascade

    casc = NoiseMapCascade.from_plain_cascades(shipped)
    assert casc.gamma_floor == SIGMA_GAMMA_FLOOR  # no key: every file trained before it was a setting
    low, floor = torch.tensor([0.0025, 0.005]), torch.tensor([SIGMA_GAMMA_FLOOR])
    torch.testing.assert_close(casc.gammas_at(low), casc.gammas_at(floor).expand(-1, 2))
    before = casc.gammas_at(torch.tensor([0.02, 0.03, 0.05]))
    casc.set_gamma_floor(0.0025, upper=0.05)
    assert casc.metadata[GAMMA_FLOOR_KEY] == "0.0025" and casc.gamma_floor == 0.0025
    g = casc.gammas_at(low)
    assert bool((g[:, 0] != g[:, 1]).all())  # γ now follows σ below the old floor
    # the refit follows the old curve where it was quadratic, as far as one quadratic over 0.25–5 % can
    # (the old one was flat below 1 %): within a factor 1.5 there
    torch.testing.assert_close(casc.gammas_at(torch.tensor([0.02, 0.03, 0.05])).log(), before.log(), rtol=0, atol=0.4)
    back = load_cascade(save_cascade(casc, tmp_path / "floor.safetensors"))
    assert back.gamma_floor == 0.0025
    torch.testing.assert_close(back.gammas_at(low), g)
    for bad in ("zero", 0.0, 1.5, -0.01):
        casc.metadata[GAMMA_FLOOR_KEY] = bad
        with pytest.raises(ValueError, match="γ floor"):
            casc.gammas_at(0.03)


def test_constant_map_at_3_percent_is_the_shipped_3_percent_cascade(shipped):
    casc = NoiseMapCascade.from_plain_cascades(shipped)
    torch.manual_seed(0)
    y, k = torch.rand(2, 40, 44), torch.rand(7, 7)
    k /= k.sum()
    with torch.no_grad():
        torch.testing.assert_close(casc(y, k, 0.03), shipped[0.03](y, k), rtol=0, atol=1e-5)
        # an (N,) s.d. is a constant map per plane, σ_eff of a map its RMS
        sd = torch.tensor([0.03, 0.03])
        torch.testing.assert_close(casc(y, k, sd), casc(y, k, sd[:, None, None].expand(y.shape)))
    assert effective_sigma(torch.full((1, 4, 4), 0.02)).item() == pytest.approx(0.02)
    with pytest.raises(ValueError, match="noise_map"):
        casc(y, k)


def test_per_image_gammas_in_the_stage_loop_match_separate_runs():
    torch.manual_seed(0)
    casc = Cascade(2, width=4).eval()
    y, k = torch.rand(2, 30, 34), torch.ones(5, 5) / 25
    gam = torch.tensor([[200.0, 50.0], [40.0, 10.0], [5.0, 1.0]])
    with torch.no_grad():
        both = [o.image for o in casc.run(y, k, gammas=gam)]
        for i in range(2):
            one = [o.image for o in casc.run(y[i : i + 1], k, gammas=gam[:, i])]
            for a, b in zip(both, one):
                torch.testing.assert_close(a[i : i + 1], b, rtol=0, atol=1e-6)


def test_map_reaches_the_networks_through_the_stage_loop():
    """Two maps of the same σ_eff (so the same γ) give different images once the nets use the map."""
    torch.manual_seed(0)
    casc = NoiseMapCascade(2, width=4).eval()
    y, k = torch.rand(1, 30, 30), torch.ones(5, 5) / 25
    flat = torch.full((1, 30, 30), 0.02)
    striped = torch.full((1, 30, 30), 0.02 * 2**0.5)
    striped[..., ::2] = 0.0
    with torch.no_grad():
        torch.testing.assert_close(casc.gammas_at(effective_sigma(flat)), casc.gammas_at(effective_sigma(striped)))
        a, b = casc(y, k, flat), casc(y, k, striped)
        stage0 = [next(iter(casc.run(y, k, m))).image for m in (flat, striped)]
    torch.testing.assert_close(stage0[0], stage0[1])
    assert (a - b).abs().max() > 1e-5


@pytest.mark.parametrize("cls_name", ["planar", "volume"])
def test_extended_cascade_keeps_the_first_stages_and_copies_the_last(cls_name):
    from napari_fcnn_deblur.core.volumetric import VolumeCascade

    torch.manual_seed(0)
    cls = NoiseMapCascade if cls_name == "planar" else VolumeCascade
    casc = cls(2, width=4, metadata={"boundary_refills": "1", "note": "x"})
    with torch.no_grad():
        casc.gamma_coeffs.copy_(torch.randn(3, 3))
    casc.eval()
    deep = casc.extended(4)
    assert type(deep) is cls and deep.n_stages == 4 and deep.width == 4 and not deep.training
    assert deep.metadata == casc.metadata and deep.refills == 1
    torch.testing.assert_close(deep.gamma_coeffs[:3], casc.gamma_coeffs, rtol=0, atol=0)
    for row in (3, 4):  # the new deconvolutions start with the last one's γ(σ)
        torch.testing.assert_close(deep.gamma_coeffs[row], casc.gamma_coeffs[2], rtol=0, atol=0)
    for s, src in enumerate([0, 1, 1, 1]):
        for p, q in zip(deep.denoisers[s].parameters(), casc.denoisers[src].parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=0)
    # a copy, not a view: training the new cascade leaves the old one as it was
    with torch.no_grad():
        next(deep.denoisers[0].parameters()).add_(1.0)
    assert not torch.equal(next(deep.denoisers[0].parameters()), next(casc.denoisers[0].parameters()))
    if cls_name == "planar":  # the first stages of a run are the old cascade's, bit for bit
        y, k, sd = torch.rand(1, 24, 26), torch.ones(3, 3) / 9, torch.full((1, 24, 26), 0.03)
        deep = casc.extended(3)
        with torch.no_grad():
            old = [o.image for o in casc.run(y, k, sd)]
            new = [o.image for o in deep.run(y, k, sd)]
        assert len(new) == 4
        for a, b in zip(old, new[:3]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="stages"):
        casc.extended(1)
