"""Stage-wise training of the cascades (Zhang et al., CVPR 2017, Sec. 3.3), resumable on 2 CPU cores.

Recipe
------
1. Samples: random crops (flips, 90° rotations) of sharp grey images, a fresh
   random camera-shake kernel each (:mod:`napari_fcnn_deblur.data.motion_kernels`), *valid* blur (so
   the blurry patch has real, non-periodic borders) and Gaussian noise of the
   level's σ (jittered ±10 %).
2. Stage s: the frozen stages < s run through the engine's own code
   (:func:`~napari_fcnn_deblur.core.solver.prepare_problem`: replicate pad + edge taper + FFT),
   and stage s's FCNN learns, with the L1 loss of eq. 7, to map the gradients
   of that deconvolution to the sharp image's gradients (horizontal and
   transposed vertical, shared weights).  Stage s+1 starts from stage s's
   weights; the 3 % / 5 % cascades start from the 1 % one.
3. γ of every deconvolution trained end to end (eq. 8, L1 on the final image,
   FCNNs frozen), from several initialisations; the best on validation kept.

Every phase checkpoints (small ``.pt`` files loadable with
``weights_only=True``) every few minutes and resumes from where it stopped;
sample ``i`` of a phase is a pure function of (seed, phase, i), so a resumed
run sees the same data as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.cascade import Cascade
from ..core.denoiser import RECEPTIVE_RADIUS, apply_network, match_memory_format, network_inputs, plane_views
from ..core.spectral import image_gradients
from ..data.motion_kernels import embed_centered, random_motion_kernel
from ..engine.devices import check_precision
from ..io.models import load_cascade, save_cascade

#: Starting γ schedules (initial deconvolution + 3 stages): the data weight
#: falls by 1–2 orders of magnitude over the cascade, as in the paper's release.
DEFAULT_GAMMAS = {
    0.01: [250.0, 40.0, 6.0, 1.0],
    0.03: [270.0, 22.0, 10.0, 0.25],
    0.05: [150.0, 5.0, 3.0, 0.05],
}

KERNEL_BOX = 31  # every training kernel is embedded in 31×31 (sizes 11–31)



class RunLog:
    """A training run's log: ``lg(msg)`` prints ``[HH:MM:SS] <prefix><msg>`` through ``log`` and appends it to
    ``path`` (the run's ``train.log``, flushed at once so that a cut-off run keeps every line); ``close()`` ends it."""

    def __init__(self, path, log=print, prefix: str = "") -> None:
        self._file = open(path, "a")
        self._log = log
        self._prefix = prefix

    def __call__(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {self._prefix}{msg}"
        self._log(line)
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

@dataclass
class TrainConfig:
    """Sizes of one training run (all three levels)."""

    noise_levels: tuple[float, ...] = (0.01, 0.03, 0.05)
    n_stages: int = 3
    # hidden channels of every stage's network (64 = the paper's Table 1; narrow ones for plumbing tests)
    width: int = 64
    patch: int = 96
    batch: int = 6
    # optimiser steps per stage, for the first level trained and for warm-started levels
    steps_first: tuple[int, ...] = (500, 400, 250)
    steps_warm: tuple[int, ...] = (250, 200, 150)
    lr: float = 1e-3
    lr_final: float = 2e-5
    gamma_steps: int = 40
    gamma_batch: int = 6
    gamma_inits: tuple[float, ...] = (0.5, 1.0, 2.0)
    noise_jitter: float = 0.1
    seed: int = 0
    checkpoint_minutes: float = 3.0
    val_images: int = 4
    val_kernels: int = 4
    val_size: int = 192
    # wall-clock budgets (0 = none): after a short warm-up the step count is cut to fit, and the
    # learning-rate schedule follows the new count (used by the GPU preset)
    stage_seconds: float = 0.0
    gamma_seconds: float = 0.0
    # end-to-end fine-tuning of every FCNN and γ on the final image's L1 loss, after the
    # stage-wise phase (as the authors' released training code does; 0 steps = skipped)
    finetune_steps: int = 0
    finetune_batch: int = 8
    finetune_lr: float = 1e-4
    finetune_seconds: float = 0.0
    # loss on the final image in the fine-tuning phase: "l1" (eq. 8) or "l2" (the released training code's)
    finetune_loss: str = "l1"
    # γ of deconvolutions before this index stay fixed in the γ phase (an extension run keeps
    # the earlier stages' outputs exactly as they were)
    train_gammas_from: int = 0
    # a stage appended to an ``--init-from`` cascade starts from its last FCNN, and the
    # deconvolution after it from the last γ times this factor
    new_stage_gamma_factor: float = 0.3

    @classmethod
    def tiny(cls) -> "TrainConfig":
        """A few steps on tiny patches: for tests and the GPU-script smoke run."""
        return cls(
            patch=32, batch=2, steps_first=(6, 4, 3), steps_warm=(3, 2, 2), gamma_steps=3, gamma_batch=2, width=8,
            finetune_steps=3, finetune_batch=2,
            gamma_inits=(1.0, 2.0), checkpoint_minutes=0.0, val_images=1, val_kernels=1, val_size=64,
        )

    @classmethod
    def cpu_finetune(cls) -> "TrainConfig":
        """End-to-end fine-tuning only (no stage-wise steps), 25 min per level on 2 CPU cores.

        Meant for ``--init-from`` an installed set of cascades: every FCNN and γ move together on
        the final image's L1 loss, then γ are re-checked from the fine-tuned values.
        """
        return cls(
            steps_first=(0, 0, 0), steps_warm=(0, 0, 0), finetune_steps=100000, finetune_batch=4,
            finetune_seconds=1500.0, finetune_lr=5e-5, gamma_steps=20, gamma_inits=(1.0,),
        )

    @classmethod
    def cpu_extend(cls) -> "TrainConfig":
        """Append a fourth stage to installed 3-stage cascades (``--init-from``) and train only it.

        Stages 1–3 and their γ stay frozen, so running 3 iterations of the extended cascade gives
        exactly what the 3-stage one gave; the new FCNN learns (eq. 7) from the stage-3 output,
        warm-started from stage 3's weights, then only the new γ is fitted (eq. 8).
        """
        return cls(
            n_stages=4, steps_first=(0, 0, 0, 100000), steps_warm=(0, 0, 0, 100000), stage_seconds=3600.0,
            lr=5e-4, lr_final=1e-5, gamma_steps=30, gamma_inits=(1.0,), train_gammas_from=4,
        )

    @classmethod
    def gpu(cls) -> "TrainConfig":
        """Sized for an H100-class GPU: all three cascades in well under 8 minutes."""
        return cls(
            patch=128, batch=48, steps_first=(20000, 20000, 20000), steps_warm=(20000, 20000, 20000),
            gamma_steps=400, gamma_batch=32, checkpoint_minutes=1.0, val_images=6, val_kernels=4, val_size=256,
            stage_seconds=14.0, gamma_seconds=6.0,
            finetune_steps=20000, finetune_batch=16, finetune_seconds=60.0,
        )


# ----------------------------------------------------------------------------- data


def load_image_folder(folder: str | os.PathLike, min_size: int = 0) -> list[np.ndarray]:
    """All PNG/JPEG/TIFF images of a folder as grey float32 arrays in [0, 1]."""
    import imageio.v3 as iio

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
    if not files:
        raise FileNotFoundError(f"no images in {folder}")
    out = []
    for p in files:
        im = np.asarray(iio.imread(p))
        scale = float(np.iinfo(im.dtype).max) if np.issubdtype(im.dtype, np.integer) else 1.0
        im = im.astype(np.float64) / scale
        if im.ndim == 3:
            im = im[..., :3] @ np.array([0.2989, 0.5870, 0.1140])
        im = im.astype(np.float32)
        if min(im.shape) >= min_size:
            out.append(im)
    return out


def load_kernel_folder(folder: str | os.PathLike) -> list[np.ndarray]:
    """Kernels of a folder (``.npy`` or images), each normalised to sum 1."""
    import imageio.v3 as iio

    folder = Path(folder)
    out = []
    for p in sorted(folder.iterdir()):
        if p.suffix == ".npy":
            k = np.load(p).astype(np.float32)
        elif p.suffix.lower() in {".png", ".tif", ".tiff"}:
            k = np.asarray(iio.imread(p)).astype(np.float32)
        else:
            continue
        out.append(k / k.sum())
    if not out:
        raise FileNotFoundError(f"no kernels (.npy/.png/.tif) in {folder}")
    return out


def valid_blur(sharp: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Valid convolution of each ``(N, H, W)`` image with its ``(N, k, k)`` kernel → (N, H-k+1, W-k+1)."""
    n = sharp.shape[0]
    w = torch.flip(kernels, dims=(-2, -1))[:, None]  # conv2d is a correlation
    return F.conv2d(sharp[None], w, groups=n)[0]


def random_crop(rng: np.random.Generator, images: list[np.ndarray], size: int) -> np.ndarray:
    """A random ``size × size`` crop of a random image, rotated by a random multiple of 90° and maybe flipped."""
    im = images[rng.integers(len(images))]
    r0 = rng.integers(im.shape[0] - size + 1)
    c0 = rng.integers(im.shape[1] - size + 1)
    crop = im[r0 : r0 + size, c0 : c0 + size]
    crop = np.rot90(crop, rng.integers(4))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop)


class SampleSource:
    """Deterministic synthetic training samples: sample i of a phase depends only on (seed, phase, i).

    ``rng(i)`` is sample i's generator; subclasses draw other kinds of samples from it
    (they implement :meth:`raw` and :meth:`finish`, which :func:`batches` calls).
    """

    def __init__(self, images: list[np.ndarray], patch: int, noise: float, jitter: float, seed: int, phase: str):
        self.images = [im for im in images if min(im.shape) >= patch + KERNEL_BOX - 1]
        if not self.images:
            raise ValueError(f"no training image is at least {patch + KERNEL_BOX - 1} px on each side")
        self.patch, self.noise, self.jitter = patch, noise, jitter
        self.key = (seed, int.from_bytes(phase.encode()[:8].ljust(8, b"\0"), "little"))

    def rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([*self.key, i])

    def raw(self, start: int, size: int, with_noise: bool = True):
        """Crops (N, P+30, P+30), kernels (N, 31, 31), noise s.d. (N,) and, if asked, the noise (N, P, P)."""
        ks, xs, sigmas, noise = [], [], [], []
        big = self.patch + KERNEL_BOX - 1
        for i in range(start, start + size):
            rng = self.rng(i)
            xs.append(random_crop(rng, self.images, big))
            ks.append(embed_centered(random_motion_kernel(rng), KERNEL_BOX))
            sigmas.append(self.noise * (1 + self.jitter * rng.uniform(-1, 1)))
            if with_noise:
                noise.append(rng.normal(0.0, sigmas[-1], size=(self.patch, self.patch)).astype(np.float32))
        x = torch.from_numpy(np.stack(xs))
        k = torch.from_numpy(np.stack(ks))
        sig = torch.tensor(sigmas, dtype=torch.float32)
        return x, k, sig, (torch.from_numpy(np.stack(noise)) if with_noise else None), start

    def finish(self, raw, device: torch.device | None = None):
        """Blur (valid) and add noise on ``device``: blurry (N, P, P), kernels (N, 31, 31), sharp crops."""
        x, k, sig, noise, start = raw
        if device is not None:
            x, k, sig = x.to(device, non_blocking=True), k.to(device, non_blocking=True), sig.to(device)
        if noise is None:  # made on the device (GPU), seeded per batch
            gen = torch.Generator(device=x.device).manual_seed(hash((self.key, start)) & 0x7FFFFFFF)
            noise = torch.randn((x.shape[0], self.patch, self.patch), generator=gen, device=x.device) * sig[:, None, None]
        return valid_blur(x, k) + noise.to(x.device), k, x

    def batch(self, start: int, size: int, device: torch.device | None = None):
        """Samples start … start+size-1: blurry (N, P, P), kernels (N, 31, 31), sharp (N, P+30, P+30)."""
        on_cpu = device is None or device.type == "cpu"
        return self.finish(self.raw(start, size, with_noise=on_cpu), device)


class _BatchStream(torch.utils.data.IterableDataset):
    """Background-process producer of consecutive batches from a :class:`SampleSource`.

    On the CPU a worker builds whole batches; for a GPU the workers only draw
    crops and kernels, and the blur and the noise are made on the GPU.
    """

    def __init__(self, source: SampleSource, start: int, batch: int, count: int, full: bool):
        self.source, self.start, self.bs, self.count, self.full = source, start, batch, count, full

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        if info is not None:
            torch.set_num_threads(1)
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        for j in range(wid, self.count, nw):  # the loader interleaves workers in order: step j gets batch j
            raw = self.source.raw(self.start + j * self.bs, self.bs, with_noise=self.full)
            yield self.source.finish(raw) if self.full else raw


def batches(source: SampleSource, first_step: int, n_steps: int, batch: int, device: torch.device,
            workers: int | None = None):
    """Yield ``n_steps`` batches from step ``first_step`` on, made in background worker processes.

    ``workers``: number of worker processes (default 1 on the CPU, up to 8 for a GPU; capped at the
    CPU count - 1; 0 = in this process).  The batches are the same whatever the count.
    """
    if n_steps <= 0:
        return
    on_cpu = device.type == "cpu"
    if workers is None:
        workers = 1 if on_cpu else max(1, min(8, (os.cpu_count() or 2) - 2))
    ds = _BatchStream(source, first_step * batch, batch, n_steps, full=on_cpu)
    if workers <= 0:
        loader = iter(ds)
    else:
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=min(workers, max(1, (os.cpu_count() or 2) - 1)),
                                             prefetch_factor=4, pin_memory=not on_cpu)
    for item in loader:
        yield item if on_cpu else source.finish(item, device)


def sharp_gradient_targets(x_big: torch.Tensor, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the sharp image over the blurry patch's extent (backward differences)."""
    off = KERNEL_BOX // 2
    gx = x_big[:, off : off + patch, off : off + patch] - x_big[:, off : off + patch, off - 1 : off + patch - 1]
    gy = x_big[:, off : off + patch, off : off + patch] - x_big[:, off - 1 : off + patch - 1, off : off + patch]
    return gx, gy


def sharp_target(x_big: torch.Tensor, patch: int) -> torch.Tensor:
    off = KERNEL_BOX // 2
    return x_big[:, off : off + patch, off : off + patch]


# ----------------------------------------------------------------------------- phases


@dataclass(frozen=True)
class Arithmetic:
    """How a trainer runs its networks: memory format and autocast dtype (the weights, the optimiser and every
    FFT step stay fp32).  :func:`training_arithmetic` picks it."""

    channels_last: bool = False
    autocast_dtype: torch.dtype | None = None

    def describe(self) -> str:
        return "bf16 autocast, channels_last" if self.autocast_dtype is not None else "fp32, contiguous"

    def run_args(self) -> dict:
        """Keyword arguments of a cascade's ``run`` for this arithmetic."""
        return {"channels_last": self.channels_last, "autocast_dtype": self.autocast_dtype}

    def apply(self, net: torch.nn.Module, t: torch.Tensor) -> torch.Tensor:
        """``net(t)`` in this arithmetic, fp32 out (:func:`~napari_fcnn_deblur.core.denoiser.apply_network`, which
        also puts the weights in the input's memory format, in place: the optimiser keeps the same parameters)."""
        return apply_network(net, t, self.channels_last, self.autocast_dtype)


def training_arithmetic(precision: str, device: torch.device) -> Arithmetic:
    """The arithmetic for ``precision`` ("auto", "fp32" or "bf16", as inference's
    :func:`~napari_fcnn_deblur.engine.devices.check_precision`): bf16 with channels_last where the device
    computes bf16 natively, else fp32 contiguous.  Measured for one width-64 FCNN, forward + backward of 12
    gradient patches of 126² px, one thread of a CPU with AMX: fp32 contiguous 4.2 s, fp32 channels_last 2.7 s,
    bf16 contiguous 1.8 s, bf16 channels_last 0.57 s; without native bf16 autocast training is 8–30× slower, so
    "auto" keeps fp32 there, contiguous: on those CPUs (the 2-core machines of sessions 1–13) channels_last
    trained slower than contiguous, though on the AMX CPU it was faster.  "auto" follows the environment
    variable :data:`~napari_fcnn_deblur.engine.devices.PRECISION_ENV` as inference does."""
    dtype = check_precision(precision, device)
    return Arithmetic(channels_last=dtype is not None, autocast_dtype=dtype)


def cosine_lr(step: int, total: int, hi: float, lo: float) -> float:
    """Cosine decay from ``hi`` (step 0) to ``lo`` (step ``total`` and after)."""
    t = min(step / max(total, 1), 1.0)
    return lo + 0.5 * (hi - lo) * (1 + math.cos(math.pi * t))


def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Cosine decay from lr to lr_final."""
    return cosine_lr(step, total, cfg.lr, cfg.lr_final)


def stage_inputs(cascade: Cascade, stage: int, y: torch.Tensor, k: torch.Tensor, **run_args):
    """Run the frozen stages < ``stage`` (1-based) and return (problem, deconvolution before ``stage``).

    ``run_args`` go to the cascade's ``run`` (e.g. a noise-map cascade's ``noise_map``).  The frozen
    networks run channels_last (outside autograd the faster format on the CPU: 1.7× for the width-16
    volume stages, results equal to float rounding); the trained stage is not among them.
    """
    with torch.no_grad():
        out = None
        for out in cascade.run(y, k, iterations=stage - 1, channels_last=True, **run_args):
            pass
    return out.problem, out.x_padded


def stage_training_pair(problem, x_padded: torch.Tensor, x_big: torch.Tensor, patch: int,
                        conditions: tuple[torch.Tensor, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Network input ``(2N, C, P+2r, P+2r)`` and target gradients ``(2N, P, P)`` of one stage (eq. 7).

    Input: the gradients of the deconvolution ``x_padded`` (horizontal, then vertical transposed)
    over the patch plus the receptive radius r, the FCNN only needs that to predict the patch;
    ``conditions`` (maps on the padded grid, e.g. the scaled noise map) as further channels.
    """
    g, m = problem.geometry, RECEPTIVE_RADIUS
    sl = (slice(None), slice(g.top - m, g.top + patch + m), slice(g.left - m, g.left + patch + m))
    inp = torch.cat(network_inputs([t[sl] for t in image_gradients(x_padded)], [c[sl] for c in conditions]), 0)
    return inp, torch.cat(plane_views(sharp_gradient_targets(x_big, patch)), 0)


def load_checkpoint(ckpt: Path, key: str, module: torch.nn.Module, opt, device) -> dict | None:
    """Restore ``module`` (stored under ``key``) and ``opt`` from ``ckpt``; its other entries (None: no file)."""
    if not ckpt.is_file():
        return None
    state = torch.load(ckpt, map_location=device, weights_only=True)
    module.load_state_dict(state.pop(key))
    opt.load_state_dict(state.pop("opt"))
    return state


def resume(ckpt: Path, key: str, module: torch.nn.Module, opt, device, steps: int, budgeted: bool, log,
           what: str) -> tuple[int, int]:
    """Restore ``module`` (stored under ``key``) and ``opt`` from ``ckpt`` if it exists.

    Returns (step reached, step count): a time-budgeted run keeps the step count it settled on.
    """
    state = load_checkpoint(ckpt, key, module, opt, device)
    if state is None:
        return 0, steps
    step = int(state["step"])
    if budgeted and state.get("steps") is not None:
        steps = int(state["steps"])
    log(f"{what}: resumed at step {step}/{steps}")
    return step, steps


def save_checkpoint(ckpt: Path, key: str, module: torch.nn.Module, opt, step: int, steps: int, **extra) -> None:
    """Write a checkpoint atomically (a ``.tmp`` file renamed over ``ckpt``); ``extra``: more entries."""
    torch.save({key: module.state_dict(), "opt": opt.state_dict(), "step": step, "steps": steps, **extra},
               ckpt.with_suffix(".tmp"))
    os.replace(ckpt.with_suffix(".tmp"), ckpt)


def train_stage(cascade: Cascade, stage: int, source: SampleSource, steps: int, cfg: TrainConfig,
                ckpt: Path, device: torch.device, log) -> None:
    """Train stage ``stage``'s FCNN (eq. 7) for ``steps`` optimiser steps, resuming from ``ckpt``."""
    net = cascade.denoisers[stage - 1]
    # training feeds contiguous tensors: weights left channels_last by an inference run would be ~2× slower
    match_memory_format(net, torch.contiguous_format)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    step, steps = resume(ckpt, "net", net, opt, device, steps, bool(cfg.stage_seconds), log, f"stage {stage}")

    def save():
        save_checkpoint(ckpt, "net", net, opt, step, steps)

    m = RECEPTIVE_RADIUS
    last_save, t0, run_loss, seen = time.time(), time.time(), 0.0, 0
    t_start, step0 = time.time(), step
    for y, k, x in batches(source, step, steps - step, cfg.batch, device):
        if step >= steps:  # the budget cut the step count
            break
        if cfg.stage_seconds and step == step0 + 10:
            t_rate = time.time()  # the first steps pay for start-up and autotuning: not counted
        if cfg.stage_seconds and step == step0 + 30:
            rate = 20 / max(time.time() - t_rate, 1e-6)
            steps = min(steps, step + int(rate * max(cfg.stage_seconds - (time.time() - t_start), 0)))
            log(f"stage {stage}: {rate:.1f} steps/s, {cfg.stage_seconds:g} s budget → {steps} steps")
        y, k, x = y.to(device), k.to(device), x.to(device)
        problem, xp = stage_inputs(cascade, stage, y, k)
        inp, tgt = stage_training_pair(problem, xp, x, cfg.patch)
        for pg in opt.param_groups:
            pg["lr"] = _lr_at(step, steps, cfg)
        net.train()
        pred = net(inp)[:, 0, m:-m, m:-m]
        loss = (pred - tgt).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        net.eval()
        step += 1
        run_loss += loss.item()
        seen += 1
        if step % 50 == 0 or step == steps:
            rate = seen * cfg.batch / (time.time() - t0)
            log(f"stage {stage} step {step}/{steps} L1 {run_loss / seen:.5f} ({rate:.1f} samples/s)")
            run_loss, seen, t0 = 0.0, 0, time.time()
        if cfg.checkpoint_minutes and time.time() - last_save > 60 * cfg.checkpoint_minutes:
            save()
            last_save = time.time()
    save()


def finetune_end_to_end(cascade: Cascade, source: SampleSource, cfg: TrainConfig, ckpt: Path,
                        device: torch.device, log) -> None:
    """Fine-tune every FCNN and γ together: L1 between the final image and the sharp patch (eq. 8).

    Resumes from ``ckpt``; the step count can be cut to ``cfg.finetune_seconds``.
    """
    if cfg.finetune_loss not in ("l1", "l2"):
        raise ValueError(f"finetune_loss must be 'l1' or 'l2', got {cfg.finetune_loss!r}")
    steps = cfg.finetune_steps
    opt = torch.optim.Adam([
        {"params": list(cascade.denoisers.parameters()), "lr": cfg.finetune_lr},
        {"params": [cascade.log_gammas], "lr": 0.01},
    ])
    step, steps = resume(ckpt, "cascade", cascade, opt, device, steps, bool(cfg.finetune_seconds), log, "fine-tuning")

    def save():
        save_checkpoint(ckpt, "cascade", cascade, opt, step, steps)

    step0, t_start, last_save, run_loss, seen = step, time.time(), time.time(), 0.0, 0
    cascade.train()
    for y, k, x in batches(source, step, steps - step, cfg.finetune_batch, device):
        if step >= steps:
            break
        if cfg.finetune_seconds and step == step0 + 5:
            t_rate = time.time()
        if cfg.finetune_seconds and step == step0 + 15:
            rate = 10 / max(time.time() - t_rate, 1e-6)
            steps = min(steps, step + int(rate * max(cfg.finetune_seconds - (time.time() - t_start), 0)))
            log(f"fine-tuning: {rate:.1f} steps/s, {cfg.finetune_seconds:g} s budget → {steps} steps")
        for pg in opt.param_groups[:1]:
            pg["lr"] = cfg.finetune_lr * 0.5 * (1 + math.cos(math.pi * min(step / max(steps, 1), 1.0)))
        out = None
        for out in cascade.run(y, k, channels_last=False):
            pass
        err = out.image - sharp_target(x, cfg.patch)
        loss = err.square().mean() if cfg.finetune_loss == "l2" else err.abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # later stages' γ stay below earlier ones
            lg = cascade.log_gammas
            for i in range(1, len(lg)):
                lg[i] = torch.minimum(lg[i], lg[i - 1])
        step += 1
        run_loss, seen = run_loss + loss.item(), seen + 1
        if step % 50 == 0 or step == steps:
            log(f"fine-tuning step {step}/{steps} {cfg.finetune_loss.upper()} {run_loss / seen:.5f}")
            run_loss, seen = 0.0, 0
        if cfg.checkpoint_minutes and time.time() - last_save > 60 * cfg.checkpoint_minutes:
            save()
            last_save = time.time()
    cascade.eval()
    save()


def train_gammas(cascade: Cascade, source: SampleSource, cfg: TrainConfig, val, device, log) -> dict:
    """End-to-end training of log γ (eq. 8, L1 on the final image) from several initialisations."""
    for p in cascade.denoisers.parameters():
        p.requires_grad_(False)
    start = cascade.log_gammas.detach().clone()
    # the starting γ compete too: a short γ run must never leave the cascade worse than it found it
    results = [(validate(cascade, val, device)[-1], start.clone(), "start")]
    log(f"gamma start: γ = {[round(v, 4) for v in cascade.gammas.tolist()]} val PSNR {results[0][0]:.3f}")
    for f in cfg.gamma_inits:
        with torch.no_grad():
            cascade.log_gammas.copy_(start)
            cascade.log_gammas[cfg.train_gammas_from :] += math.log(f)
        opt = torch.optim.Adam([cascade.log_gammas], lr=0.05)
        t0 = time.time()
        for step, (y, k, x) in enumerate(batches(source, 0, cfg.gamma_steps, cfg.gamma_batch, device)):
            if cfg.gamma_seconds and time.time() - t0 > cfg.gamma_seconds / len(cfg.gamma_inits):
                break
            y, k, x = y.to(device), k.to(device), x.to(device)
            out = cascade(y, k)
            loss = (out - sharp_target(x, cfg.patch)).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            cascade.log_gammas.grad[: cfg.train_gammas_from] = 0  # frozen deconvolutions
            opt.step()
            with torch.no_grad():  # keep later stages' γ below earlier ones (paper, Sec. 3.3)
                lg = cascade.log_gammas
                for i in range(1, len(lg)):
                    lg[i] = torch.minimum(lg[i], lg[i - 1])
        psnr = validate(cascade, val, device)[-1]
        results.append((psnr, cascade.log_gammas.detach().clone(), f))
        log(f"gamma init ×{f}: γ = {[round(v, 4) for v in cascade.gammas.tolist()]} val PSNR {psnr:.3f}")
    best = max(results, key=lambda r: r[0])
    with torch.no_grad():
        cascade.log_gammas.copy_(best[1])
    for p in cascade.denoisers.parameters():
        p.requires_grad_(True)
    return {"gamma_init_factor": best[2], "val_psnr": best[0]}


def extended_gammas(gammas, n_stages: int, factor: float) -> list[float]:
    """The first ``n_stages + 1`` of ``gammas``, continued by × ``factor`` per missing deconvolution."""
    out = list(gammas)[: n_stages + 1]
    while len(out) < n_stages + 1:
        out.append(out[-1] * factor)
    return out


def extend_cascade(cascade: Cascade, n_stages: int, gamma_factor: float) -> Cascade:
    """A copy of ``cascade`` with stages appended up to ``n_stages``.

    Each new FCNN starts from the last existing one; each new γ is the previous γ × ``gamma_factor``
    (later deconvolutions trust the denoised gradients more). The existing stages are unchanged.
    """
    if n_stages < cascade.n_stages:
        raise ValueError(f"cannot shrink a {cascade.n_stages}-stage cascade to {n_stages}")
    gammas = extended_gammas(cascade.gammas.tolist(), n_stages, gamma_factor)
    out = Cascade(n_stages, gammas=gammas, noise_level=cascade.noise_level, metadata=dict(cascade.metadata),
                  width=cascade.width)
    out.log_gammas.data[: cascade.n_stages + 1] = cascade.log_gammas.data  # bit-exact, no exp/log round trip
    for s in range(n_stages):
        out.denoisers[s].load_state_dict(cascade.denoisers[min(s, cascade.n_stages - 1)].state_dict())
    return out.to(cascade.log_gammas.device)


# ----------------------------------------------------------------------------- validation


def make_validation_set(images: list[np.ndarray], kernels: list[np.ndarray], noise: float, cfg: TrainConfig):
    """Fixed validation cases: centre crops × kernels, valid blur, seeded noise."""
    rng = np.random.default_rng(1234)
    cases = []
    for im in images[: cfg.val_images]:
        s = min(cfg.val_size, *im.shape)
        r0, c0 = (im.shape[0] - s) // 2, (im.shape[1] - s) // 2
        crop = im[r0 : r0 + s, c0 : c0 + s]
        for k in kernels[: cfg.val_kernels]:
            kk = k
            if kk.shape[0] % 2 == 0 or kk.shape[1] % 2 == 0:
                kk = np.pad(kk, ((0, 1 - kk.shape[0] % 2), (0, 1 - kk.shape[1] % 2)))
            y = valid_blur(torch.from_numpy(crop)[None], torch.from_numpy(kk)[None])[0].numpy()
            y = y + rng.normal(0, noise, y.shape).astype(np.float32)
            oy, ox = kk.shape[0] // 2, kk.shape[1] // 2
            gt = crop[oy : oy + y.shape[0], ox : ox + y.shape[1]]
            cases.append((y.astype(np.float32), kk.astype(np.float32), gt))
    return cases


def validate(cascade: Cascade, cases, device) -> list[float]:
    """Mean PSNR (output clipped to [0, 1]) after the initial deconvolution and after each stage."""
    sums = np.zeros(cascade.n_stages + 1)
    with torch.no_grad():
        for y, k, gt in cases:
            outs = cascade.run(torch.from_numpy(y)[None].to(device), torch.from_numpy(k).to(device))
            for o in outs:
                est = o.image[0].clamp(0, 1).cpu().numpy()
                sums[o.stage] += 10 * np.log10(1.0 / np.mean((est - gt) ** 2))
    return [float(v) for v in sums / len(cases)]


# ----------------------------------------------------------------------------- driver


def train_all(train_dir, val_dir, kernel_dir, out_dir, cfg: TrainConfig, device: torch.device,
              models_dir=None, log=print, init_dir=None) -> dict:
    """Train every level of ``cfg`` into ``out_dir`` (checkpoints, logs) and write final models.

    Final cascades go to ``out_dir/fcnn_noise0.0X.safetensors`` and, when
    ``models_dir`` is given, are copied there (e.g. the package's ``models/``)
    — unless a model already there scores higher on the validation set.
    Re-running the same command resumes after an interruption.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda":  # TF32 convolutions/matmuls and autotuned kernels: fp32 accuracy is not needed here
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    images = load_image_folder(train_dir)
    val_images = load_image_folder(val_dir)
    val_kernels = load_kernel_folder(kernel_dir)
    (out_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    report: dict = {}
    prev_level_cascade: Cascade | None = None
    for li, level in enumerate(cfg.noise_levels):
        lvl_dir = out_dir / f"noise{level:.2f}"
        lvl_dir.mkdir(exist_ok=True)
        final = lvl_dir / "cascade.safetensors"
        lg = RunLog(lvl_dir / "train.log", log, prefix=f"σ={level:g} ")

        val = make_validation_set(val_images, val_kernels, level, cfg)
        if final.is_file():
            cascade = load_cascade(final).to(device)
            lg("already trained, loaded")
            per_stage = validate(cascade, val, device)
        else:
            gam = extended_gammas(DEFAULT_GAMMAS.get(level, DEFAULT_GAMMAS[0.01]), cfg.n_stages,
                                  cfg.new_stage_gamma_factor)
            cascade = Cascade(cfg.n_stages, gammas=gam, noise_level=level, width=cfg.width).to(device)
            init = Path(init_dir) / f"fcnn_noise{level:.2f}.safetensors" if init_dir else None
            if init is not None and init.is_file():  # continue from an earlier run's cascade
                cascade = load_cascade(init).to(device)
                cascade.noise_level = level
                lg(f"initialised from {init}")
                if cascade.n_stages < cfg.n_stages:
                    cascade = extend_cascade(cascade, cfg.n_stages, cfg.new_stage_gamma_factor)
                    lg(f"extended to {cfg.n_stages} stages; γ {[round(v, 4) for v in cascade.gammas.tolist()]}")
            steps = cfg.steps_first if prev_level_cascade is None else cfg.steps_warm
            t_level = time.time()
            for s in range(1, cfg.n_stages + 1):
                ckpt = lvl_dir / f"stage{s}.pt"
                if not ckpt.is_file() and not (init is not None and init.is_file()):
                    # warm start: same stage of the previous level, else the previous stage
                    src = prev_level_cascade.denoisers[s - 1] if prev_level_cascade is not None else (
                        cascade.denoisers[s - 2] if s > 1 else None)
                    if src is not None:
                        cascade.denoisers[s - 1].load_state_dict(src.state_dict())
                if steps[s - 1] == 0:  # e.g. the fine-tuning-only preset: nothing to train or validate here
                    continue
                source = SampleSource(images, cfg.patch, level, cfg.noise_jitter, cfg.seed, f"L{level}S{s}")
                train_stage(cascade, s, source, steps[s - 1], cfg, ckpt, device, lg)
                lg(f"stage {s} done; val PSNR per stage {[round(v, 3) for v in validate(cascade, val, device)]}")
            if cfg.finetune_steps:
                fsource = SampleSource(images, cfg.patch, level, cfg.noise_jitter, cfg.seed, f"L{level}F")
                finetune_end_to_end(cascade, fsource, cfg, lvl_dir / "finetune.pt", device, lg)
                lg(f"fine-tuned; val PSNR per stage {[round(v, 3) for v in validate(cascade, val, device)]}")
            gsource = SampleSource(images, cfg.patch, level, cfg.noise_jitter, cfg.seed, f"L{level}G")
            ginfo = train_gammas(cascade, gsource, cfg, val, device, lg)
            per_stage = validate(cascade, val, device)
            cascade.metadata.update(
                trained_by="napari-fcnn-deblur train",
                train_data=str(Path(train_dir).name),
                device=str(device),
                train_seconds=f"{time.time() - t_level:.0f}",
                val_psnr_per_stage=json.dumps([round(v, 3) for v in per_stage]),
                gamma_init_factor=str(ginfo["gamma_init_factor"]),
                config=json.dumps(asdict(cfg)),
            )
            save_cascade(cascade.cpu(), final)
            cascade.to(device)
            lg(f"final γ {[round(v, 4) for v in cascade.gammas.tolist()]}; val PSNR per stage {[round(v, 3) for v in per_stage]}")
        report[level] = {"val_psnr_per_stage": per_stage, "gammas": cascade.gammas.tolist()}
        if models_dir is not None:
            target = Path(models_dir) / f"fcnn_noise{level:.2f}.safetensors"
            _install_if_better(final, per_stage[-1], target, val, device, lg)
        prev_level_cascade = cascade
        lg.close()
    (out_dir / "report.json").write_text(json.dumps({str(k): v for k, v in report.items()}, indent=1))
    return report


def _install_if_better(candidate: Path, new: float, target: Path, val, device, log) -> None:
    """Copy ``candidate`` (final-stage validation PSNR ``new``) over ``target`` only if it validates higher."""
    import shutil

    if target.is_file():
        old = validate(load_cascade(target).to(device), val, device)[-1]
        if old >= new:
            log(f"kept installed {target.name}: {old:.3f} dB >= new {new:.3f} dB")
            return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(candidate, target)
    log(f"installed {target.name} (val PSNR {new:.3f} dB)")
