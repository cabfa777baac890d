"""Training of the noise-map-conditioned cascade (:mod:`napari_fcnn_deblur.core.conditioned`), resumable.

Recipe
------
1. Samples: random crops (flips, 90° rotations) of sharp grey images; a kernel per sample, 70 %
   random camera shake (:mod:`napari_fcnn_deblur.data.motion_kernels`), 30 % a smooth
   microscopy-like PSF (:func:`napari_fcnn_deblur.data.psf.random_psf`), embedded in 31×31; *valid*
   blur; noise per sample, 50 % Gaussian (σ log-uniform in [0.25 %, 15 %]) and 50 %
   Poisson–Gaussian (p photons at intensity 1, p log-uniform in [10, 1000], read noise σ_r uniform
   in [0, 2 %]: y = Poisson(p·blur)/p + N(0, σ_r²)).  The network's noise map is what a run given the true
   noise computes: σ for Gaussian noise, sqrt(max(x/p + σ_r², 0)) at the *noisy* image smoothed as the
   engine smooths it for Poisson–Gaussian noise (:func:`engine_noise_map`; until session 12 it was the
   s.d. of the noiseless blur, a clean copy of the signal no run has), times a per-sample factor
   1 ± 10 % so the network tolerates an estimated map at inference.
   Sample i of a phase depends only on (seed, phase, i), so a resumed run sees the same data.
2. Stage s (s = 1 … n): the frozen stages < s run through ``Cascade.run`` with γ(σ), and stage s's
   FCNN learns (eq. 7, L1) to map the gradients of that deconvolution (+ the noise map) to the
   sharp image's gradients; Adam 1e-3 → 2e-5 (cosine).
3. End-to-end fine-tuning of every FCNN and the γ(σ) coefficients on the L1 loss of the final image
   (Adam, 5e-5 cosine for the networks, 0.01 for the coefficients).

Every phase has a wall-clock budget: after a short warm-up its step count is fixed from the measured
rate and stored in the checkpoint (``stage{s}.pt``, ``finetune.pt`` in the output folder, written
atomically every few minutes; entries ``net``/``cascade``, ``opt``, ``step``, ``steps``, ``fixed``,
``elapsed``).  Re-running the same command resumes.  Validation after each phase (Set12 crops × Levin
kernels at Gaussian 1/3/5/10 % and Poisson–Gaussian 60 photons + 0.5 % read noise, against the
nearest shipped per-level cascade) goes to ``val.json``; the log to ``train.log``.

Command line: ``fcnn-deblur train-noisemap --data DIR --val DIR --val-kernels DIR --out DIR
[--minutes-stage 30,25,25 --minutes-finetune 40] [--device cuda --preset gpu]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..core.cascade import REFILLS_KEY
from ..core.conditioned import (
    NOISE_MAP_SCALE,
    SHIPPED_LEVELS,
    NoiseMapCascade,
    check_gamma_floor,
    effective_sigma,
    fit_gamma_coeffs,
)
from ..core.denoiser import RECEPTIVE_RADIUS, GradientDenoiser
from ..data.motion_kernels import embed_centered, random_motion_kernel
from ..data.psf import random_psf
from ..data.samples import poisson_gaussian_noise
from ..engine.noise import NoiseLevel
from ..io.models import load_cascade, nearest_trained_level, save_cascade
from .stagewise import (
    KERNEL_BOX,
    RunLog,
    SampleSource,
    batches,
    cosine_lr,
    extended_gammas,
    load_checkpoint,
    load_image_folder,
    load_kernel_folder,
    random_crop,
    save_checkpoint,
    sharp_target,
    stage_inputs,
    stage_training_pair,
    training_arithmetic,
    valid_blur,
)


@dataclass
class NMConfig:
    """Sizes of one noise-map training run."""

    n_stages: int = 3
    width: int = 64  # 64 = initialised from the shipped cascades; other widths start random (tests)
    patch: int = 96
    batch: int = 6
    finetune_batch: int = 6
    lr: float = 1e-3
    lr_final: float = 2e-5
    finetune_lr: float = 5e-5
    finetune_loss: str = "l1"  # or "log-mse" (FINETUNE_LOSSES)
    coeff_lr: float = 0.01
    # wall-clock budgets (minutes; 0 = run the nominal step counts below)
    stage_minutes: tuple[float, ...] = (30.0, 25.0, 25.0)
    finetune_minutes: float = 40.0
    stage_steps: int = 100_000
    finetune_steps: int = 100_000
    seed: int = 0
    checkpoint_minutes: float = 3.0
    workers: int = 1  # DataLoader worker processes (0 = make batches in the main process)
    log_every: int = 25
    # noise model
    p_gaussian: float = 0.5
    sigma_range: tuple[float, float] = (0.0025, 0.15)
    photons_range: tuple[float, float] = (10.0, 1000.0)
    read_max: float = 0.02
    map_jitter: float = 0.1
    # kernels
    p_motion: float = 0.7
    # boundary refills per stage (core.solver.refill_boundary), trained with and saved in the model's metadata
    refills: int = 0
    # σ_eff below which γ(σ) is held constant (core.conditioned.GAMMA_FLOOR_KEY), trained with and saved in the
    # model's metadata; None keeps the start's (0.01 for every file before it was a setting)
    gamma_floor: float | None = None
    # arithmetic of the networks in training (stagewise.training_arithmetic): auto = bf16 where native
    precision: str = "auto"
    # validation
    val_images: int = 4
    val_kernels: int = 4
    val_size: int = 160
    val_conditions: tuple = field(default_factory=lambda: (
        ("gauss", 0.01), ("gauss", 0.03), ("gauss", 0.05), ("gauss", 0.10), ("pg", 60.0, 0.005)))

    @classmethod
    def preset(cls, name: str) -> "NMConfig":
        if name == "cpu":
            return cls()
        if name == "gpu":  # one H100/H200-class GPU, a few minutes per phase
            return cls(patch=128, batch=48, finetune_batch=16, stage_minutes=(2.0, 2.0, 2.0), finetune_minutes=3.0,
                       checkpoint_minutes=1.0, workers=8, log_every=50, val_images=12)
        if name == "tiny":  # a few steps of everything: tests and smoke runs
            return cls(patch=24, batch=2, finetune_batch=2, stage_minutes=(0.0, 0.0, 0.0), finetune_minutes=0.0,
                       stage_steps=3, finetune_steps=2, checkpoint_minutes=0.0, workers=0, log_every=1,
                       val_images=1, val_kernels=1, val_size=40, precision="fp32")  # the same on every machine
        raise ValueError(f"unknown preset {name!r} (cpu, gpu, tiny)")


# ----------------------------------------------------------------------------- samples


def random_kernel(rng: np.random.Generator, p_motion: float = 0.7) -> np.ndarray:
    """A 31×31 training kernel: camera shake with probability ``p_motion``, else a smooth PSF."""
    if rng.random() < p_motion:
        return embed_centered(random_motion_kernel(rng), KERNEL_BOX)
    return random_psf(rng, KERNEL_BOX)


def engine_noise_map(y: np.ndarray, photons: float, read: float) -> np.ndarray:
    """The s.d. map a run given the true Poisson–Gaussian noise computes for the noisy ``y`` ((H, W) or
    (N, H, W), [0, 1] scale): σ²(x) = x / photons + read² at ``y`` smoothed as the engine smooths it
    (:meth:`~napari_fcnn_deblur.engine.noise.NoiseLevel.sd_planes`), float32 of ``y``'s shape.  Not the
    s.d. of the noiseless blur: that is a clean copy of the signal, which no run has."""
    planes = np.asarray(y, np.float32)
    planes = planes[None] if planes.ndim == 2 else planes
    sd = NoiseLevel.poisson_gaussian(1.0 / photons, read * read).sd_planes(planes)
    return sd.reshape(np.shape(y))


def add_noise(rng: np.random.Generator, blur: np.ndarray, cfg: NMConfig) -> tuple[np.ndarray, np.ndarray]:
    """Noisy image and the network's noise s.d. map (jittered ±cfg.map_jitter) for a blurred patch."""
    if rng.random() < cfg.p_gaussian:
        lo, hi = cfg.sigma_range
        sigma = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        y = blur + rng.normal(0.0, sigma, blur.shape)
        sd = np.full(blur.shape, sigma)
    else:
        lo, hi = cfg.photons_range
        p = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        sr = rng.uniform(0.0, cfg.read_max)
        y, _ = poisson_gaussian_noise(blur, p, sr, rng)
        sd = engine_noise_map(y, p, sr)
    sd = sd * (1.0 + cfg.map_jitter * rng.uniform(-1.0, 1.0))
    return y.astype(np.float32), sd.astype(np.float32)


