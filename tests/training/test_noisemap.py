"""Training of the noise-map cascade (training/noisemap.py): samples, phases, checkpoints, resume. Small and fast."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import camera_crops
from napari_fcnn_deblur.core.conditioned import NoiseMapCascade
from napari_fcnn_deblur.data.psf import random_psf
from napari_fcnn_deblur.io.models import load_cascade
from napari_fcnn_deblur.training.noisemap import (
    Interrupted,
    NMConfig,
    NoiseMapSource,
    StopControl,
    add_noise,
    engine_noise_map,
    finetune_loss,
    initial_cascade,
    stage_batch,
    train_noisemap,
    train_stage,
)

MODELS = Path(__file__).resolve().parents[2] / "src" / "napari_fcnn_deblur" / "models"
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: one thread is faster, and much faster on cores shared with other jobs."""
    torch.set_num_threads(1)  # conftest restores the count


def _images():
    return camera_crops(60)


def test_samples_are_deterministic_and_psfs_normalised():
    rng = np.random.default_rng(0)
    for _ in range(6):
        k = random_psf(rng)
        assert k.shape == (31, 31) and k.min() >= 0 and np.isclose(k.sum(), 1.0)
        assert np.unravel_index(k.argmax(), k.shape) == (15, 15)
    src = NoiseMapSource(_images(), NMConfig(patch=16), "t")
    y1, sd1, k1, x1 = src.batch(4, 3)
    y2, sd2, k2, x2 = src.batch(5, 2)
    assert y1.shape == sd1.shape == (3, 16, 16) and k1.shape == (3, 31, 31) and x1.shape == (3, 46, 46)
    assert torch.equal(y1[1:], y2) and torch.equal(sd1[1:], sd2) and torch.equal(k1[1:], k2)
    assert (sd1 > 0).all()


def test_photon_noise_map_is_what_a_run_given_the_true_noise_computes():
    from napari_fcnn_deblur.engine.noise import NoiseLevel

    clean = np.zeros((40, 40))
    clean[:, 20:] = 0.8
    rng = np.random.default_rng(3)
    cfg = NMConfig(p_gaussian=0.0, map_jitter=0.0, photons_range=(50.0, 50.0), read_max=0.0)
    y, sd = add_noise(rng, clean, cfg)
    # the engine's map of the noisy image for σ²(x) = x / 50 (+ the drawn read noise, here 0)
    assert np.allclose(sd, NoiseLevel.poisson_gaussian(1 / 50, 0.0).sd_planes(y[None])[0], atol=1e-6)
    assert np.allclose(sd, engine_noise_map(y, 50.0, 0.0))
    # right on average where the image is flat, but from the noisy data: not the noiseless two-valued map
    assert abs(sd[:, 25:].mean() / np.sqrt(0.8 / 50) - 1) < 0.05
    assert sd[:, 25:].std() > 1e-4 and sd[:, :15].max() < 0.03


def test_log_mse_loss_weighs_every_sample_by_its_db():
    torch.manual_seed(0)
    target = torch.rand(2, 8, 8)
    out = target.clone()
    out[0] += 0.1 * torch.randn(8, 8)  # a noisy sample
    out[1] += 0.001 * torch.randn(8, 8)  # a clean one
    assert torch.isclose(finetune_loss(out, target), (out - target).abs().mean())
    mse = ((out - target) ** 2).flatten(1).mean(1)
    assert torch.isclose(finetune_loss(out, target, "log-mse"), (10 * torch.log10(mse)).mean(), atol=1e-4)
    # halving the clean sample's error counts as much as halving the noisy one's (≈ −3 dB each)
    a, b = out.clone(), out.clone()
    a[0] = target[0] + (out[0] - target[0]) / 2 ** 0.5
    b[1] = target[1] + (out[1] - target[1]) / 2 ** 0.5
    assert torch.isclose(finetune_loss(a, target, "log-mse"), finetune_loss(b, target, "log-mse"), atol=1e-4)
    assert finetune_loss(a, target) < finetune_loss(b, target)  # L1: only the noisy one counts much
    with pytest.raises(ValueError, match="finetune_loss"):
        finetune_loss(out, target, "l2")


