import numpy as np
import pytest
import torch

from conftest import camera_crops
from napari_fcnn_deblur.core.cascade import Cascade
from napari_fcnn_deblur.core.denoiser import RECEPTIVE_RADIUS
from napari_fcnn_deblur.core.spectral import image_gradients
from napari_fcnn_deblur.data.motion_kernels import random_motion_kernel
from napari_fcnn_deblur.training.stagewise import (
    KERNEL_BOX,
    SampleSource,
    TrainConfig,
    sharp_gradient_targets,
    stage_inputs,
    train_stage,
    valid_blur,
)


def _images():
    return camera_crops(90)


def test_motion_kernels_are_valid():
    rng = np.random.default_rng(0)
    for _ in range(20):
        k = random_motion_kernel(rng)
        assert k.shape[0] == k.shape[1] and 11 <= k.shape[0] <= 31 and k.shape[0] % 2 == 1
        assert k.min() >= 0 and np.isclose(k.sum(), 1.0)
        assert (k > 0).sum() >= 3  # a curve, not a point


def test_valid_blur_matches_scipy():
    from scipy.signal import fftconvolve

    x = torch.rand(2, 40, 44)
    k = torch.rand(2, 7, 7)
    k = k / k.sum(dim=(-1, -2), keepdim=True)
    out = valid_blur(x, k)
    ref = fftconvolve(x[1].numpy(), k[1].numpy(), mode="valid")
    assert out.shape == (2, 34, 38)
    np.testing.assert_allclose(out[1].numpy(), ref, atol=1e-5)


def test_samples_are_deterministic_and_shaped():
    src = SampleSource(_images(), patch=24, noise=0.01, jitter=0.1, seed=0, phase="t")
    y1, k1, x1 = src.batch(5, 3)
    y2, k2, x2 = src.batch(6, 2)
    assert y1.shape == (3, 24, 24) and k1.shape == (3, KERNEL_BOX, KERNEL_BOX) and x1.shape == (3, 24 + 30, 24 + 30)
    assert torch.equal(y1[1:], y2) and torch.equal(k1[1:], k2)


def _heldout_l1(cascade, src, cfg):
    y, k, x = src.batch(10_000, 8)
    problem, xp = stage_inputs(cascade, 1, y, k)
    g, m = problem.geometry, RECEPTIVE_RADIUS
    gx, _ = image_gradients(xp)
    inp = gx[:, g.top - m : g.top + cfg.patch + m, g.left - m : g.left + cfg.patch + m][:, None]
    tgx, _ = sharp_gradient_targets(x, cfg.patch)
    with torch.no_grad():
        return (cascade.denoisers[0](inp)[:, 0, m:-m, m:-m] - tgx).abs().mean().item()


def test_short_training_lowers_loss_and_resumes(tmp_path):
    torch.manual_seed(0)
    cfg = TrainConfig(patch=24, batch=4, lr=2e-3, lr_final=1e-4, checkpoint_minutes=0.0)
    src = SampleSource(_images(), cfg.patch, 0.01, 0.0, 0, "S1")
    cascade = Cascade(3, gammas=[250.0, 40.0, 6.0, 1.0], width=8)
    before = _heldout_l1(cascade, src, cfg)
    ckpt = tmp_path / "stage1.pt"
    logs: list[str] = []
    train_stage(cascade, 1, src, 40, cfg, ckpt, torch.device("cpu"), logs.append)
    after = _heldout_l1(cascade, src, cfg)
    assert ckpt.is_file()
    assert after < 0.8 * before, (before, after)
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 40

    # resume: a fresh cascade picks up the checkpoint and continues to the new step count
    resumed = Cascade(3, gammas=[250.0, 40.0, 6.0, 1.0], width=8)
    logs.clear()
    train_stage(resumed, 1, src, 45, cfg, ckpt, torch.device("cpu"), logs.append)
    assert any("resumed at step 40/45" in line for line in logs)
    assert torch.load(ckpt, weights_only=True)["step"] == 45


def test_end_to_end_finetune_checkpoints_and_resumes(tmp_path):
    from napari_fcnn_deblur.training.stagewise import finetune_end_to_end

    torch.manual_seed(1)
    cfg = TrainConfig(patch=24, finetune_steps=4, finetune_batch=2, finetune_lr=1e-3, checkpoint_minutes=0.0)
    src = SampleSource(_images(), cfg.patch, 0.03, 0.0, 0, "F")
    cascade = Cascade(2, gammas=[200.0, 20.0, 2.0], width=8)
    before = [p.detach().clone() for p in cascade.parameters()]
    ckpt = tmp_path / "finetune.pt"
    finetune_end_to_end(cascade, src, cfg, ckpt, torch.device("cpu"), lambda m: None)
    assert ckpt.is_file() and torch.load(ckpt, weights_only=True)["step"] == 4
    assert any(not torch.equal(a, b) for a, b in zip(before, cascade.parameters()))  # weights and γ moved
    g = cascade.gammas.detach()
    assert torch.all(g[1:] <= g[:-1] * (1 + 1e-6))
    logs: list[str] = []
    cfg.finetune_steps = 6
    finetune_end_to_end(Cascade(2, gammas=[200.0, 20.0, 2.0], width=8), src, cfg, ckpt, torch.device("cpu"), logs.append)
    assert any("resumed at step 4/6" in m for m in logs)  # continues to the new step count
    assert torch.load(ckpt, weights_only=True)["step"] == 6