class NoiseMapSource(SampleSource):
    """Deterministic samples with a noise map: sample i of a phase depends only on (seed, phase, i).

    A batch is (blurry (N, P, P), s.d. map (N, P, P), kernels (N, 31, 31), sharp (N, P+30, P+30)),
    made whole on the CPU (Poisson noise); :func:`~.stagewise.batches` moves it to the device.
    """

    def __init__(self, images: list[np.ndarray], cfg: NMConfig, phase: str, patch: int | None = None):
        super().__init__(images, patch or cfg.patch, noise=0.0, jitter=cfg.map_jitter, seed=cfg.seed, phase=phase)
        self.cfg = cfg

    def raw(self, start: int, size: int, with_noise: bool = True):
        big = self.patch + KERNEL_BOX - 1
        rngs = [self.rng(i) for i in range(start, start + size)]
        xs, ks = [], []
        for rng in rngs:
            xs.append(random_crop(rng, self.images, big))
            ks.append(random_kernel(rng, self.cfg.p_motion))
        x, k = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ks))
        with torch.no_grad():
            blur = valid_blur(x, k).numpy()
        ys, sds = zip(*(add_noise(rng, b, self.cfg) for rng, b in zip(rngs, blur)))
        return torch.from_numpy(np.stack(ys)), torch.from_numpy(np.stack(sds)), k, x

    def finish(self, raw, device: torch.device | None = None):
        if device is None:
            return raw
        return tuple(t.to(device, non_blocking=True) for t in raw)


