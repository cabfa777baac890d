"""Volumetric training: samples on the engine's scale, the stage loss on crops equals the full-grid one,
a tiny run trains every phase, validates, resumes and writes a loadable volume cascade."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from napari_fcnn_deblur.core.conditioned import NOISE_MAP_SCALE, NoiseMapCascade
from napari_fcnn_deblur.core.denoiser import denoise_gradients
from napari_fcnn_deblur.core.spectral import image_gradients
from napari_fcnn_deblur.core.volumetric import VolumeCascade
from napari_fcnn_deblur.io.models import load_cascade, save_cascade
from napari_fcnn_deblur.training import volumetric as tv
from napari_fcnn_deblur.training.noisemap import Interrupted, StopControl
from napari_fcnn_deblur.training.stagewise import stage_inputs


@pytest.fixture
def tiny_cfg():
    return tv.VolConfig.preset("tiny")


def test_samples_are_deterministic_and_on_the_engine_scale(tiny_cfg):
    src = tv.VolumeSource(tiny_cfg, "VOL1")
    y, sd, k, x = src.raw(3, 2)
    y2, *_ = src.raw(3, 2)
    torch.testing.assert_close(y, y2)
    assert y.shape == x.shape == sd.shape == (2, *tiny_cfg.patch) and k.shape == (2, *tv.PSF_BOX)
    assert torch.allclose(k.sum(dim=(1, 2, 3)), torch.ones(2))
    for i in range(2):
        lo, hi = np.percentile(y[i].numpy(), [0.05, 99.95])
        assert abs(lo) < 1e-4 and abs(hi - 1) < 1e-4  # the engine's percentile rule maps y to [0, 1]
        assert float(sd[i].min()) > 0
        # photon noise: the s.d. map grows with the (blurred) brightness



def test_camera_volume_noise_map_is_the_true_noise_function_as_a_run_evaluates_it():
    rng = np.random.default_rng(0)
    sharp = np.zeros((9, 20, 20), np.float32)
    sharp[:, :, 10:] = 1.0  # half dark, half bright
    psf = np.zeros((3, 3, 3), np.float32)
    psf[1, 1, 1] = 1.0
    y, sd, x = tv.camera_volume(rng, sharp, psf, photons=100.0, read=2.0)
    cols = np.arange(y.shape[-1])
    bright, dark = (x > x.mean()) & (cols >= 12), (x < x.mean()) & (cols <= 5)  # away from the step (5×5 box)
    # s.d. in electrons: sqrt(100 + 4) where bright, 2 where dark, over the same scale as the data
    ratio = sd[bright].mean() / sd[dark].mean()
    assert abs(ratio / (np.sqrt(104) / 2) - 1) < 0.05
    assert abs(float((y - x)[bright].std()) / float(sd[bright].mean()) - 1) < 0.15  # the map matches the noise
    assert abs(float((y - x)[dark].std()) / float(sd[dark].mean()) - 1) < 0.15
    # ... and it is a function of the noisy data (smoothed as a run smooths it), never of the noiseless blur
    assert np.std(sd[bright]) > 0  # a clean map would be one constant per half
    y2, sd2, _ = tv.camera_volume(np.random.default_rng(1), sharp, psf, photons=100.0, read=2.0)
    assert not np.allclose(sd, sd2)  # the map follows the noise draw


def test_stage_loss_on_crops_equals_the_full_grid_loss(tiny_cfg):
    torch.manual_seed(0)
    vc = VolumeCascade(3, width=4)
    with torch.no_grad():
        for p in vc.denoisers.parameters():
            p.normal_(0, 0.1)
    y, sd, k, x = tv.VolumeSource(tv.VolConfig(patch=(6, 14, 14)), "T").raw(0, 1)
    with torch.no_grad():
        got = tv.stage_loss(vc, 2, (y, sd, k, x))
        problem, xp = stage_inputs(vc, 2, y, k, noise_map=sd)
        g = problem.geometry
        z = denoise_gradients(vc.denoisers[1], image_gradients(xp, 3), channels_last=False,
                              conditions=[NOISE_MAP_SCALE * g.pad(sd)])
        reg = (slice(None),) + tuple(slice(b, b + n) for b, n in zip(g.before, g.image_shape))
        want = sum((zi[reg] - ti[reg]).abs().mean() for zi, ti in zip(z, image_gradients(g.pad(x), 3))) / 3
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_tiny_run_trains_validates_resumes_and_saves(tmp_path, tiny_cfg):
    init = save_cascade(NoiseMapCascade(3, width=tiny_cfg.width), tmp_path / "planar.safetensors")
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        tv.train_volume(out, tiny_cfg, torch.device("cpu"), init, log=lambda m: None, stop=StopControl(max_steps=3))
    assert (out / "stage1.pt").is_file() and (out / "after_stage1.safetensors").is_file()
    record = tv.train_volume(out, tiny_cfg, torch.device("cpu"), init, log=lambda m: None)
    assert set(record) >= {"init", "stage1", "stage2", "stage3", "finetune"}
    assert json.loads((out / "val.json").read_text()) == record
    row = record["finetune"]["widefield 100 ph"]
    assert len(row) == 1 + 1 + 3 and all(np.isfinite(row))  # blurry, stage 0, stages 1–3
    final = load_cascade(out / "volume_cascade.safetensors")
    assert isinstance(final, VolumeCascade) and final.n_stages == 3
    log = (out / "train.log").read_text()
    assert "resumed" in log or "done (" in log


def test_snapshot_of_an_interrupted_finetuning_is_a_validated_model(tmp_path, tiny_cfg):
    init = save_cascade(NoiseMapCascade(3, width=tiny_cfg.width), tmp_path / "planar.safetensors")
    out = tmp_path / "run"
    with pytest.raises(Interrupted):  # 3 stages × 2 steps, then 1 of the 2 fine-tuning steps
        tv.train_volume(out, tiny_cfg, torch.device("cpu"), init, log=lambda m: None, stop=StopControl(max_steps=7))
    assert (out / "finetune.pt").is_file() and not (out / "volume_cascade.safetensors").exists()
    assert tv.main(["--out", str(out), "--snapshot", "--threads", "1"]) == 0
    snap = load_cascade(out / "snapshot_finetune_step1.safetensors")
    assert isinstance(snap, VolumeCascade) and snap.width == tiny_cfg.width
    state = torch.load(out / "finetune.pt", weights_only=True)["cascade"]
    for k, v in snap.state_dict().items():
        torch.testing.assert_close(v, state[k])
    record = json.loads((out / "val.json").read_text())
    assert all(np.isfinite(record["finetune_step1"]["widefield 100 ph"]))
    assert "snapshot of fine-tuning step 1/2" in (out / "train.log").read_text()
    # the run resumes as before (here with the other fine-tuning loss, as a resumed run may)
    cfg = dataclasses.replace(tiny_cfg, finetune_loss="log-mse")
    tv.train_volume(out, cfg, torch.device("cpu"), init, log=lambda m: None)
    assert (out / "volume_cascade.safetensors").is_file()
    with pytest.raises(SystemExit):
        tv.main(["--out", str(out)])  # without --init-from (and not --snapshot)


def test_stage_training_lowers_the_loss():
    """A few Adam steps on one fixed batch lower the stage-1 loss (the gradients reach both networks)."""
    torch.manual_seed(0)
    vc = VolumeCascade(1, width=4)
    batch = tv.VolumeSource(tv.VolConfig(patch=(6, 16, 16)), "L").raw(0, 2)
    opt = torch.optim.Adam(vc.denoisers[0].parameters(), lr=3e-3)
    first = None
    for _ in range(25):
        loss = tv.stage_loss(vc, 1, batch)
        first = float(loss) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(tv.stage_loss(vc, 1, batch)) < 0.8 * first
    assert vc.denoisers[0].axial.convs[0].weight.grad is not None


def test_another_width_starts_new_networks_with_the_start_gammas(tmp_path, tiny_cfg):
    """--width other than the start's: γ(σ) copied, new seeded networks of that width, trained from stage 1."""
    start = VolumeCascade(3, width=6)
    with torch.no_grad():
        start.gamma_coeffs.normal_()
    init = save_cascade(start, tmp_path / "wide.safetensors")
    a = VolumeCascade.fresh_networks(start, 4, seed=1)
    b = VolumeCascade.fresh_networks(start, 4, seed=1)
    assert a.width == 4 and a.n_stages == 3
    torch.testing.assert_close(a.gamma_coeffs, start.gamma_coeffs)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)  # reproducible, so a resumed run starts from the same networks
    assert not torch.equal(a.denoisers[0].lateral.convs[0].weight,
                           VolumeCascade.fresh_networks(start, 4, seed=2).denoisers[0].lateral.convs[0].weight)
    out = tmp_path / "narrow"
    tv.train_volume(out, tiny_cfg, torch.device("cpu"), init, log=lambda m: None)  # tiny preset: width 8
    final = load_cascade(out / "volume_cascade.safetensors")
    assert final.width == tiny_cfg.width == 8
    torch.testing.assert_close(load_cascade(out / "after_init.safetensors").gamma_coeffs, start.gamma_coeffs)
    with pytest.raises(ValueError, match="width"):  # a later phase cannot change the width
        tv.train_volume(tmp_path / "other", tiny_cfg, torch.device("cpu"), init, log=lambda m: None,
                        start_at="stage2")


