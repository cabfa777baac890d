"""Training of the volumetric cascade (:mod:`napari_fcnn_deblur.core.volumetric`) on synthetic z-stacks, resumable.

Recipe
------
1. Samples (each depends only on (seed, phase, i), so a resumed run sees the same data): a random
   training phantom (:func:`~napari_fcnn_deblur.data.phantoms.random_phantom_3d`: filaments, puncta,
   membranes, dense texture; the benchmark's held-out structures and seeds are never drawn), random
   flips and a Y/X transpose; a random PSF, half widefield (Born–Wolf, NA 0.7–1.45, emission
   0.45–0.68 µm, water/glycerol/oil immersion) and half confocal (excitation 0.05–0.1 µm below
   emission), lateral pixels 0.06–0.2 µm and z steps 0.15–0.6 µm, cut to the :data:`PSF_BOX`
   centred box and renormalised; *valid* 3D blur; camera noise: Poisson with p photons at intensity
   1 (p log-uniform in [20, 1000]) plus Gaussian read noise (1–4 e⁻).  Each volume is then put on
   the engine's [0, 1] scale by the engine's own rule (its 0.05 / 99.95 percentiles, as
   ``noise_level="auto"`` runs see camera data), the sharp volume and the noise s.d. map with it: the
   true noise level function σ²(x) = a·x + b evaluated as the engine evaluates it at inference (on the
   blurry volume smoothed plane by plane), times 1 ± 10 % so the networks tolerate an estimate.  Until
   session 12 the map was the s.d. of the *noiseless* blur, a clean copy of the signal that no run
   has; the networks leaned on it (benchmark volumes at 30 photons: 25.5 / 28.7 dB with it, 20.4 /
   24.3 dB with the map a run computes).
2. Warm start from the 2D noise-map cascade (both networks of every stage copies of the 2D stage
   network, γ(σ) copied).  With another width (``--width``, e.g. a narrower, faster cascade) the
   networks start new (seeded) and only γ(σ) is copied.
3. Stage s = 1 … n: the frozen stages < s run through ``Cascade.run`` on the volume; stage s's
   lateral network learns (eq. 7, L1) to map the x and y gradients of that deconvolution (+ the
   noise map) on XY planes to the sharp volume's, the axial one the z gradient on YZ slices.
   Adam 5e-4 → 1e-5 (cosine).
4. End-to-end fine-tuning of every network and the γ(σ) coefficients on the L1 loss of the final
   volume (Adam 3e-5 cosine for the networks, 0.01 for the coefficients).

Phases have wall-clock budgets (step counts fixed from the measured rate and stored in the
checkpoints ``stage{s}.pt`` / ``finetune.pt``, written atomically every few minutes).  Re-running the
same command resumes.  Validation after each phase (fixed validation volumes: seeds of their own,
widefield and confocal, 30 / 100 / 300 photons; PSNR of every stage against the sharp volume, and
the blurry input) goes to ``val.json``; the log to ``train.log``; models to
``after_<phase>.safetensors`` and ``volume_cascade.safetensors``.

Command line: ``python -m napari_fcnn_deblur.training.volumetric --out DIR --init-from 2D.safetensors
[--minutes-stage 20,20,20 --minutes-finetune 30] [--device cuda --preset gpu]``
(``scripts/train_volume.sh``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy.signal import fftconvolve

from ..core.cascade import MARGIN_KEY, check_network_margin
from ..core.conditioned import NOISE_MAP_SCALE, NoiseMapCascade
from ..core.denoiser import (
    RECEPTIVE_RADIUS,
    as_plane_batch,
    direction_networks,
    direction_view,
    network_input,
)
from ..core.spectral import image_gradients
from ..core.volumetric import VolumeCascade
from ..data.phantoms import BENCHMARK_SEED_START, random_phantom_3d
from ..data.psf3d import confocal_psf_3d, widefield_psf_3d
from ..engine.noise import NoiseLevel
from ..io.models import load_cascade, save_cascade
from .noisemap import (
    FINETUNE_LOSSES,
    Interrupted,
    Phase,
    StopControl,
    finetune_snapshot,
    load_config,
    phase_name,
    run_phase,
    stage_count,
    start_index,
    write_record,
)
from .noisemap import finetune as finetune_cascade
from .stagewise import Arithmetic, RunLog, cosine_lr, stage_inputs, training_arithmetic

#: Every training PSF is cut to this centred (Z, Y, X) box (odd) and renormalised.
PSF_BOX: tuple[int, int, int] = (15, 21, 21)
#: Validation volumes use seeds from here (apart from training seeds < VAL_SEED_START and from the
#: benchmark's ≥ BENCHMARK_SEED_START).
VAL_SEED_START = 900_000
#: Percentiles of the engine's intensity rule (:mod:`napari_fcnn_deblur.engine.intensity`).
LOW_PERCENTILE, HIGH_PERCENTILE = 0.05, 99.95


@dataclass(frozen=True)
class VolConfig:
    """Settings of a volumetric training run (see the module docstring)."""

    n_stages: int = 3
    width: int = 64
    patch: tuple[int, int, int] = (12, 40, 40)  # blurry (Z, Y, X) of a training sample
    batch: int = 2
    finetune_batch: int = 1
    lr: float = 5e-4
    lr_final: float = 1e-5
    finetune_lr: float = 3e-5
    finetune_loss: str = "l1"  # or "log-mse" (training.noisemap.FINETUNE_LOSSES)
    precision: str = "auto"  # arithmetic of the networks in training (stagewise.training_arithmetic)
    coeff_lr: float = 0.01
    stage_minutes: tuple[float, ...] = (20.0, 20.0, 20.0)
    finetune_minutes: float = 30.0
    stage_steps: int = 100_000
    finetune_steps: int = 100_000
    seed: int = 0
    checkpoint_minutes: float = 3.0
    workers: int = 1
    log_every: int = 10
    photons_range: tuple[float, float] = (20.0, 1000.0)
    read_range: tuple[float, float] = (1.0, 4.0)
    map_jitter: float = 0.1
    p_confocal: float = 0.5
    val_volumes: int = 2  # per (PSF type, photon level)
    val_shape: tuple[int, int, int] = (20, 56, 56)
    val_photons: tuple[float, ...] = (30.0, 100.0, 300.0)
    network_margin: int | None = None  # None: keep the start's (Cascade.network_margin); else set it

    @classmethod
    def preset(cls, name: str) -> "VolConfig":
        if name == "gpu":  # one H100/H200-class GPU: bigger volumes and batches, a few minutes per phase
            return cls(patch=(24, 96, 96), batch=8, finetune_batch=4, stage_minutes=(3.0, 3.0, 3.0),
                       finetune_minutes=4.0, workers=8, checkpoint_minutes=1.0, log_every=25, val_volumes=4)
        if name == "tiny":
            return cls(width=8, patch=(4, 12, 12), batch=1, stage_steps=2, finetune_steps=2, stage_minutes=(0, 0, 0),
                       finetune_minutes=0, val_volumes=1, val_shape=(6, 16, 16), val_photons=(100.0,), log_every=1,
                       precision="fp32")  # the same on every machine
        return cls()


def random_psf_3d(rng: np.random.Generator, p_confocal: float = 0.5, box: tuple[int, int, int] = PSF_BOX) -> np.ndarray:
    """A random widefield or confocal PSF (module docstring), cut to ``box`` and normalised, float32."""
    n = float(rng.choice([1.333, 1.45, 1.515]))
    na = float(rng.uniform(0.7, min(1.45, 0.95 * n)))
    em = float(rng.uniform(0.45, 0.68))
    dxy = float(rng.uniform(0.06, 0.2))
    dz = float(rng.uniform(max(0.15, dxy), 0.6))
    spacing = (dz, dxy, dxy)
    if rng.uniform() < p_confocal:
        k = confocal_psf_3d(box, spacing, na, em - float(rng.uniform(0.05, 0.1)), em, n,
                            pinhole=float(rng.uniform(0.0, 1.0)))
    else:
        k = widefield_psf_3d(box, spacing, na, em, n)
    k = np.clip(np.asarray(k, np.float64), 0, None)
    return (k / k.sum()).astype(np.float32)


def engine_scale(data: np.ndarray) -> tuple[float, float]:
    """(offset, scale) of the engine's intensity rule for camera data (robust percentiles)."""
    lo, hi = np.percentile(data, [LOW_PERCENTILE, HIGH_PERCENTILE])
    return float(lo), float(max(hi - lo, 1e-6))