# ----------------------------------------------------------------------------- phases


class Interrupted(Exception):
    """Training stopped early (signal or ``max_steps``) after saving its checkpoint."""


class StopControl:
    """Stops training at a signal (SIGTERM/SIGINT) or after ``max_steps`` optimiser steps in this process."""

    def __init__(self, max_steps: int | None = None):
        self.max_steps, self.steps, self.flag = max_steps, 0, False

    def step(self) -> bool:
        self.steps += 1
        return self.flag or (self.max_steps is not None and self.steps >= self.max_steps)


class StepBudget:
    """Fixes a phase's step count from the rate measured over steps warm … warm+span of this process.

    ``elapsed_before``: seconds the phase already ran in earlier processes (a resumed run).
    """

    def __init__(self, seconds: float, steps: int, fixed: bool, warm: int = 5, span: int = 20):
        self.seconds, self.steps, self.fixed, self.warm, self.span = seconds, steps, fixed or not seconds, warm, span
        self.t_start = time.time()

    def update(self, step: int, step0: int, elapsed_before: float, log, name: str) -> int:
        if self.fixed:
            return self.steps
        if step == step0 + self.warm:
            self.t_rate = time.time()
        if step == step0 + self.warm + self.span:
            rate = self.span / max(time.time() - self.t_rate, 1e-6)
            left = self.seconds - elapsed_before - (time.time() - self.t_start)
            self.steps = min(self.steps, step + int(rate * max(left, 0)))
            self.fixed = True
            log(f"{name}: {rate:.3f} steps/s, {self.seconds / 60:g} min budget → {self.steps} steps")
        return self.steps


@dataclass
class Phase:
    """One resumable training phase: ``module`` (saved under ``key``) optimised by ``opt`` on ``loss(batch)``."""

    name: str
    module: torch.nn.Module
    key: str
    opt: torch.optim.Optimizer
    loss: Callable[[tuple], torch.Tensor]
    lr: Callable[[int, int], None]  # sets the learning rate(s) of (step, step count)
    batch: int
    steps: int
    seconds: float
    warm: int = 5
    span: int = 20
    loss_name: str = "L1"  # how the log names the loss


def run_phase(phase: Phase, source: NoiseMapSource, cfg: NMConfig, ckpt: Path, device, log, stop: StopControl) -> None:
    """Run (or resume from ``ckpt``) one phase within its wall-clock budget; checkpoint as it goes."""
    step, steps, fixed, elapsed = 0, phase.steps, False, 0.0
    state = load_checkpoint(ckpt, phase.key, phase.module, phase.opt, device)
    if state is not None:
        step, steps, fixed, elapsed = int(state["step"]), int(state["steps"]), bool(state["fixed"]), float(state["elapsed"])
        if step >= steps:
            log(f"{phase.name}: done ({steps} steps), loaded")
            return
        log(f"{phase.name}: resumed at step {step}/{steps}")
    budget = StepBudget(phase.seconds, steps, fixed, phase.warm, phase.span)
    t_phase = time.time()

    def save():
        save_checkpoint(ckpt, phase.key, phase.module, phase.opt, step, budget.steps, fixed=budget.fixed,
                        elapsed=elapsed + time.time() - t_phase)

    step0, last_save, t0, run_loss, seen = step, time.time(), time.time(), 0.0, 0
    phase.module.train()
    for b in batches(source, step, steps - step, phase.batch, device, cfg.workers):
        steps = budget.update(step, step0, elapsed, log, phase.name)
        if step >= steps:
            break
        phase.lr(step, steps)
        loss = phase.loss(tuple(t.to(device) for t in b))
        phase.opt.zero_grad(set_to_none=True)
        loss.backward()
        phase.opt.step()
        step += 1
        run_loss, seen = run_loss + loss.item(), seen + 1
        if step % cfg.log_every == 0 or step == steps:
            log(f"{phase.name} step {step}/{steps} {phase.loss_name} {run_loss / seen:.5f} "
                f"({seen * phase.batch / (time.time() - t0):.2f} samples/s, lr {phase.opt.param_groups[0]['lr']:.2e})")
            run_loss, seen, t0 = 0.0, 0, time.time()
        interrupted = stop.step()
        if interrupted or (cfg.checkpoint_minutes and time.time() - last_save > 60 * cfg.checkpoint_minutes):
            save()
            last_save = time.time()
            if interrupted:
                phase.module.eval()
                raise Interrupted(f"{phase.name} step {step}")
    phase.module.eval()
    budget.steps = step  # finished (a short data stream ends the phase too)
    save()


def stage_batch(cascade: NoiseMapCascade, stage: int, y, sd, k, x, patch: int):
    """Network input (2N, 2, P+2r, P+2r) and target gradients (2N, P, P) for stage ``stage``."""
    problem, xp = stage_inputs(cascade, stage, y, k, noise_map=sd)
    return stage_training_pair(problem, xp, x, patch, (NOISE_MAP_SCALE * problem.geometry.pad(sd),))