def test_network_margin_is_trained_with_and_kept(tmp_path, tiny_cfg):
    """--network-margin: the cascade trains with its priors on the volume ± the margin (the stage loop masks
    the rest of the frame) and keeps it in its metadata; a later run from it keeps it unless told otherwise."""
    from dataclasses import replace

    from napari_fcnn_deblur.core.cascade import MARGIN_KEY

    init = save_cascade(NoiseMapCascade(3, width=tiny_cfg.width), tmp_path / "planar.safetensors")
    out = tmp_path / "margin"
    tv.train_volume(out, replace(tiny_cfg, network_margin=3), torch.device("cpu"), init, log=lambda m: None)
    final = load_cascade(out / "volume_cascade.safetensors")
    assert final.network_margin == 3 and final.metadata[MARGIN_KEY] == "3"
    assert "network margin: 3" in (out / "train.log").read_text()
    again = tmp_path / "again"
    tv.train_volume(again, tiny_cfg, torch.device("cpu"), out / "volume_cascade.safetensors", log=lambda m: None,
                    start_at="finetune")
    assert load_cascade(again / "volume_cascade.safetensors").network_margin == 3
    with pytest.raises(SystemExit):
        tv.main(["--out", str(tmp_path / "bad"), "--init-from", str(init), "--network-margin", "x"])
    with pytest.raises(ValueError, match="network margin"):
        tv.main(["--out", str(tmp_path / "bad"), "--init-from", str(init), "--network-margin", "-2"])