def test_stage_training_lowers_the_loss_and_resumes_from_its_checkpoint(tmp_path):
    cfg = replace(NMConfig.preset("tiny"), width=8, patch=16, batch=4, stage_steps=30, lr=3e-3)
    casc = initial_cascade(cfg, MODELS)
    src = NoiseMapSource(_images(), cfg, "NMS1")
    y, sd, k, x = src.batch(10_000, 8)  # held-out samples
    net, m = casc.denoisers[0], 7

    def loss():
        with torch.no_grad():
            inp, tgt = stage_batch(casc, 1, y, sd, k, x, cfg.patch)
            assert inp.shape == (16, 2, 30, 30) and tgt.shape == (16, 16, 16)
            return (net(inp)[:, 0, m:-m, m:-m] - tgt).abs().mean().item()

    before, logs = loss(), []
    ckpt = tmp_path / "stage1.pt"
    with pytest.raises(Interrupted):
        train_stage(casc, 1, src, cfg, ckpt, torch.device("cpu"), logs.append, StopControl(max_steps=20))
    state = torch.load(ckpt, weights_only=True)
    assert list(state) == ["net", "opt", "step", "steps", "fixed", "elapsed"] and state["step"] == 20
    train_stage(casc, 1, src, cfg, ckpt, torch.device("cpu"), logs.append, StopControl())
    assert any("stage 1: resumed at step 20/30" in line for line in logs)
    assert torch.load(ckpt, weights_only=True)["step"] == 30
    assert loss() < 0.9 * before