def train_stage(cascade: NoiseMapCascade, stage: int, source: NoiseMapSource, cfg: NMConfig, ckpt: Path, device,
                log, stop: StopControl) -> None:
    """Train stage ``stage``'s FCNN (eq. 7) within its wall-clock budget, resuming from ``ckpt``."""
    net = cascade.denoisers[stage - 1]
    arith = training_arithmetic(cfg.precision, device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    m = RECEPTIVE_RADIUS

    def loss(b):
        y, sd, k, x = b
        inp, tgt = stage_batch(cascade, stage, y, sd, k, x, source.patch)
        return (arith.apply(net, inp)[:, 0, m:-m, m:-m] - tgt).abs().mean()

    def lr(step, steps):
        for pg in opt.param_groups:
            pg["lr"] = cosine_lr(step, steps, cfg.lr, cfg.lr_final)

    run_phase(Phase(f"stage {stage}", net, "net", opt, loss, lr, cfg.batch, cfg.stage_steps,
                    60.0 * cfg.stage_minutes[stage - 1]), source, cfg, ckpt, device, log, stop)


#: End-to-end fine-tuning losses: "l1" (mean absolute error over the batch) or "log-mse" (the mean over the
#: samples of 10·log10 of each one's mean squared error: minus its PSNR up to a constant, so every sample
#: counts by its dB, not by its error's size — photon-starved samples no longer drown the clean ones).
FINETUNE_LOSSES: dict[str, str] = {"l1": "L1", "log-mse": "log-MSE (dB)"}  # name → how the log shows it


def check_finetune_loss(kind: str) -> str:
    if kind not in FINETUNE_LOSSES:
        raise ValueError(f"finetune_loss must be one of {', '.join(FINETUNE_LOSSES)}, got {kind!r}")
    return kind


def finetune_loss(out: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """The fine-tuning loss of a batch ``(N, ...)`` of final images against their targets (:data:`FINETUNE_LOSSES`)."""
    if check_finetune_loss(kind) == "l1":
        return (out - target).abs().mean()
    mse = (out - target).square().flatten(1).mean(dim=1)
    return 10.0 * torch.log10(mse + 1e-10).mean()


def finetune(cascade: NoiseMapCascade, source, cfg, ckpt: Path, device, log, stop: StopControl,
             target: Callable[[torch.Tensor], torch.Tensor] | None = None, name: str = "fine-tuning",
             warm: int = 3, span: int = 10) -> None:
    """End-to-end fine-tuning of every FCNN and the γ(σ) coefficients (``cfg.finetune_loss`` on the final image,
    :func:`finetune_loss`; L1 by default).

    ``target`` maps a batch's sharp tensor to the final image's target (default: the crop under the
    blurry patch, :func:`~.stagewise.sharp_target`); the volume cascade's samples are already aligned.
    """
    arith = training_arithmetic(cfg.precision, device)
    opt = torch.optim.Adam([
        {"params": list(cascade.denoisers.parameters()), "lr": cfg.finetune_lr},
        {"params": [cascade.gamma_coeffs], "lr": cfg.coeff_lr},
    ])
    if target is None:
        def target(x):
            return sharp_target(x, source.patch)

    kind = check_finetune_loss(cfg.finetune_loss)

    def loss(b):
        y, sd, k, x = b
        out = None
        for out in cascade.run(y, k, sd, **arith.run_args()):
            pass
        return finetune_loss(out.image, target(x), kind)

    def lr(step, steps):
        opt.param_groups[0]["lr"] = cosine_lr(step, steps, cfg.finetune_lr, 0.0)

    run_phase(Phase(name, cascade, "cascade", opt, loss, lr, cfg.finetune_batch, cfg.finetune_steps,
                    60.0 * cfg.finetune_minutes, warm=warm, span=span,
                    loss_name=FINETUNE_LOSSES[kind]), source, cfg, ckpt, device, log, stop)


# ----------------------------------------------------------------------------- validation


def _condition_name(c) -> str:
    return f"gauss {100 * c[1]:g}%" if c[0] == "gauss" else f"PG {c[1]:g} ph + {100 * c[2]:g}% read"


def make_validation_set(images: list[np.ndarray], kernels: list[np.ndarray], cfg: NMConfig):
    """Fixed cases per condition: {name: [(kernel, y (N,S,S), true map (N,S,S), sharp (N,S,S))]}, one per kernel.

    Centre crops of ``cfg.val_images`` images spread evenly over the folder, × the first
    ``cfg.val_kernels`` kernels; valid blur; seeded noise.
    """
    idx = np.unique(np.linspace(0, len(images) - 1, min(cfg.val_images, len(images))).round().astype(int))
    crops = []
    for i in idx:
        im = images[i]
        s = min(cfg.val_size, *im.shape)
        r0, c0 = (im.shape[0] - s) // 2, (im.shape[1] - s) // 2
        crops.append(im[r0 : r0 + cfg.val_size, c0 : c0 + cfg.val_size])
    s = min(min(c.shape) for c in crops)
    crops = np.stack([c[:s, :s] for c in crops])
    out = {}
    for ci, cond in enumerate(cfg.val_conditions):
        cases = []
        for kj, k in enumerate(kernels[: cfg.val_kernels]):
            kk = np.pad(k, ((0, 1 - k.shape[0] % 2), (0, 1 - k.shape[1] % 2))).astype(np.float32)
            kk /= kk.sum()
            kt = torch.from_numpy(kk)
            blur = valid_blur(torch.from_numpy(crops), kt.expand(len(crops), *kk.shape)).numpy().astype(np.float64)
            rng = np.random.default_rng([4321, ci, kj])
            if cond[0] == "gauss":
                y = blur + rng.normal(0, cond[1], blur.shape)
                sd = np.full(blur.shape, cond[1])
            else:
                p, sr = cond[1], cond[2]
                y, _ = poisson_gaussian_noise(blur, p, sr, rng)
                sd = engine_noise_map(y, p, sr)
            oy, ox = kk.shape[0] // 2, kk.shape[1] // 2
            gt = crops[:, oy : oy + blur.shape[1], ox : ox + blur.shape[2]]
            cases.append((kt, torch.from_numpy(y.astype(np.float32)), torch.from_numpy(sd.astype(np.float32)),
                          torch.from_numpy(np.ascontiguousarray(gt))))
        out[_condition_name(cond)] = cases
    return out


def _psnr(est: torch.Tensor, gt: torch.Tensor) -> list[float]:
    mse = (est.clamp(0, 1) - gt).square().mean(dim=(-2, -1))
    return (10 * torch.log10(1.0 / mse)).tolist()


def validate_noisemap(cascade: NoiseMapCascade, val, device) -> dict:
    """Mean PSNR per condition after each stage (the last entry is the final image)."""
    res = {}
    with torch.no_grad():
        for name, cases in val.items():
            sums, n = np.zeros(cascade.n_stages + 1), 0
            for k, y, sd, gt in cases:
                for o in cascade.run(y.to(device), k.to(device), sd.to(device), channels_last=True):
                    sums[o.stage] += sum(_psnr(o.image.cpu(), gt))
                n += len(y)
            res[name] = [round(float(v), 3) for v in sums / n]
    return res  # weights left channels_last: the networks' calls put them in their input's format


def shipped_cascades(models_dir: Path) -> dict:
    """The per-level cascades γ(σ) is fitted to and validation compares with: {σ: Cascade}."""
    return {lv: load_cascade(Path(models_dir) / f"fcnn_noise{lv:.2f}.safetensors") for lv in SHIPPED_LEVELS}


def validate_shipped(val, device, models_dir: Path) -> dict:
    """Mean final PSNR per condition of the shipped cascade nearest in σ (σ_eff of each plane)."""
    cascades = {lv: c.to(device) for lv, c in shipped_cascades(models_dir).items()}
    res = {}
    with torch.no_grad():
        for name, cases in val.items():
            vals, levels = [], set()
            for k, y, sd, gt in cases:
                lv = [nearest_trained_level(s) for s in effective_sigma(sd).tolist()]
                for level in sorted(set(lv)):
                    sel = [i for i, v in enumerate(lv) if v == level]
                    out = cascades[level](y[sel].to(device), k.to(device))
                    vals += _psnr(out.cpu(), gt[sel])
                    levels.add(level)
            res[name] = {"psnr": round(float(np.mean(vals)), 3), "levels": sorted(levels)}
    return res


def _table(nm: dict, base: dict) -> str:
    lines = [f"{'condition':<24}{'noise-map':>11}{'shipped':>10}{'Δ dB':>8}  shipped level(s)"]
    for name, per_stage in nm.items():
        b = base[name]
        lines.append(f"{name:<24}{per_stage[-1]:>11.3f}{b['psnr']:>10.3f}{per_stage[-1] - b['psnr']:>+8.3f}  "
                     f"{', '.join(f'{v:g}' for v in b['levels'])}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- driver


def initial_cascade(cfg: NMConfig, models_dir: Path) -> NoiseMapCascade:
    """From the shipped cascades (width 64, 3 stages; more stages: copies of the last, see
    :meth:`NoiseMapCascade.extended`), else fitted γ(σ) and random FCNNs (map weights zero)."""
    if cfg.width == 64 and cfg.n_stages >= 3:
        return NoiseMapCascade.from_plain_cascades(shipped_cascades(models_dir)).extended(cfg.n_stages)
    torch.manual_seed(cfg.seed)
    casc = NoiseMapCascade(cfg.n_stages, width=cfg.width)
    shipped = shipped_cascades(models_dir)  # after the seeded nets: the same random start as before the port
    sched = [extended_gammas(shipped[lv].gammas.tolist(), cfg.n_stages, 1.0) for lv in SHIPPED_LEVELS]
    with torch.no_grad():
        casc.gamma_coeffs.copy_(fit_gamma_coeffs(sched))
    for s in range(cfg.n_stages):
        casc.denoisers[s].load_state_dict(GradientDenoiser.from_plain(GradientDenoiser(cfg.width)).state_dict())
    return casc.eval()


def stage_count(n_stages: int, preset_minutes: tuple[float, ...] | None = None) -> dict:
    """Config updates of a ``--stages`` option: ``n_stages`` and, when the stage budgets were not given
    (``preset_minutes``: the preset's), the preset's budgets with the last one repeated for added stages."""
    if not isinstance(n_stages, int) or n_stages < 1:
        raise SystemExit(f"--stages must be at least 1, got {n_stages}")
    upd: dict = {"n_stages": n_stages}
    if preset_minutes is not None:
        m = preset_minutes
        upd["stage_minutes"] = tuple(m[min(i, len(m) - 1)] for i in range(n_stages))
    return upd


def phase_names(n_stages: int) -> tuple[str, ...]:
    """The phases of a run of an ``n_stages`` cascade, in order (names of their after_<phase>.safetensors files)."""
    return tuple(f"stage{s}" for s in range(1, n_stages + 1)) + ("finetune",)


def phase_name(text: str) -> str:
    """``text`` if it names a phase (``stage<k>``, k ≥ 1, or ``finetune``): the type of ``--start-at``."""
    if text == "finetune" or re.fullmatch(r"stage[1-9][0-9]*", text):
        return text
    raise argparse.ArgumentTypeError(f"a phase is stage1, stage2, … or finetune, got {text!r}")


def start_index(start_at: str | None, n_stages: int) -> int:
    """Index in :func:`phase_names` of the first phase to train (0 for None): stage k is index k − 1, so a
    run trains stages ``start_index + 1 … n_stages`` and then fine-tunes."""
    phases = phase_names(n_stages)
    if start_at is not None and start_at not in phases:
        raise ValueError(f"start_at must be one of {phases}, got {start_at!r}")
    return phases.index(start_at) if start_at else 0


def train_noisemap(train_dir, val_dir, kernel_dir, out_dir, cfg: NMConfig, device: torch.device, log=print,
                   stop: StopControl | None = None, models_dir=None, init_from=None, start_at: str | None = None) -> dict:
    """Run (or resume) every phase into ``out_dir``; returns the validation record (also in val.json).

    ``init_from``: a noise-map cascade file (e.g. an earlier run's ``after_stage2.safetensors``, committed
    to the repository) to warm-start from instead of the shipped cascades; ``start_at``: the first phase
    to train (:func:`phase_names`; earlier ones are taken as done).  This is how a run continues on another
    machine, where the earlier run's checkpoints are gone.
    Raises :class:`Interrupted` when ``stop`` asks to stop (after saving the checkpoint).
    """
    first = start_index(start_at, cfg.n_stages)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    models_dir = Path(models_dir) if models_dir else Path(__file__).resolve().parents[1] / "models"
    stop = stop or StopControl()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    lg = RunLog(out_dir / "train.log", log)

    try:
        cfg_path = out_dir / "config.json"
        if cfg_path.is_file():
            old = json.loads(cfg_path.read_text())
            if json.loads(json.dumps(asdict(cfg))) != old:
                lg(f"note: config differs from the first start's ({cfg_path}); checkpoints keep their step counts")
        else:
            cfg_path.write_text(json.dumps(asdict(cfg), indent=1))
        lg(f"start: device {device}, {torch.get_num_threads()} threads, pid {os.getpid()}, networks in "
           f"{training_arithmetic(cfg.precision, device).describe()} (precision {cfg.precision})")
        images = load_image_folder(train_dir)
        val = make_validation_set(load_image_folder(val_dir), load_kernel_folder(kernel_dir), cfg)
        val_path, base_path = out_dir / "val.json", out_dir / "val_baseline.json"
        record = json.loads(val_path.read_text()) if val_path.is_file() else {}
        if base_path.is_file():
            base = json.loads(base_path.read_text())
        else:
            t = time.time()
            base = validate_shipped(val, device, models_dir)
            base_path.write_text(json.dumps(base, indent=1))
            lg(f"validated the shipped cascades ({time.time() - t:.0f} s)")

        if init_from is not None:
            cascade = load_cascade(init_from)
            if not isinstance(cascade, NoiseMapCascade) or cascade.n_stages > cfg.n_stages:
                raise ValueError(f"{init_from} is not a noise-map cascade of at most {cfg.n_stages} stages")
            if cascade.n_stages < cfg.n_stages:
                lg(f"{init_from}: {cascade.n_stages} stages → {cfg.n_stages} (new stages start as copies of the last)")
                cascade = cascade.extended(cfg.n_stages)
            cascade = cascade.to(device)
            lg(f"warm start from {init_from}; phases from {phase_names(cfg.n_stages)[first]} on")
        else:
            cascade = initial_cascade(cfg, models_dir).to(device)
        if cfg.refills != cascade.refills:
            lg(f"boundary refills per stage: {cascade.refills} → {cfg.refills} (trained and saved with the model)")
            cascade.metadata[REFILLS_KEY] = str(cfg.refills)
        if cfg.gamma_floor is not None and check_gamma_floor(cfg.gamma_floor) != cascade.gamma_floor:
            lg(f"γ(σ) floor: σ_eff {cascade.gamma_floor:g} → {cfg.gamma_floor:g}, coefficients refitted to the "
               f"start's γ(σ) above it (trained and saved with the model)")
            cascade.set_gamma_floor(cfg.gamma_floor, upper=cfg.sigma_range[1])

        def checkpoint_phase(phase: str):
            save_cascade(cascade, out_dir / f"after_{phase}.safetensors")
            if phase not in record:
                t = time.time()
                res = validate_noisemap(cascade, val, device)
                record[phase] = {"noisemap_per_stage": res, "shipped": base,
                                 "gammas_at": {f"{s:g}": [round(v, 4) for v in cascade.gammas_at(s)[:, 0].tolist()]
                                               for s in (0.0025, 0.005, 0.01, 0.015, 0.03, 0.05, 0.1, 0.15)},
                                 "validation_seconds": round(time.time() - t, 1)}
                write_record(val_path, record)
                lg(f"validation after {phase} ({time.time() - t:.0f} s): final PSNR (dB)\n" + _table(res, base))

        checkpoint_phase("init" if init_from is None else f"init_{Path(init_from).stem}")
        for s in range(first + 1, cfg.n_stages + 1):
            train_stage(cascade, s, NoiseMapSource(images, cfg, f"NMS{s}"), cfg, out_dir / f"stage{s}.pt", device,
                        lg, stop)
            checkpoint_phase(f"stage{s}")
        if cfg.finetune_minutes or cfg.finetune_steps:
            finetune(cascade, NoiseMapSource(images, cfg, "NMF"), cfg, out_dir / "finetune.pt", device, lg, stop)
            checkpoint_phase("finetune")
        cascade.metadata.update(trained_by="fcnn-deblur train-noisemap", train_data=Path(train_dir).name,
                                device=str(device), config=json.dumps(asdict(cfg)))
        final = save_cascade(cascade, out_dir / "noisemap_cascade.safetensors")
        lg(f"done: {final}")
        return record
    finally:
        lg.close()


def write_record(path: Path, record: dict) -> None:
    """Write a run's validation record (``val.json``) atomically: a cut-off run never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def load_config(cls, path: Path):
    """A run's configuration dataclass ``cls`` from its ``config.json`` (JSON lists back to tuples)."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(Path(path).read_text()).items()})


def finetune_snapshot(out_dir, device: torch.device) -> tuple[torch.nn.Module, dict, Path]:
    """(cascade, checkpoint, file) of a run folder's fine-tuning checkpoint ``finetune.pt`` as a model file
    ``snapshot_finetune_step<k>.safetensors`` (architecture and metadata from the folder's latest
    ``after_<phase>.safetensors`` but ``after_finetune``; weights and γ from the checkpoint).  Any cascade
    trained by this package's phases (noise-map or volume)."""
    out_dir = Path(out_dir)
    ckpt = out_dir / "finetune.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"no fine-tuning checkpoint in {out_dir} (expected {ckpt.name})")
    bases = [b for b in sorted(out_dir.glob("after_*.safetensors"), key=lambda b: b.stat().st_mtime)
             if b.stem != "after_finetune"]
    if not bases:
        raise FileNotFoundError(f"no after_<phase>.safetensors in {out_dir} to take the architecture from")
    cascade = load_cascade(bases[-1]).to(device)
    state = torch.load(ckpt, map_location=device, weights_only=True)
    cascade.load_state_dict(state["cascade"])
    path = save_cascade(cascade.eval(), out_dir / f"snapshot_finetune_step{int(state['step'])}.safetensors")
    return cascade, state, path


def snapshot(val_dir, kernel_dir, out_dir, device: torch.device, log=print) -> Path:
    """The fine-tuning phase's latest checkpoint as a model file, validated like a finished phase.

    For a run cut off (or stopped) before its fine-tuning budget ends: writes
    ``snapshot_finetune_step<k>.safetensors`` (the architecture and metadata of the folder's latest
    ``after_*`` file, the checkpoint's weights and γ(σ)), validates it on the run's own validation set
    (its ``config.json``), records it in ``val.json`` under ``finetune_step<k>`` and logs the table.
    The run itself is untouched and resumes as before.
    """
    out_dir = Path(out_dir)
    cascade, state, path = finetune_snapshot(out_dir, device)
    name = path.stem.removeprefix("snapshot_")
    cfg = load_config(NMConfig, out_dir / "config.json")
    cfg = replace(cfg, val_conditions=tuple(tuple(c) for c in cfg.val_conditions))
    val = make_validation_set(load_image_folder(val_dir), load_kernel_folder(kernel_dir), cfg)
    t = time.time()
    res = validate_noisemap(cascade, val, device)
    base = json.loads((out_dir / "val_baseline.json").read_text())
    val_path = out_dir / "val.json"
    record = json.loads(val_path.read_text()) if val_path.is_file() else {}
    record[name] = {"noisemap_per_stage": res, "shipped": base, "steps": f"{int(state['step'])}/{int(state['steps'])}",
                    "validation_seconds": round(time.time() - t, 1)}
    write_record(val_path, record)
    msg = (f"snapshot of fine-tuning step {int(state['step'])}/{int(state['steps'])} → "
           f"{path.name}; validation ({time.time() - t:.0f} s): final PSNR (dB)\n" + _table(res, base))
    lg = RunLog(out_dir / "train.log", log)
    lg(msg)
    lg.close()
    return path


# ----------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``fcnn-deblur train-noisemap``."""
    p.add_argument("--data", required=True, help="folder of sharp training images")
    p.add_argument("--val", required=True, help="folder of validation images (Set12)")
    p.add_argument("--val-kernels", required=True, help="folder of validation kernels (Levin)")
    p.add_argument("--out", required=True, help="output folder: checkpoints, train.log, val.json, final model")
    p.add_argument("--preset", choices=("cpu", "gpu", "tiny"), default="cpu",
                   help="cpu: the 2-core recipe; gpu: one H100/H200-class GPU, a few minutes per phase; tiny: a check")
    p.add_argument("--device", default="cpu")
    p.add_argument("--minutes-stage", default=None, help="comma-separated wall-clock minutes per stage, e.g. 30,25,25")
    p.add_argument("--minutes-finetune", type=float, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=None, help="DataLoader worker processes")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--patch", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--val-images", type=int, default=None)
    p.add_argument("--finetune-loss", choices=tuple(FINETUNE_LOSSES), default=None,
                   help="end-to-end loss: l1 (default) or log-mse (every sample weighted by its dB, not its error)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                   help="arithmetic of the networks in training: auto (default) = bf16 autocast with channels_last "
                        "where the device computes bf16 natively (AMX / AVX-512 BF16 CPUs, recent GPUs), else fp32")
    p.add_argument("--refills", type=int, default=None,
                   help="boundary refills per stage to train with (default 0: edge taper only; kept in the model)")
    p.add_argument("--gamma-floor", type=float, default=None,
                   help="σ_eff below which γ(σ) is held constant (default: the start model's, 0.01 for the shipped "
                        "files); trained with and kept in the model, e.g. 0.0025 = the bottom of the training range")
    p.add_argument("--tiny", action="store_true",
                   help="shrink the preset to a few steps of tiny patches (smoke test of e.g. --preset gpu on a CPU)")
    p.add_argument("--init-from", default=None,
                   help="warm start: a noise-map cascade file (e.g. a committed after_stage2.safetensors)")
    p.add_argument("--start-at", type=phase_name, default=None,
                   help="with --init-from: the first phase to train (stage1, stage2, … or finetune)")
    p.add_argument("--stages", type=int, default=None,
                   help="FCNN stages of the cascade (default 3); a cascade with fewer (--init-from, or the shipped "
                        "3-stage start) is extended by copies of its last stage, e.g. --stages 4 --start-at stage4")
    p.add_argument("--snapshot", action="store_true",
                   help="do not train: write the fine-tuning checkpoint of --out as a model file and validate it")
    p.add_argument("--max-steps", type=int, default=None, help=argparse.SUPPRESS)  # tests: stop after N steps


def config_from_args(args) -> NMConfig:
    cfg = NMConfig.preset(args.preset)
    if args.tiny:  # tiny sizes, the preset's other settings (workers, checkpoints); explicit flags still win
        t = NMConfig.preset("tiny")
        cfg = replace(cfg, **{f: getattr(t, f) for f in (
            "patch", "batch", "finetune_batch", "stage_steps", "finetune_steps", "stage_minutes", "finetune_minutes",
            "val_images", "val_kernels", "val_size")})
    upd = {}
    if args.minutes_stage is not None:
        upd["stage_minutes"] = tuple(float(v) for v in args.minutes_stage.split(","))
    if args.minutes_finetune is not None:
        upd["finetune_minutes"] = args.minutes_finetune
    for name in ("workers", "seed", "patch", "batch", "val_images", "refills", "finetune_loss", "precision",
                 "gamma_floor"):
        if getattr(args, name) is not None:
            upd[name] = getattr(args, name)
    if args.stages is not None:
        upd.update(stage_count(args.stages, cfg.stage_minutes if args.minutes_stage is None else None))
    cfg = replace(cfg, **upd)
    if len(cfg.stage_minutes) != cfg.n_stages:
        raise SystemExit(f"--minutes-stage needs {cfg.n_stages} values, got {len(cfg.stage_minutes)}")
    return cfg


def run_from_args(args, device: torch.device) -> int:
    """Train (or resume) as the parsed flags say; 3 when stopped by a signal (the checkpoint is saved)."""
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # tiny weights/activations must not fall onto the CPU's slow denormal path
    if args.snapshot:
        snapshot(args.val, args.val_kernels, args.out, device, log=lambda m: print(m, flush=True))
        return 0
    cfg = config_from_args(args)
    stop = StopControl(args.max_steps)

    def on_signal(signum, frame):
        stop.flag = True  # the current step finishes, the checkpoint is written, then the process exits

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        train_noisemap(args.data, args.val, args.val_kernels, args.out, cfg, device,
                       log=lambda m: print(m, flush=True), stop=stop, init_from=args.init_from, start_at=args.start_at)
    except Interrupted as e:
        print(f"interrupted at {e}; checkpoint saved, re-run the same command to resume", flush=True)
        return 3
    return 0