def test_stages_grows_a_volume_cascade_and_trains_only_the_new_stage(tmp_path, tiny_cfg):
    """--stages 4 --start-at stage4 from a 3-stage volume cascade: stages 1–3 kept as they were, stage 4 starts as
    a copy of stage 3 and is trained (then everything end to end), and the file has 4 stages."""
    start = VolumeCascade(3, width=tiny_cfg.width)
    init = save_cascade(start, tmp_path / "three.safetensors")
    out = tmp_path / "deeper"
    args = ["--out", str(out), "--init-from", str(init), "--preset", "tiny", "--threads", "1", "--stages", "4",
            "--start-at", "stage4"]
    assert tv.main(args) == 0
    grown = load_cascade(out / "after_init_three.safetensors")
    assert grown.n_stages == 4
    for k, v in grown.denoisers[3].state_dict().items():
        torch.testing.assert_close(v, start.denoisers[2].state_dict()[k])
    after4 = load_cascade(out / "after_stage4.safetensors")
    for s in range(3):
        for k, v in after4.denoisers[s].state_dict().items():
            torch.testing.assert_close(v, start.denoisers[s].state_dict()[k])  # frozen
    assert any(not torch.equal(v, grown.denoisers[3].state_dict()[k])
               for k, v in after4.denoisers[3].state_dict().items())
    final = load_cascade(out / "volume_cascade.safetensors")
    assert final.n_stages == 4 and len(json.loads((out / "val.json").read_text())["finetune"]["widefield 100 ph"]) == 6
    with pytest.raises(SystemExit):
        tv.main(args[:-4] + ["--stages", "4", "--minutes-stage", "1,1"])  # a budget for every stage
