import numpy as np
import torch

from napari_fcnn_deblur.cascade import Cascade
from napari_fcnn_deblur.fft_deconv import image_gradients
from napari_fcnn_deblur.gradient_denoiser import RECEPTIVE_RADIUS
from napari_fcnn_deblur.motion_kernels import random_motion_kernel
from napari_fcnn_deblur.training import (
    KERNEL_BOX,
    SampleSource,
    TrainConfig,
    sharp_gradient_targets,
    stage_inputs,
    train_stage,
    valid_blur,
)


def _images():
    from skimage import data

    cam = data.camera().astype(np.float32) / 255
    return [cam[r : r + 90, c : c + 90] for r in (0, 200, 400) for c in (0, 250)]


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
    cascade = Cascade(3, gammas=[250.0, 40.0, 6.0, 1.0])
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
    resumed = Cascade(3, gammas=[250.0, 40.0, 6.0, 1.0])
    logs.clear()
    train_stage(resumed, 1, src, 45, cfg, ckpt, torch.device("cpu"), logs.append)
    assert any("resumed at step 40/45" in line for line in logs)
    assert torch.load(ckpt, weights_only=True)["step"] == 45


def test_end_to_end_finetune_checkpoints_and_resumes(tmp_path):
    from napari_fcnn_deblur.training import finetune_end_to_end

    torch.manual_seed(1)
    cfg = TrainConfig(patch=24, finetune_steps=4, finetune_batch=2, finetune_lr=1e-3, checkpoint_minutes=0.0)
    src = SampleSource(_images(), cfg.patch, 0.03, 0.0, 0, "F")
    cascade = Cascade(2, gammas=[200.0, 20.0, 2.0])
    before = [p.detach().clone() for p in cascade.parameters()]
    ckpt = tmp_path / "finetune.pt"
    finetune_end_to_end(cascade, src, cfg, ckpt, torch.device("cpu"), lambda m: None)
    assert ckpt.is_file() and torch.load(ckpt, weights_only=True)["step"] == 4
    assert any(not torch.equal(a, b) for a, b in zip(before, cascade.parameters()))  # weights and γ moved
    g = cascade.gammas.detach()
    assert torch.all(g[1:] <= g[:-1] * (1 + 1e-6))
    logs: list[str] = []
    cfg.finetune_steps = 6
    finetune_end_to_end(Cascade(2, gammas=[200.0, 20.0, 2.0]), src, cfg, ckpt, torch.device("cpu"), logs.append)
    assert any("resumed at step 4/6" in m for m in logs)  # continues to the new step count
    assert torch.load(ckpt, weights_only=True)["step"] == 6
