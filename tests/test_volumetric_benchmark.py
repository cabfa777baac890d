"""benchmarks/volumetric.py: the cascades' rows are cached under their model files' digests (a replaced or
candidate model is measured again, Richardson–Lucy is not), and the report shows the rows of the models it names."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import load_benchmark
from napari_fcnn_deblur.core.volumetric import VolumeCascade
from napari_fcnn_deblur.io.models import load_cascade, save_cascade, volume_model_path

ROOT = Path(__file__).resolve().parents[1]


def _load():
    return load_benchmark("volumetric")


@pytest.mark.slow
def test_model_rows_are_keyed_by_the_model_file(tmp_path, monkeypatch):
    vb = _load()
    monkeypatch.setattr(vb, "SHAPE", (6, 20, 20))
    monkeypatch.setattr(vb, "PHOTONS", (100.0,))
    monkeypatch.setattr(vb, "RL_ITERATIONS", (1, 2))
    sweeps = []
    real_sweep = vb.rl_sweep
    monkeypatch.setattr(vb, "rl_sweep", lambda *a: sweeps.append(1) or real_sweep(*a))
    shipped = load_cascade(volume_model_path())
    cands = []
    for seed in (0, 1):
        narrow = VolumeCascade.fresh_networks(shipped, 4, seed=seed)
        cands.append(save_cascade(narrow, tmp_path / f"cand{seed}.safetensors"))
    cache = tmp_path / "vol.json"
    c = vb.run(cache, 1, log=lambda m: None, volume_model=cands[0])
    assert len(sweeps) == 2  # widefield and confocal
    key0, planar = vb.model_keys(cands[0])
    assert key0.startswith("cand0.safetensors@") and planar.startswith("noisemap_cascade.safetensors@")
    rec = c["widefield|100|0"]
    assert set(rec["ours"]) == {key0} and set(rec["2d"]) == {planar}
    c = vb.run(cache, 1, log=lambda m: None, volume_model=cands[1])
    assert len(sweeps) == 2  # RL is model-free: reused
    key1 = vb.model_keys(cands[1])[0]
    assert set(c["widefield|100|0"]["ours"]) == {key0, key1}
    assert c["widefield|100|0"]["ours"][key0] != c["widefield|100|0"]["ours"][key1]
    text = vb.report(c, 1, cands[1])
    assert key1 in text and "| widefield | 100 |" in text and "| confocal | 100 |" in text
    assert "(balance " in text  # the 3D Wiener column, its oracle balance
    # a model without rows gives no rows (never another model's numbers)
    other = save_cascade(VolumeCascade.fresh_networks(shipped, 4, seed=2), tmp_path / "cand2.safetensors")
    assert "| widefield | 100 |" not in vb.report(c, 1, other)


@pytest.mark.slow
def test_network_margin_benchmark_measures_each_margin_side_by_side(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import network_margin as nm

    monkeypatch.setattr(nm.vb, "SHAPE", (6, 20, 20))
    monkeypatch.setattr(nm.vb, "PHOTONS", (100.0,))
    doc = tmp_path / "bench.md"
    doc.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    assert nm.main(["--volumes", "1", "--margins", "none,4", "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert "## Other\n\nkept" in text and "## Network margin" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| whole grid") or ln.startswith("| ± 4")]
    assert len(rows) == 2 and "+0.000" in rows[0]
    delta = float(rows[1].split("|")[3])
    assert abs(delta) < 1.0  # measured, per volume, against the whole grid


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_unpadded_rl_iterates_are_skimage_richardson_lucy_step_for_step(dtype):
    """The speed benchmark picks skimage's oracle count with ``rl_iterates(pad=False)``: it must be skimage's function."""
    from itertools import islice

    import numpy as np
    from skimage.restoration import richardson_lucy

    vb = _load()
    psf = vb.psfs()["confocal"]
    stack, _ = vb.case(3, "confocal", 100.0, psf, (16, 30, 30))
    y = np.clip((stack.astype(np.float64) - vb.OFFSET) / 100.0, 0, None).astype(dtype)
    steps = vb.rl_iterates(stack, psf, 100.0, pad=False, dtype=np.dtype(dtype))
    ours = [x.copy() for _, x in islice(steps, 3)]
    for n in (1, 3):
        ref = richardson_lucy(y, (psf / psf.sum()).astype(dtype), num_iter=n, clip=False)
        assert ours[n - 1].dtype == ref.dtype == np.dtype(dtype)
        np.testing.assert_allclose(ours[n - 1], ref, rtol=1e-5, atol=1e-6)
    padded = next(x for it, x in vb.rl_iterates(stack, psf, 100.0) if it == 3)
    assert padded.shape == stack.shape and not np.allclose(padded, ours[2])  # the benchmark's RL pads


def test_speed_report_compares_with_the_fastest_richardson_lucy(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import volume_scale as vs

    run = {"date": "2026-12-01", "started": "06:00", "threads": 1, "processor": "x", "load": 1.0, "cpus": 2}
    rec = lambda sec, n: {"sec": sec, "peak_rss": 2**30, "iterations": n, "scores": [24.0, 0.7]}  # noqa: E731
    speed = {"shape": [64, 256, 256], "run": run, "blurry": [22.0, 0.4],
             "model": {"file": "v.safetensors", "width": 16, "macs_per_voxel_stage": 30000, "network_margin": 2},
             "rl": rec(18.0, 13), "skimage_float64": rec(14.0, 10), "skimage_float32": rec(8.0, 10),
             "fp32": {"sec": 24.0, "peak_rss": 2**30, "scores": [26.0, 0.8]}}
    text = vs.report({"speed": speed})
    assert "| skimage `richardson_lucy`, float32, best count (10 it) | 8.0 |" in text
    assert "| ours, 3 stages, fp32 | 24.0 | 1.00 | 26.00 / 0.800 | 3.0 |" in text
    assert "**not met** — 3.0× the fastest RL's time (1.3× the edge-padded float64 RL's)" in text
    speed["fp32"]["sec"] = 7.5
    assert "**met** — 0.9× the fastest RL's time" in vs.report({"speed": speed})


def test_gpu_rows_are_reported_or_said_to_be_missing(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import volume_scale as vs

    assert "GPU (100 × 1024 × 1024): not measured yet" in vs.report({})
    row = {"first_sec": 9.5, "second_sec": 4.25, "gpu_peak": 3 * 2**30, "psnr": 26.5, "gpu_name": "H200"}
    gpu = {"shape": [100, 1024, 1024], "stages": 3, "device": "cuda", "model": {"file": "v.safetensors"},
           "run": {"date": "2026-12-01"}, "blurry_psnr": 22.0,
           "rows": {"fp32": row, "bf16": {**row, "second_sec": 2.0}}}
    text = vs.report({"gpu": gpu})
    assert "GPU, 100 × 1024 × 1024" in text and "H200" in text and "3 stages" in text
    assert "| fp32 | 9.5 | 4.2 | 3.00 | 26.50 |" in text
    assert "| bf16 | 9.5 | 2.0 | 3.00 | 26.50 |" in text
    assert "| blurry | | | | 22.00 |" in text


def test_3d_wiener_at_its_best_balance_beats_the_blurry_stack():
    vb = _load()
    psf = vb.psfs()["widefield"]
    stack, sharp = vb.case(3, "widefield", 300.0, psf, (20, 48, 48))
    sweep = vb.wiener_sweep(stack, psf, 300.0, sharp)
    assert set(sweep) == set(vb.WIENER_BALANCES)
    blurry = vb.scores((stack - vb.OFFSET) / 300.0, sharp)[0]
    assert max(v[0] for v in sweep.values()) > blurry + 1.0