def camera_volume(rng: np.random.Generator, sharp_big: np.ndarray, psf: np.ndarray, photons: float, read: float,
                  jitter: float = 0.0):
    """Blur (valid), Poisson + read noise, then the engine's [0, 1] scale.

    Returns blurry (Z, Y, X), its noise s.d. map, and the sharp volume aligned with it, all on that scale.
    The map is what a run with the true noise level function gets: σ²(x) = a·x + b on that scale
    (a = 1 / scale, b = (offset + read²) / scale²) at the blurry volume smoothed as the engine smooths it
    (:meth:`~napari_fcnn_deblur.engine.noise.NoiseLevel.sd_planes`), times 1 ± ``jitter`` — never the s.d.
    of the noiseless blur, which is the sharp signal blurred and which no run has.
    """
    blurred = np.clip(fftconvolve(sharp_big.astype(np.float64), psf.astype(np.float64), mode="valid"), 0, None)
    electrons = photons * blurred
    data = rng.poisson(electrons) + rng.normal(0.0, read, blurred.shape)
    lo, scale = engine_scale(data)
    o = [k // 2 for k in psf.shape]
    sharp = sharp_big[tuple(slice(c, c + n) for c, n in zip(o, blurred.shape))]
    y = ((data - lo) / scale).astype(np.float32)
    level = NoiseLevel.poisson_gaussian(1.0 / scale, (lo + read**2) / scale**2)
    sd = level.sd_planes(y) * (1.0 + jitter * rng.uniform(-1.0, 1.0))
    x = (photons * sharp - lo) / scale
    return y.astype(np.float32), sd.astype(np.float32), x.astype(np.float32)


class VolumeSource:
    """Deterministic volume samples: sample i of a phase depends only on (seed, phase, i).

    A batch is (blurry (N, Z, Y, X), s.d. map (N, Z, Y, X), PSFs (N, *PSF_BOX), sharp (N, Z, Y, X)),
    all on the engine's [0, 1] scale (the interface :func:`~.stagewise.batches` needs: ``raw``, ``finish``).
    """

    def __init__(self, cfg: VolConfig, phase: str):
        self.cfg, self.patch = cfg, cfg.patch
        self.key = (cfg.seed, int.from_bytes(phase.encode()[:8].ljust(8, b"\0"), "little"))

    def rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([*self.key, i])

    def sample(self, i: int):
        rng = self.rng(i)
        psf = random_psf_3d(rng, self.cfg.p_confocal)
        big = tuple(p + k - 1 for p, k in zip(self.patch, psf.shape))
        phantom = random_phantom_3d(big, rng)
        if rng.uniform() < 0.5:
            phantom = phantom[:, ::-1]
        if rng.uniform() < 0.5:
            phantom = phantom[:, :, ::-1]
        if rng.uniform() < 0.5 and big[1] == big[2]:
            phantom, psf = phantom.transpose(0, 2, 1), psf.transpose(0, 2, 1)
        lo, hi = np.log(self.cfg.photons_range)
        photons = float(np.exp(rng.uniform(lo, hi)))
        read = float(rng.uniform(*self.cfg.read_range))
        y, sd, x = camera_volume(rng, np.ascontiguousarray(phantom), np.ascontiguousarray(psf), photons, read,
                                 self.cfg.map_jitter)
        return y, sd, np.ascontiguousarray(psf), x

    def raw(self, start: int, size: int, with_noise: bool = True):
        items = [self.sample(i) for i in range(start, start + size)]
        return tuple(torch.from_numpy(np.stack(t)) for t in zip(*items))

    def finish(self, raw, device: torch.device | None = None):
        return raw if device is None else tuple(t.to(device) for t in raw)


def _direction_crops(geometry, m: int) -> list[tuple[slice, ...]]:
    """Crops of the padded grid (N, Zp, Yp, Xp) each direction's network needs to predict the image
    region: the region plus the receptive radius ``m`` in the two axes of its planes."""
    reg = [slice(b, b + n) for b, n in zip(geometry.before, geometry.image_shape)]
    wide = [slice(r.start - m, r.stop + m) for r in reg]
    return [
        (slice(None), reg[0], wide[1], wide[2]),  # x: XY planes
        (slice(None), reg[0], wide[1], wide[2]),  # y: XY planes
        (slice(None), wide[0], wide[1], reg[2]),  # z: YZ slices
    ]


def stage_loss(cascade: VolumeCascade, stage: int, batch, arith: Arithmetic = Arithmetic()) -> torch.Tensor:
    """Eq. 7 for a volume stage: L1 between the denoised and the sharp gradients over the image region
    (the networks in ``arith``)."""
    y, sd, k, x = batch
    problem, xp = stage_inputs(cascade, stage, y, k, noise_map=sd)
    g, m = problem.geometry, RECEPTIVE_RADIUS
    cond = NOISE_MAP_SCALE * g.pad(sd)
    grads = image_gradients(xp, 3)
    sharp_grads = image_gradients(g.pad(x), 3)
    reg = (slice(None),) + tuple(slice(b, b + n) for b, n in zip(g.before, g.image_shape))
    nets = direction_networks(cascade.denoisers[stage - 1], 3)
    total = 0.0
    for d, crop in enumerate(_direction_crops(g, m)):
        view = network_input(direction_view(grads[d][crop], d), [direction_view(cond[crop], d)])
        shape = (view.shape[0],) + tuple(view.shape[2:])
        out = direction_view(arith.apply(nets[d], as_plane_batch(view))[:, 0].reshape(shape), d)  # (N, Z, Y, X)
        inner = tuple(slice(None) if (s.start == r.start and s.stop == r.stop) else slice(m, -m)
                      for s, r in zip(crop[1:], reg[1:]))
        total = total + (out[(slice(None),) + inner] - sharp_grads[d][reg]).abs().mean()
    return total / 3


def train_stage(cascade: VolumeCascade, stage: int, source: VolumeSource, cfg: VolConfig, ckpt: Path, device, log,
                stop: StopControl) -> None:
    pair = cascade.denoisers[stage - 1]
    arith = training_arithmetic(cfg.precision, device)
    opt = torch.optim.Adam(pair.parameters(), lr=cfg.lr)

    def lr(step, steps):
        for pg in opt.param_groups:
            pg["lr"] = cosine_lr(step, steps, cfg.lr, cfg.lr_final)

    run_phase(Phase(f"volume stage {stage}", pair, "net", opt, lambda b: stage_loss(cascade, stage, b, arith), lr,
                    cfg.batch, cfg.stage_steps, 60.0 * cfg.stage_minutes[stage - 1], warm=2, span=5),
              source, cfg, ckpt, device, log, stop)


def finetune(cascade: VolumeCascade, source: VolumeSource, cfg: VolConfig, ckpt: Path, device, log,
             stop: StopControl) -> None:
    """End-to-end fine-tuning (the noise-map cascade's, :func:`.noisemap.finetune`) on aligned volumes."""
    finetune_cascade(cascade, source, cfg, ckpt, device, log, stop, target=lambda x: x,
                     name="volume fine-tuning", warm=2, span=4)


# ----------------------------------------------------------------------------- validation


def validation_set(cfg: VolConfig) -> list[dict]:
    """Fixed validation volumes: per PSF type and photon level, ``cfg.val_volumes`` phantoms."""
    out = []
    i = 0
    for kind in ("widefield", "confocal"):
        for photons in cfg.val_photons:
            for _ in range(cfg.val_volumes):
                rng = np.random.default_rng(VAL_SEED_START + i)
                i += 1
                psf = random_psf_3d(rng, 1.0 if kind == "confocal" else 0.0)
                big = tuple(p + k - 1 for p, k in zip(cfg.val_shape, psf.shape))
                seed = VAL_SEED_START + 1000 + i
                assert seed < BENCHMARK_SEED_START
                phantom = random_phantom_3d(big, np.random.default_rng(seed))
                y, sd, x = camera_volume(rng, phantom, psf, photons, 2.0)
                out.append({"name": f"{kind} {photons:g} ph", "y": y, "sd": sd, "psf": psf, "x": x})
    return out


def _psnr(est: np.ndarray, gt: np.ndarray) -> float:
    peak = float(gt.max() - gt.min()) or 1.0
    return float(10 * np.log10(peak**2 / np.mean((est - gt) ** 2)))


def validation_table(res: dict) -> str:
    """A :func:`validate` record as the log shows it: a header, then one line of PSNRs per condition."""
    return "PSNR blurry, stage 0…n\n" + "\n".join(
        f"  {n:>18}: " + " ".join(f"{v:6.2f}" for v in r) for n, r in res.items())


def validate(cascade: VolumeCascade, val: list[dict], device) -> dict:
    """Mean PSNR (dB, peak = the sharp volume's range) of the blurry input and of every stage, per condition."""
    per: dict[str, list[list[float]]] = {}
    with torch.no_grad():
        for v in val:
            y = torch.from_numpy(v["y"])[None].to(device)
            sd = torch.from_numpy(v["sd"])[None].to(device)
            k = torch.from_numpy(v["psf"]).to(device)
            row = [_psnr(v["y"], v["x"])]
            for st in cascade.run(y, k, sd):
                row.append(_psnr(st.image[0].cpu().numpy(), v["x"]))
            per.setdefault(v["name"], []).append(row)
    return {name: [round(float(np.mean(c)), 3) for c in zip(*rows)] for name, rows in per.items()}


# ----------------------------------------------------------------------------- driver

def train_volume(out_dir, cfg: VolConfig, device: torch.device, init_from, log=print, stop: StopControl | None = None,
                 start_at: str | None = None) -> dict:
    """Run (or resume) every phase into ``out_dir``; returns the validation record (also in val.json).

    ``init_from``: a 2D noise-map cascade (warm start of both networks of every stage) or a volume
    cascade (continue: e.g. an earlier run's committed ``after_stage2.safetensors`` with
    ``start_at="stage3"``).
    """
    first = start_index(start_at, cfg.n_stages)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stop = stop or StopControl()
    lg = RunLog(out_dir / "train.log", log)

    try:
        cfg_path = out_dir / "config.json"
        if not cfg_path.is_file():
            cfg_path.write_text(json.dumps(asdict(cfg), indent=1))
        lg(f"start: device {device}, {torch.get_num_threads()} threads, pid {os.getpid()}, networks in "
           f"{training_arithmetic(cfg.precision, device).describe()} (precision {cfg.precision})")
        init = load_cascade(init_from)
        if isinstance(init, VolumeCascade):
            cascade = init
        elif isinstance(init, NoiseMapCascade):
            cascade = VolumeCascade.from_planar(init, {"initialised_from": Path(init_from).name})
        else:
            raise ValueError(f"{init_from} is neither a 2D noise-map cascade nor a volume cascade")
        if cascade.width != cfg.width and first == 0:
            # a narrower (or wider) cascade: γ(σ) from the start, new networks trained from stage 1
            cascade = VolumeCascade.fresh_networks(cascade, cfg.width, seed=cfg.seed)
        if cascade.n_stages < cfg.n_stages:  # a deeper cascade: new stages start as copies of the last one
            lg(f"{init_from}: {cascade.n_stages} stages → {cfg.n_stages} (new stages start as copies of the last)")
            cascade = cascade.extended(cfg.n_stages)
        if cascade.n_stages != cfg.n_stages or cascade.width != cfg.width:
            raise ValueError(f"{init_from}: {cascade.n_stages} stages of width {cascade.width}, the config wants "
                             f"{cfg.n_stages} of width {cfg.width}")
        if cfg.network_margin is not None:  # the priors act on the volume ± the margin, in training as at inference
            cascade.metadata[MARGIN_KEY] = str(check_network_margin(cfg.network_margin))
        lg(f"network margin: {cascade.network_margin if cascade.network_margin is not None else 'whole grid'}")
        cascade = cascade.to(device)
        val = validation_set(cfg)
        val_path = out_dir / "val.json"
        record = json.loads(val_path.read_text()) if val_path.is_file() else {}

        def checkpoint_phase(phase: str):
            save_cascade(cascade, out_dir / f"after_{phase}.safetensors")
            if phase not in record:
                t = time.time()
                record[phase] = validate(cascade, val, device)
                write_record(val_path, record)
                lg(f"validation after {phase} ({time.time() - t:.0f} s): {validation_table(record[phase])}")

        checkpoint_phase("init" if first == 0 else f"init_{Path(init_from).stem}")
        for s in range(first + 1, cfg.n_stages + 1):
            train_stage(cascade, s, VolumeSource(cfg, f"VOL{s}"), cfg, out_dir / f"stage{s}.pt", device, lg, stop)
            checkpoint_phase(f"stage{s}")
        if cfg.finetune_minutes or cfg.finetune_steps:
            finetune(cascade, VolumeSource(cfg, "VOLF"), cfg, out_dir / "finetune.pt", device, lg, stop)
            checkpoint_phase("finetune")
        cascade.metadata.update(trained_by="napari_fcnn_deblur.training.volumetric", device=str(device),
                                config=json.dumps(asdict(cfg)))
        final = save_cascade(cascade, out_dir / "volume_cascade.safetensors")
        lg(f"done: {final}")
        return record
    finally:
        lg.close()


def snapshot(out_dir, device: torch.device, log=print) -> Path:
    """A run folder's fine-tuning checkpoint as a model file, validated like a finished phase (the run's own
    validation volumes, from its ``config.json``), recorded in ``val.json`` under ``finetune_step<k>`` and
    logged; the run itself resumes as before (:func:`~.noisemap.finetune_snapshot`)."""
    out_dir = Path(out_dir)
    cascade, state, path = finetune_snapshot(out_dir, device)
    name = path.stem.removeprefix("snapshot_")
    cfg = load_config(VolConfig, out_dir / "config.json")
    t = time.time()
    res = validate(cascade, validation_set(cfg), device)
    val_path = out_dir / "val.json"
    record = json.loads(val_path.read_text()) if val_path.is_file() else {}
    record[name] = res
    write_record(val_path, record)
    msg = (f"snapshot of fine-tuning step {int(state['step'])}/{int(state['steps'])} → "
           f"{path.name}; validation ({time.time() - t:.0f} s): {validation_table(res)}")
    lg = RunLog(out_dir / "train.log", log)
    lg(msg)
    lg.close()
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="train the volumetric cascade on synthetic z-stacks (resumable)")
    p.add_argument("--out", required=True)
    p.add_argument("--init-from", default=None, help="2D noise-map cascade (warm start) or a volume cascade")
    p.add_argument("--start-at", type=phase_name, default=None, help="the first phase to train (stage1, … or finetune)")
    p.add_argument("--preset", choices=("cpu", "gpu", "tiny"), default="cpu")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--minutes-stage", default=None)
    p.add_argument("--minutes-finetune", type=float, default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--stages", type=int, default=None,
                   help="stages of the cascade (default 3); a volume cascade with fewer (--init-from) is extended "
                        "by copies of its last stage, e.g. --stages 4 --start-at stage4")
    p.add_argument("--width", type=int, default=None,
                   help="hidden channels of the networks; another width than --init-from's starts new networks "
                        "(γ(σ) kept) and trains them from stage 1")
    p.add_argument("--network-margin", type=int, default=None,
                   help="the stages' priors act on the volume ± this many voxels, zero target gradients in the "
                        "rest of the padded frame (default: keep --init-from's; the networks then skip the frame)")
    p.add_argument("--finetune-loss", choices=tuple(FINETUNE_LOSSES), default=None,
                   help="end-to-end loss: l1 (default) or log-mse (every volume weighted by its dB, not its error)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                   help="arithmetic of the networks in training: auto (default) = bf16 autocast with channels_last "
                        "where the device computes bf16 natively, else fp32")
    p.add_argument("--snapshot", action="store_true",
                   help="write and validate the fine-tuning checkpoint of --out as a model file, then exit "
                        "(the run resumes as before)")
    p.add_argument("--max-steps", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    if args.snapshot:
        snapshot(args.out, torch.device(args.device), log=lambda m: print(m, flush=True))
        return 0
    if args.init_from is None:
        p.error("--init-from is required (except with --snapshot)")
    cfg = VolConfig.preset(args.preset)
    upd = {}
    if args.minutes_stage is not None:
        upd["stage_minutes"] = tuple(float(v) for v in args.minutes_stage.split(","))
    if args.minutes_finetune is not None:
        upd["finetune_minutes"] = args.minutes_finetune
    if args.workers is not None:
        upd["workers"] = args.workers
    if args.width is not None:
        upd["width"] = args.width
    if args.network_margin is not None:
        upd["network_margin"] = check_network_margin(args.network_margin)
    if args.finetune_loss is not None:
        upd["finetune_loss"] = args.finetune_loss
    if args.precision is not None:
        upd["precision"] = args.precision
    if args.stages is not None:
        upd.update(stage_count(args.stages, cfg.stage_minutes if args.minutes_stage is None else None))
    cfg = replace(cfg, **upd)
    if len(cfg.stage_minutes) != cfg.n_stages:
        p.error(f"--minutes-stage needs {cfg.n_stages} values, got {len(cfg.stage_minutes)}")
    stop = StopControl(args.max_steps)

    def on_signal(signum, frame):
        stop.flag = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        train_volume(args.out, cfg, torch.device(args.device), args.init_from, lambda m: print(m, flush=True), stop,
                     args.start_at)
    except Interrupted as e:
        print(f"interrupted at {e}; checkpoint saved, re-run the same command to resume", flush=True)
        return 3
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
