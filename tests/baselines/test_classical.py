"""Classical baselines (napari_fcnn_deblur.baselines.classical) and the quality benchmark script."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from skimage import data

from conftest import load_benchmark
from napari_fcnn_deblur.baselines import classical as bl
from napari_fcnn_deblur.data.samples import blur_valid, gaussian_psf

ROOT = Path(__file__).resolve().parents[2]


def psnr(est, gt):
    return 10 * np.log10(1.0 / np.mean((np.clip(est, 0, 1) - gt) ** 2))


def motion_kernel() -> np.ndarray:
    """A fixed 11×11 L-shaped camera-shake kernel."""
    k = np.zeros((11, 11))
    k[5, 1:9] = 1.0
    k[2:6, 8] = 1.0
    k[6:9, 3] = 0.5
    return k / k.sum()


@pytest.fixture(scope="module")
def case():
    sharp = data.camera()[160:320, 180:340].astype(np.float64) / 255.0
    k = motion_kernel()
    y, gt = blur_valid(sharp, k, 0.01, seed=5)
    return y.astype(np.float64), k, gt.astype(np.float64)


# ----------------------------------------------------------------------------- w-subproblem


def brute_force_w(v: np.ndarray, beta: float, alpha: float) -> np.ndarray:
    """argmin_w |w|^α + β/2 (w − v)² by grid search, element-wise (resolution ~1e-7 for |v| ≤ 2).

    The non-zero minimiser has the sign of v and lies in (0, |v|]: search there on a
    grid, refine around the best point, then compare with w = 0.
    """
    a = np.abs(v)[:, None]

    def cost(w):
        return w**alpha + beta / 2 * (w - a) ** 2

    g = a * np.linspace(0.0, 1.0, 4001)[None]
    j = np.argmin(cost(g), axis=1)[:, None]
    step = a / 4000
    lo = np.take_along_axis(g, j, 1) - step
    fine = np.clip(lo + 2 * step * np.linspace(0.0, 1.0, 4001)[None], 0.0, None)
    c = cost(fine)
    k = np.argmin(c, axis=1)[:, None]
    w = np.take_along_axis(fine, k, 1)[:, 0]
    w = np.where(np.take_along_axis(c, k, 1)[:, 0] < beta / 2 * a[:, 0] ** 2, w, 0.0)
    return np.sign(v) * w


@pytest.mark.parametrize("beta", [1.0, 2 * np.sqrt(2), 8.0, 64.0, 181.0, 1e3])
def test_w_solver_two_thirds_matches_brute_force(beta):
    rng = np.random.default_rng(int(beta))
    v = np.concatenate([rng.normal(0, 0.4, 300), rng.uniform(-2, 2, 300), [0.0, 1e-9, -1e-9, 2.0, -2.0]])
    w = bl.solve_w(v, beta, 2 / 3)
    np.testing.assert_allclose(w, brute_force_w(v, beta, 2 / 3), rtol=0, atol=1e-4)
    own = np.abs(w) ** (2 / 3) + beta / 2 * (w - v) ** 2
    bf = brute_force_w(v, beta, 2 / 3)
    assert np.all(own <= np.abs(bf) ** (2 / 3) + beta / 2 * (bf - v) ** 2 + 1e-12)


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_w_solver_other_alphas_are_global_minima(alpha):
    v = np.random.default_rng(1).normal(0, 0.5, 300)
    for beta in (1.0, 8.0, 256.0):
        w = bl.solve_w(v, beta, alpha)
        bf = brute_force_w(v, beta, alpha)
        own = np.abs(w) ** alpha + beta / 2 * (w - v) ** 2
        assert np.all(own <= np.abs(bf) ** alpha + beta / 2 * (bf - v) ** 2 + 1e-12)


def test_w_solver_rejects_other_alpha():
    with pytest.raises(ValueError):
        bl.solve_w(np.ones(3), 1.0, 0.8)


# ----------------------------------------------------------------------------- boundary handling


def _numpy_edgetaper(y, k, pad):
    """An independent numpy reference: replicate padding, then MATLAB ``edgetaper`` (full FFTs)."""
    y_pad = np.pad(y, ((pad[0], pad[0]), (pad[1], pad[1])), mode="edge")
    shape = y_pad.shape
    kp = np.zeros(shape)
    kp[: k.shape[0], : k.shape[1]] = k
    otf = np.fft.fft2(np.roll(kp, (-(k.shape[0] // 2), -(k.shape[1] // 2)), axis=(0, 1)))
    blurred = np.fft.ifft2(np.fft.fft2(y_pad) * otf).real
    alphas = []
    for proj, n in ((k.sum(axis=1), shape[0]), (k.sum(axis=0), shape[1])):
        z = np.fft.irfft(np.abs(np.fft.rfft(proj, n=n - 1)) ** 2, n=n - 1)
        z = np.concatenate([z, z[:1]])
        alphas.append(1.0 - z / z.max())
    alpha = alphas[0][:, None] * alphas[1][None, :]
    return alpha * y_pad + (1 - alpha) * blurred, otf


def test_padded_problem_matches_an_independent_edgetaper():
    rng = np.random.default_rng(0)
    y = rng.random((57, 70))
    k = rng.random((9, 6))  # even width: padded to 7 like the engine
    p = bl.padded_problem(y, k)
    assert p.kernel.shape == (9, 7) and np.isclose(p.kernel.sum(), 1.0)
    ref, otf = _numpy_edgetaper(y, p.kernel, p.kernel.shape)
    np.testing.assert_allclose(p.y_pad, ref, atol=1e-12)
    np.testing.assert_allclose(p.y_pad[p.crop], y, atol=1e-12)
    # the spectra are the engine's, in float64: conj(K) Y of the tapered image
    data = np.conj(otf) * np.fft.fft2(ref)
    np.testing.assert_allclose(p.problem.data[0].numpy(), data[:, : ref.shape[1] // 2 + 1], atol=1e-9)
    assert p.problem.data.dtype == torch.complex128


# ----------------------------------------------------------------------------- methods


def test_hyper_laplacian_improves_clearly(case):
    y, k, gt = case
    x = bl.hyper_laplacian(y, k, lam=1000.0)
    assert x.shape == y.shape and x.dtype == np.float64
    p_in, p_hl = psnr(y, gt), psnr(x, gt)
    p_wiener = max(psnr(bl.wiener(y, k, b), gt) for b in (1e-3, 1e-2, 3e-2, 1e-1))
    assert p_hl > p_in + 6.0, (p_in, p_hl)
    assert p_hl > p_wiener + 2.0, (p_wiener, p_hl)


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_hyper_laplacian_other_alphas_improve(case, alpha):
    y, k, gt = case
    assert psnr(bl.hyper_laplacian(y, k, 1000.0, alpha=alpha), gt) > psnr(y, gt) + 3.0


def test_wrappers_keep_shapes_and_deblur(case):
    y, k, gt = case
    y2 = y[:, :-3]  # non-square, odd width
    for out in (bl.wiener(y2, k, 0.01), bl.richardson_lucy(y2, k, 10), bl.hyper_laplacian(y2, k, 500.0)):
        assert out.shape == y2.shape and np.all(np.isfinite(out))
    assert psnr(bl.wiener(y, k, 0.01), gt) > psnr(y, gt) + 2.0
    assert psnr(bl.richardson_lucy(y, k, 20), gt) > psnr(y, gt) + 2.0
    # an even-sized Gaussian kernel is accepted (padded to odd)
    assert bl.wiener(y, gaussian_psf(1.5, size=8), 0.01).shape == y.shape


def test_baselines_validate_arguments(case):
    y, k, _ = case
    with pytest.raises(ValueError):
        bl.hyper_laplacian(y, k, lam=0)
    with pytest.raises(ValueError):
        bl.richardson_lucy(y, k, 0)
    with pytest.raises(ValueError):
        bl.wiener(y[None], k, 0.1)


def test_tune_baselines_picks_from_grid():
    sharp = data.moon()[200:296, 200:296].astype(np.float64) / 255.0
    res = bl.tune_baselines(
        sharp,
        [motion_kernel(), gaussian_psf(1.5)],
        0.01,
        lambdas=(10.0, 1000.0),
        balances=(1e-3, 1.0),
        rl_iterations=(1, 10),
    )
    assert res["hl_lambda"] in (10.0, 1000.0)
    assert res["wiener_balance"] in (1e-3, 1.0)
    assert res["rl_iterations"] in (1, 10)
    assert set(res["scores"]) == {"hl", "wiener", "rl"}
    s = res["scores"]["hl"]
    assert s[res["hl_lambda"]] == max(s.values())
    assert res["rl_iterations"] == 10  # one RL iteration barely deblurs


# ----------------------------------------------------------------------------- benchmark script (smoke)


def _load_quality_module():
    return load_benchmark("quality")


def test_quality_benchmark_smoke(tmp_path):
    import imageio.v3 as iio

    from napari_fcnn_deblur.core.cascade import Cascade
    from napari_fcnn_deblur.core.conditioned import NoiseMapCascade
    from napari_fcnn_deblur.io.models import save_cascade

    val = tmp_path / "val"
    val.mkdir()
    iio.imwrite(val / "a.png", data.camera()[100:164, 120:184])
    kern = tmp_path / "kernels"
    kern.mkdir()
    np.save(kern / "k1.npy", motion_kernel()[2:9, 1:10])  # 7×9
    np.save(kern / "k2.npy", gaussian_psf(1.0))  # not used: --max-kernels 1
    models = tmp_path / "models"
    models.mkdir()
    torch.manual_seed(0)
    save_cascade(Cascade(3, noise_level=0.01, width=8), models / "fcnn_noise0.01.safetensors")  # none for 0.03
    noisemap = save_cascade(NoiseMapCascade(3, width=8), tmp_path / "noisemap.safetensors")
    iio.imwrite(tmp_path / "tune.png", data.moon()[200:264, 200:264])
    out = tmp_path / "docs" / "benchmarks.md"
    out.parent.mkdir()
    out.write_text("# Benchmarks\n\nintro\n\n## Speed\n\nspeed table\n\n## Quality\n\nold\n\n## Scale\n\nscale text\n")
    cache = tmp_path / "cache.json"
    argv = [
        "--val",
        str(val),
        "--kernels",
        str(kern),
        "--reference",
        str(tmp_path / "no-release"),
        "--out",
        str(out),
        "--cache",
        str(cache),
        "--levels",
        "0.01",
        "0.03",
        "--photons",
        "5000",  # σ_eff ≈ 1 %: the per-level cascade nearest to it is the 1 % one
        "--read-noise",
        "0.002",
        "--max-kernels",
        "1",
        "--model-dir",
        str(models),
        "--noisemap-model",
        str(noisemap),
        "--tuning-image",
        str(tmp_path / "tune.png"),
        "--gaussian-sigmas",
        "1.5",
        "3",
        "--hl-lambdas",
        "500",
        "2000",
        "--wiener-balances",
        "0.01",
        "--rl-iterations",
        "5",
        "--threads",
        "1",
    ]
    q = _load_quality_module()
    assert q.main(argv) == 0
    text = out.read_text()
    # other sections kept, ours replaced
    assert "## Speed\n\nspeed table" in text and "## Scale\n\nscale text" in text and "\nold\n" not in text
    assert text.index("## Speed") < text.index("## Quality") < text.index("## Scale")
    sec = text[text.index("## Quality") : text.index("## Scale")]
    for part in ("### Protocol", "### Summary", "### Targets (issue 14)", "#### Gaussian σ = 1 %",
                 "#### 5000 photons + 0.2 % read", "### Cascade stages", "### Noise estimates",
                 "### Gaussian PSF σ_PSF = 3 px", "### Tuned baseline parameters"):
        assert part in sec, part
    assert "not installed" in sec and "not available" in sec
    for row in ("Noise-map cascade, true noise", 'Noise-map cascade, noise_level="auto"',
                "Per-level cascade (ours), nearest level (1 %)", "Wiener", "Richardson–Lucy",
                "Hyper-Laplacian α=2/3", "Blurry input"):
        assert row in sec, row
    # the targets: every one computed from the measured numbers, or said to be missing
    targets = sec[sec.index("### Targets") : sec.index("### Per condition")]
    assert targets.count("noise-map ≥ authors' + 0.5 dB | Gaussian σ = 1 %") == 1
    assert "noise-map ≥ our per-level cascade | Gaussian σ = 1 %" in targets
    assert "noise-map ≥ best per-level cascade (nearest) + 0.5 dB | 5000 photons + 0.2 % read" in targets
    assert '"auto" within 0.1 dB' in targets and "over 3 conditions" in targets
    assert targets.count("Gaussian PSF σ_PSF = 3 px: noise-map ≥ HL") == 3
    assert "**met**" in targets or "**not met**" in targets
    assert "not measured" in targets  # no authors' models here
    data_ = json.loads(cache.read_text())
    res = data_["results"]
    keys = [k for k in res if k.startswith("0.01|") and k.endswith("|a.png|k1")]
    methods = {k.split("|")[1].split("@")[0].split(":")[0] for k in keys}
    assert methods == {"input", "noisemap", "noisemap-auto", "ours", "wiener", "rl", "hl"}
    assert sum(k.split("|")[1].startswith("ours@") for k in keys) == 4  # stages 0–3
    assert any(k.startswith("0.03|hl:") for k in res) and not any(k.startswith("0.03|ours") for k in res)
    # photon noise: its own keys, σ_eff recorded, the nearest per-level cascade run
    pg = [k for k in res if k.startswith("pg5000+0.002|")]
    assert any("|ours@" in k for k in pg) and any("|noisemap-auto@" in k for k in pg)
    case = data_["cases"]["pg5000+0.002|a.png|k1"]
    assert 0.005 < case["sigma_eff"] < 0.02 and case["auto_kind"] in ("gaussian", "poisson-gaussian")
    for v in res.values():
        assert len(v) == 3 and np.isfinite(v).all()
    # resuming: nothing is recomputed and the report is identical up to the date line
    mtime = cache.stat().st_mtime_ns
    assert q.main(argv) == 0
    assert cache.stat().st_mtime_ns == mtime
    assert out.read_text().count("## Quality") == 1
    # a subset of the methods: only their rows, still nothing recomputed
    assert q.main(argv + ["--methods", "hl", "--photons"]) == 0
    assert cache.stat().st_mtime_ns == mtime
    sec = out.read_text()
    assert "| Hyper-Laplacian α=2/3 (λ" in sec and "| Noise-map cascade" not in sec and "| Wiener (" not in sec
    assert "- Methods run: `hl`." in sec and "Default (`model=None`)" not in sec


def test_quality_benchmark_conditions():
    q = _load_quality_module()
    g, p = q.Condition.gauss(0.01), q.Condition.pg(100, 0.005)
    assert g.key == "0.01" and p.key == "pg100+0.005"  # Gaussian keys as before photon noise was added
    assert q.case_seed("a.png", "k", g, 0) == __import__("zlib").crc32(b"a.png|k|0.01")
    sharp = data.camera()[:60, :60] / 255.0
    k = motion_kernel()
    case = q.make_case(sharp, k, g, "a.png", "k", 0)
    y, _ = blur_valid(sharp, k, 0.01, seed=q.case_seed("a.png", "k", g, 0))
    np.testing.assert_array_equal(case.y, y)
    assert case.sd is None and case.sigma_eff == 0.01 and case.true_noise(g) == 0.01
    case = q.make_case(sharp, k, p, "a.png", "k", 0)
    assert case.sd.shape == case.y.shape == case.gt.shape
    assert case.sigma_eff == pytest.approx(float(np.sqrt(np.mean(case.sd.astype(np.float64) ** 2))), rel=1e-6)
    # the true noise level function as a run evaluates it: from the noisy image, not the noiseless blur
    from napari_fcnn_deblur.engine.noise import NoiseLevel

    true = case.true_noise(p)
    assert true.shape == case.y.shape
    np.testing.assert_allclose(true, NoiseLevel.poisson_gaussian(1 / 100, 0.005**2).sd_planes(case.y[None])[0])
    assert not np.allclose(true, case.sd)
    assert abs(np.sqrt(np.mean(true**2)) / case.sigma_eff - 1) < 0.1
    # rows given that map are cached apart from those given the noiseless s.d. before 2026-12-01
    c = SimpleNamespace(tag="noisemap_cascade.safetensors@abc+pad-k")
    assert q.method_tag("noisemap", c, p) == "noisemap_cascade.safetensors-nlf@abc+pad-k"
    assert q.method_tag("noisemap", c, g) == c.tag and q.method_tag("noisemap", c) == c.tag
    assert q.method_tag("noisemap-auto", c, p) == "noisemap_cascade.safetensors-auto@abc+pad-k"