def test_extension_run_appends_a_stage_and_keeps_earlier_ones_exact(tmp_path):
    """``--preset cpu-extend``: a stage is appended and trained; stages before it and their γ are untouched."""
    import imageio.v3 as iio

    from napari_fcnn_deblur.io.models import load_cascade, save_cascade
    from napari_fcnn_deblur.training.stagewise import extend_cascade, train_all

    torch.manual_seed(2)
    for sub in ("train", "val", "kern", "init"):
        (tmp_path / sub).mkdir()
    for i, im in enumerate(_images()):
        iio.imwrite(tmp_path / "train" / f"{i}.png", (im * 255).astype(np.uint8))
    iio.imwrite(tmp_path / "val" / "v.png", (_images()[3] * 255).astype(np.uint8))
    np.save(tmp_path / "kern" / "k.npy", random_motion_kernel(np.random.default_rng(3)))
    base = Cascade(2, gammas=[200.0, 20.0, 2.0], noise_level=0.03, width=8)
    save_cascade(base, tmp_path / "init" / "fcnn_noise0.03.safetensors")

    with pytest.raises(ValueError, match="cannot shrink"):
        extend_cascade(base, 1, 0.3)

    cfg = TrainConfig.cpu_extend()
    cfg.n_stages, cfg.train_gammas_from = 3, 3
    cfg.noise_levels, cfg.patch, cfg.batch, cfg.stage_seconds = (0.03,), 24, 2, 0.0
    cfg.steps_first = cfg.steps_warm = (0, 0, 5)
    cfg.gamma_steps, cfg.gamma_batch, cfg.checkpoint_minutes = 3, 2, 0.0
    cfg.val_images, cfg.val_kernels, cfg.val_size = 1, 1, 48
    report = train_all(tmp_path / "train", tmp_path / "val", tmp_path / "kern", tmp_path / "run", cfg,
                       torch.device("cpu"), init_dir=tmp_path / "init", log=lambda m: None)
    ext = load_cascade(tmp_path / "run" / "noise0.03" / "cascade.safetensors")
    assert ext.n_stages == 3 and len(report[0.03]["val_psnr_per_stage"]) == 4
    assert torch.equal(ext.log_gammas[:3], base.log_gammas)  # frozen γ, bit for bit
    assert ext.gammas[3] <= ext.gammas[2]
    for s in range(2):
        for a, b in zip(ext.denoisers[s].parameters(), base.denoisers[s].parameters()):
            assert torch.equal(a, b)
    # the new stage was trained: it no longer equals the stage it was copied from
    assert any(not torch.equal(a, b) for a, b in zip(ext.denoisers[2].parameters(), base.denoisers[1].parameters()))
    y, k = torch.rand(1, 40, 40), torch.ones(5, 5) / 25
    with torch.no_grad():
        assert torch.equal(ext(y, k, iterations=2), base(y, k))  # running 2 stages gives what the old cascade gave


def test_finetune_minimises_the_chosen_loss(tmp_path):
    """The logged fine-tuning loss is the L1 or the L2 error of the final image on that batch."""
    import copy

    from napari_fcnn_deblur.training.stagewise import finetune_end_to_end, sharp_target

    torch.manual_seed(3)
    src = SampleSource(_images(), 24, 0.03, 0.0, 0, "F")
    cascade = Cascade(1, gammas=[200.0, 20.0], width=8)
    y, k, x = src.batch(0, 2)
    with torch.no_grad():
        err = cascade(y, k) - sharp_target(x, 24)
    expected = {"l1": err.abs().mean().item(), "l2": err.square().mean().item()}
    assert abs(expected["l1"] - expected["l2"]) > 1e-3  # the two losses are told apart by the log
    for loss in ("l1", "l2"):
        cfg = TrainConfig(patch=24, finetune_steps=1, finetune_batch=2, checkpoint_minutes=0.0, finetune_loss=loss)
        logs: list[str] = []
        finetune_end_to_end(copy.deepcopy(cascade), src, cfg, tmp_path / f"{loss}.pt", torch.device("cpu"),
                            logs.append)
        line = next(m for m in logs if m.startswith("fine-tuning step 1/1"))
        assert line.split()[-2] == loss.upper()
        assert float(line.split()[-1]) == pytest.approx(expected[loss], abs=1e-5)
    with pytest.raises(ValueError, match="finetune_loss"):
        finetune_end_to_end(cascade, src, TrainConfig(finetune_steps=1, finetune_loss="huber"), tmp_path / "h.pt",
                            torch.device("cpu"), logs.append)


def test_training_arithmetic_follows_the_precision():
    from napari_fcnn_deblur.engine.devices import check_precision
    from napari_fcnn_deblur.training.stagewise import Arithmetic, training_arithmetic

    cpu = torch.device("cpu")
    assert training_arithmetic("fp32", cpu) == Arithmetic(False, None)
    assert training_arithmetic("bf16", cpu) == Arithmetic(True, torch.bfloat16)
    native = check_precision("auto", cpu) is not None  # bf16 only where the CPU computes it natively
    assert training_arithmetic("auto", cpu) == (Arithmetic(True, torch.bfloat16) if native else Arithmetic())
    with pytest.raises(ValueError, match="precision"):
        training_arithmetic("fp16", cpu)