@pytest.mark.skipif(not (DATA / "train" / "train400").is_dir(), reason="shared training data not present")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_tiny_run_checkpoints_and_resumes_to_the_same_weights(tmp_path, precision):
    cfg = replace(NMConfig.preset("tiny"), width=8, patch=16, val_size=32, stage_steps=2, finetune_steps=1,
                  val_conditions=(("gauss", 0.03), ("pg", 60.0, 0.005)), precision=precision)
    args = (DATA / "train" / "train400", DATA / "val" / "set12", DATA / "kernels" / "levin")
    dev, logs = torch.device("cpu"), []
    with pytest.raises(Interrupted):
        train_noisemap(*args, tmp_path / "a", cfg, dev, log=logs.append, stop=StopControl(max_steps=3), models_dir=MODELS)
    assert torch.load(tmp_path / "a" / "stage2.pt", weights_only=True)["step"] == 1
    record = train_noisemap(*args, tmp_path / "a", cfg, dev, log=logs.append, models_dir=MODELS)
    assert any("stage 2: resumed at step 1/2" in m for m in logs)
    assert set(record) == {"init", "stage1", "stage2", "stage3", "finetune"}
    resumed = load_cascade(tmp_path / "a" / "noisemap_cascade.safetensors")
    assert isinstance(resumed, NoiseMapCascade)
    # an uninterrupted run gives the same weights (same data, optimiser state restored)
    train_noisemap(*args, tmp_path / "b", cfg, dev, log=logs.append, models_dir=MODELS)
    straight = load_cascade(tmp_path / "b" / "noisemap_cascade.safetensors")
    for p, q in zip(resumed.parameters(), straight.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def test_cli_flags_and_tiny_shrinks_a_preset():
    import argparse

    from napari_fcnn_deblur.cli.commands import build_parser
    from napari_fcnn_deblur.training.noisemap import config_from_args

    args = build_parser().parse_args(["train-noisemap", "--data", "d", "--val", "v", "--val-kernels", "k",
                                      "--out", "o", "--preset", "gpu", "--tiny", "--minutes-stage", "1,2,3",
                                      "--refills", "2", "--gamma-floor", "0.0025"])
    cfg = config_from_args(args)
    assert cfg.patch == 24 and cfg.workers == 8 and cfg.stage_minutes == (1.0, 2.0, 3.0) and cfg.refills == 2
    assert cfg.gamma_floor == 0.0025 and NMConfig.preset("cpu").gamma_floor is None
    with pytest.raises(SystemExit):
        config_from_args(argparse.Namespace(**{**vars(args), "minutes_stage": "1,2"}))


@pytest.mark.skipif(not (DATA / "train" / "train400").is_dir(), reason="shared training data not present")
def test_warm_start_from_a_committed_file_skips_the_done_phases(tmp_path):
    cfg = replace(NMConfig.preset("tiny"), width=8, patch=16, val_size=32, stage_steps=2, finetune_steps=1,
                  val_conditions=(("gauss", 0.03),))
    args = (DATA / "train" / "train400", DATA / "val" / "set12", DATA / "kernels" / "levin")
    dev, logs = torch.device("cpu"), []
    train_noisemap(*args, tmp_path / "a", cfg, dev, log=logs.append, models_dir=MODELS)
    start = tmp_path / "a" / "after_stage2.safetensors"
    logs.clear()
    record = train_noisemap(*args, tmp_path / "b", replace(cfg, refills=2, gamma_floor=0.0025), dev,
                            log=logs.append, models_dir=MODELS, init_from=start, start_at="stage3")
    assert set(record) == {"init_after_stage2", "stage3", "finetune"}
    # trained with boundary refills and a lower γ floor, which the model keeps (the warm-start file had neither)
    assert any("boundary refills per stage: 0 → 2" in m for m in logs)
    assert any("γ(σ) floor: σ_eff 0.01 → 0.0025" in m for m in logs)
    b, a = (load_cascade(tmp_path / d / "noisemap_cascade.safetensors") for d in "ba")
    assert (b.refills, b.gamma_floor, a.refills, a.gamma_floor) == (2, 0.0025, 0, 0.01)
    assert not (tmp_path / "b" / "stage1.pt").exists() and (tmp_path / "b" / "stage3.pt").is_file()
    warm, first = load_cascade(tmp_path / "b" / "after_init_after_stage2.safetensors"), load_cascade(start)
    for p, q in zip(warm.denoisers.parameters(), first.denoisers.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    # the γ(σ) coefficients were refitted for the new floor: the same curve where both are quadratic, up to the fit
    sig = torch.tensor([0.03, 0.05])
    torch.testing.assert_close(warm.gammas_at(sig).log(), first.gammas_at(sig).log(), rtol=0, atol=0.6)
    with pytest.raises(ValueError, match="start_at"):
        train_noisemap(*args, tmp_path / "c", cfg, dev, models_dir=MODELS, init_from=start, start_at="stage9")


@pytest.mark.skipif(not (DATA / "train" / "train400").is_dir(), reason="shared training data not present")
def test_snapshot_of_an_interrupted_finetuning_is_a_validated_model(tmp_path):
    from napari_fcnn_deblur.training.noisemap import snapshot

    cfg = replace(NMConfig.preset("tiny"), width=8, patch=16, val_size=32, stage_steps=1, finetune_steps=3,
                  val_conditions=(("gauss", 0.03),), refills=1)
    args = (DATA / "train" / "train400", DATA / "val" / "set12", DATA / "kernels" / "levin")
    dev, logs = torch.device("cpu"), []
    with pytest.raises(FileNotFoundError, match="fine-tuning checkpoint"):
        snapshot(*args[1:], tmp_path, dev)
    with pytest.raises(Interrupted):  # 3 stage steps, then 2 of the 3 fine-tuning steps
        train_noisemap(*args, tmp_path, cfg, dev, log=logs.append, stop=StopControl(max_steps=5), models_dir=MODELS)
    path = snapshot(*args[1:], tmp_path, dev, log=logs.append)
    assert path.name == "snapshot_finetune_step2.safetensors"
    snap = load_cascade(path)
    state = torch.load(tmp_path / "finetune.pt", weights_only=True)["cascade"]
    for key, value in snap.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    assert snap.refills == 1  # the run's settings come with the architecture
    import json
    record = json.loads((tmp_path / "val.json").read_text())
    assert record["finetune_step2"]["steps"] == "2/3" and "gauss 3%" in record["finetune_step2"]["noisemap_per_stage"]
    assert any("snapshot of fine-tuning step 2/3" in m for m in logs)
    # the run resumes and finishes as if nothing happened
    train_noisemap(*args, tmp_path, cfg, dev, log=logs.append, models_dir=MODELS)
    assert (tmp_path / "noisemap_cascade.safetensors").is_file()


def test_stages_flag_sets_the_depth_and_extends_the_budgets():
    from napari_fcnn_deblur.cli.commands import build_parser
    from napari_fcnn_deblur.training.noisemap import config_from_args

    base = ["train-noisemap", "--data", "d", "--val", "v", "--val-kernels", "k", "--out", "o"]
    cfg = config_from_args(build_parser().parse_args(base + ["--stages", "5", "--start-at", "stage4"]))
    assert cfg.n_stages == 5 and cfg.stage_minutes == NMConfig().stage_minutes + (NMConfig().stage_minutes[-1],) * 2
    cfg = config_from_args(build_parser().parse_args(base + ["--stages", "4", "--minutes-stage", "1,1,1,9"]))
    assert cfg.n_stages == 4 and cfg.stage_minutes == (1.0, 1.0, 1.0, 9.0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(base + ["--start-at", "stage0"])


@pytest.mark.skipif(not (DATA / "train" / "train400").is_dir(), reason="shared training data not present")
def test_a_deeper_cascade_grows_from_a_committed_file(tmp_path):
    """--stages 3 from a 2-stage file: stage 3 starts as a copy of stage 2, only it trains stage-wise."""
    cfg = replace(NMConfig.preset("tiny"), width=8, patch=16, val_size=32, stage_steps=2, finetune_steps=0,
                  finetune_minutes=0.0, val_conditions=(("gauss", 0.03),), n_stages=2, stage_minutes=(0.0, 0.0))
    args = (DATA / "train" / "train400", DATA / "val" / "set12", DATA / "kernels" / "levin")
    dev, logs = torch.device("cpu"), []
    train_noisemap(*args, tmp_path / "a", cfg, dev, models_dir=MODELS)
    start = tmp_path / "a" / "noisemap_cascade.safetensors"
    deep_cfg = replace(cfg, n_stages=3, stage_minutes=(0.0, 0.0, 0.0))
    record = train_noisemap(*args, tmp_path / "b", deep_cfg, dev, log=logs.append, models_dir=MODELS,
                            init_from=start, start_at="stage3")
    assert set(record) == {"init_noisemap_cascade", "stage3"}
    assert any("2 stages → 3" in m for m in logs)
    assert len(record["stage3"]["noisemap_per_stage"]["gauss 3%"]) == 4  # stage 0 … 3
    two, three = load_cascade(start), load_cascade(tmp_path / "b" / "noisemap_cascade.safetensors")
    assert three.n_stages == 3
    for s in range(2):  # the warm-started stages were not trained
        for p, q in zip(three.denoisers[s].parameters(), two.denoisers[s].parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=0)
    grown = load_cascade(tmp_path / "b" / "after_init_noisemap_cascade.safetensors")
    for p, q in zip(grown.denoisers[2].parameters(), two.denoisers[1].parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)  # the new stage started as a copy of the last
    assert any(not torch.equal(p, q) for p, q in zip(three.denoisers[2].parameters(), two.denoisers[1].parameters()))
    with pytest.raises(ValueError, match="at most 1 stages"):
        train_noisemap(*args, tmp_path / "c", replace(cfg, n_stages=1, stage_minutes=(0.0,)), dev,
                       models_dir=MODELS, init_from=start)


def test_a_bf16_training_step_follows_the_fp32_one():
    """The networks in bf16 autocast (channels_last): the end-to-end loss and every network's gradient agree with
    fp32 (the weights, the optimiser and the FFT steps stay fp32; bf16 only rounds the convolutions)."""
    from napari_fcnn_deblur.training.stagewise import training_arithmetic

    torch.manual_seed(0)
    cascade = NoiseMapCascade(2, width=8)
    y, sd, k, x = NoiseMapSource(_images(), NMConfig(patch=24), "t").batch(0, 2)
    target = x[:, 15:-15, 15:-15]
    losses, grads = {}, {}
    for prec in ("fp32", "bf16"):
        arith = training_arithmetic(prec, torch.device("cpu"))
        cascade.zero_grad()
        out = None
        for out in cascade.run(y, k, sd, **arith.run_args()):
            pass
        loss = finetune_loss(out.image, target, "l1")
        loss.backward()
        losses[prec] = float(loss)
        grads[prec] = torch.cat([p.grad.flatten() for p in cascade.denoisers.parameters()])
        assert torch.isfinite(grads[prec]).all() and grads[prec].abs().sum() > 0
    assert abs(losses["bf16"] / losses["fp32"] - 1) < 0.02
    assert torch.nn.functional.cosine_similarity(grads["bf16"], grads["fp32"], dim=0) > 0.95
