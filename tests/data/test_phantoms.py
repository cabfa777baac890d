"""3D phantoms (deterministic, on [0, 1], distinct structures) and the camera model of blur_volume."""

import numpy as np
import pytest

from napari_fcnn_deblur.data import phantoms
from napari_fcnn_deblur.data.phantoms import (
    BENCHMARK_SEED_START,
    HELD_OUT_STRUCTURES,
    STRUCTURES,
    TRAINING_STRUCTURES,
    blur_volume,
    phantom_3d,
    random_phantom_3d,
)

SHAPE = (16, 40, 40)


@pytest.fixture(scope="module")
def volumes():
    return {s: phantom_3d(SHAPE, s, seed=3) for s in STRUCTURES}


def test_each_structure_is_deterministic_bounded_and_non_empty(volumes):
    for s, v in volumes.items():
        assert v.shape == SHAPE and v.dtype == np.float32
        assert v.min() >= 0 and v.max() == pytest.approx(1.0)
        assert (v > 0.1).mean() > 1e-3, s
        assert np.array_equal(v, phantom_3d(SHAPE, s, seed=3))
        assert not np.array_equal(v, phantom_3d(SHAPE, s, seed=4))
    assert phantom_3d(SHAPE, "puncta", brightness=0.4, seed=3).max() == pytest.approx(0.4)


def test_structures_are_distinct(volumes):
    names = list(volumes)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            corr = np.corrcoef(volumes[a].ravel(), volumes[b].ravel())[0, 1]
            assert abs(corr) < 0.5, (a, b, corr)
    # sparse structures are sparse, filling ones fill
    fill = {s: (v > 0.1).mean() for s, v in volumes.items()}
    assert fill["puncta"] < fill["membranes"] and fill["filaments"] < fill["dense_texture"]


def test_density_adds_structure():
    for s in ("filaments", "puncta", "hollow_nuclei"):
        assert phantom_3d(SHAPE, s, density=0.9, seed=1).sum() > phantom_3d(SHAPE, s, density=0.1, seed=1).sum()


def test_random_mix_is_deterministic_and_keeps_benchmarks_apart(monkeypatch):
    a = random_phantom_3d(SHAPE, np.random.default_rng(5))
    b = random_phantom_3d(SHAPE, np.random.default_rng(5))
    assert np.array_equal(a, b) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert "hollow_nuclei" in HELD_OUT_STRUCTURES and not set(HELD_OUT_STRUCTURES) & set(TRAINING_STRUCTURES)
    calls = []
    real = phantoms.phantom_3d
    monkeypatch.setattr(phantoms, "phantom_3d", lambda *a, **k: calls.append((a[1], k["seed"])) or real(*a, **k))
    rng = np.random.default_rng(0)
    for _ in range(6):
        random_phantom_3d((8, 16, 16), rng)
    assert calls and all(seed < BENCHMARK_SEED_START for _, seed in calls)
    assert {name for name, _ in calls} <= set(TRAINING_STRUCTURES)  # by default, no held-out structure
    with pytest.raises(ValueError):
        random_phantom_3d(SHAPE, rng, structures=("blobs",))
    with pytest.raises(ValueError):
        phantom_3d(SHAPE, "blobs")


def test_blur_volume_noise_statistics_on_a_flat_field():
    psf = np.ones((3, 5, 5))
    flat = np.full((12, 70, 70), 0.5)
    data, sharp = blur_volume(flat, psf, photons=100.0, read_noise=3.0, offset=100.0, rng=np.random.default_rng(0))
    assert data.shape == sharp.shape == (10, 66, 66) and data.dtype == np.float32
    assert data.mean() == pytest.approx(100 * 0.5 + 100, abs=0.3)
    assert data.var() == pytest.approx(100 * 0.5 + 3.0**2, rel=0.05)
    same, full = blur_volume(flat, psf, 100.0, 3.0, 100.0, np.random.default_rng(0), mode="same", uint16=True)
    assert same.shape == flat.shape and same.dtype == np.uint16 and np.array_equal(full, flat)


def test_blur_volume_valid_crop_is_aligned():
    vol = np.zeros((9, 21, 21))
    vol[5, 12, 8] = 1.0
    psf = np.zeros((3, 5, 7))
    psf[1, 2, 3] = 0.6
    psf[0, 2, 3] = 0.2
    psf[2, 2, 3] = 0.2
    data, sharp = blur_volume(vol, psf, photons=1e6, read_noise=0, offset=0, rng=np.random.default_rng(0))
    assert np.unravel_index(np.argmax(data), data.shape) == np.unravel_index(np.argmax(sharp), sharp.shape)
    for bad in (dict(photons=0), dict(read_noise=-1), dict(mode="full")):
        with pytest.raises(ValueError):
            blur_volume(vol, psf, **{"photons": 10.0, **bad})
    with pytest.raises(ValueError, match="at least as large"):
        blur_volume(vol[:2], psf)
