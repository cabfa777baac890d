"""3D PSFs: the Born–Wolf model against textbook widths and closed forms, confocal, resampling, beads."""

import sys

import numpy as np
import pytest
from scipy import ndimage, special

from napari_fcnn_deblur.data.psf3d import (
    MAX_SHAPE,
    confocal_psf_3d,
    prepare_measured_psf_3d,
    psf_extent,
    resample_psf,
    widefield_psf_3d,
)

OIL = dict(na=1.4, wavelength=0.52, refractive_index=1.515)


def _check_kernel(k):
    assert k.ndim == 3 and all(s % 2 == 1 for s in k.shape)
    assert k.dtype == np.float32 and k.min() >= 0
    assert np.isclose(k.sum(), 1.0, atol=1e-5)
    centroid = ndimage.center_of_mass(k.astype(np.float64))
    assert np.allclose(centroid, np.array(k.shape) // 2, atol=0.05), centroid


def fwhm(profile, step):
    """Full width at half maximum of a centred, single-peaked profile (linear interpolation)."""
    p = np.asarray(profile, np.float64)
    c = len(p) // 2
    half = p[c] / 2
    right = c
    while p[right + 1] >= half:
        right += 1
    left = c
    while p[left - 1] >= half:
        left -= 1
    r = right + (p[right] - half) / (p[right] - p[right + 1])
    lft = left - (p[left] - half) / (p[left] - p[left - 1])
    return (r - lft) * step


def _axial_theory(na, wavelength, n):
    # FWHM of sinc²(k z (n − n cos α) / 2): 0.886 λ / (n − √(n² − NA²)) (Kino & Corle 1996; Pawley 2006)
    return 0.886 * wavelength / (n - np.sqrt(n**2 - na**2))


@pytest.mark.parametrize("na, n, step", [(1.4, 1.515, (0.03, 0.02, 0.02)), (0.8, 1.0, (0.06, 0.03, 0.03))])
def test_widefield_fwhm_matches_theory(na, n, step):
    lam = 0.52
    k = widefield_psf_3d((61, 41, 41), step, na, lam, n)
    _check_kernel(k)
    c = np.array(k.shape) // 2
    lateral = fwhm(k[c[0], c[1]], step[2])
    axial = fwhm(k[:, c[1], c[2]], step[0])
    # measured (NA 1.4 oil): lateral 0.191 µm vs 0.51 λ/NA = 0.189; axial 0.512 µm vs 0.492 (4 %)
    assert lateral == pytest.approx(0.51 * lam / na, rel=0.10)
    assert axial == pytest.approx(_axial_theory(na, lam, n), rel=0.20)
    assert np.array_equal(k, k[::-1])  # no aberration: symmetric about focus
    assert np.allclose(k, k.transpose(0, 2, 1), atol=1e-9)  # and circularly symmetric (square pixels)


def test_born_wolf_matches_closed_forms():
    """In focus: the Airy pattern [2 J1(v)/v]²; on the axis: |∫ exp(i k z u) u du|² over u ∈ [n cos α, n]."""
    na, lam, n = OIL["na"], OIL["wavelength"], OIL["refractive_index"]
    dz, dx = 0.25, 0.03
    k = widefield_psf_3d((41, 61, 61), (dz, dx, dx), na, lam, n, supersample=1).astype(np.float64)
    c = 30
    kk = 2 * np.pi / lam
    v = kk * na * np.arange(31) * dx
    airy = np.ones_like(v)
    airy[1:] = (2 * special.j1(v[1:]) / v[1:]) ** 2
    focus = k[20, c, c:] / k[20, c, c]
    assert np.abs(focus - airy).max() < 2e-3
    z = (np.arange(41) - 20) * dz
    b = kk * z[z != 0]
    cos_part = np.sqrt(n**2 - na**2)

    def antiderivative(u):
        return np.exp(1j * b * u) * (u / (1j * b) + 1 / b**2)

    axis = np.abs((antiderivative(n) - antiderivative(cos_part)) / na**2) ** 2 / 0.25  # focus: (1/2)² = 0.25
    assert np.abs(k[z != 0, c, c] / k[20, c, c] - axis).max() < 2e-3


def test_psf_extent_holds_the_light_and_is_capped():
    shapes = {}
    for na, n in ((0.3, 1.0), (0.8, 1.0), (1.2, 1.333), (1.4, 1.515)):
        for lam in (0.4, 0.7):
            for dz, dx in ((0.1, 0.05), (0.5, 0.2)):
                s = psf_extent((dz, dx, dx), na, lam, n)
                assert all(v % 2 == 1 for v in s) and all(v <= m for v, m in zip(s, MAX_SHAPE))
                # the focal plane (the most compact) holds ≥ 99 % in the disc inscribed in the box
                a = 2 * np.pi / lam * na * (s[2] // 2) * dx
                assert s[2] == MAX_SHAPE[2] or 1 - special.j0(a) ** 2 - special.j1(a) ** 2 >= 0.99
                shapes[na, lam, dz] = s
    assert shapes[1.4, 0.4, 0.1][0] < shapes[0.3, 0.7, 0.1][0]  # high NA: axially shorter
    # a typical oil case, checked directly: the planes just outside ±Z peak below 1 % of the focus, and
    # the box holds ≥ 99 % of the light that a box twice as wide holds
    spacing = (0.2, 0.1, 0.1)
    s = psf_extent(spacing, 1.2, 0.52, 1.333)
    big = widefield_psf_3d((s[0] + 4, 2 * s[1] + 1, 2 * s[2] + 1), spacing, 1.2, 0.52, 1.333,
                           supersample=1).astype(np.float64)
    peaks = big.max(axis=(1, 2)) / big.max()
    assert peaks[:2].max() < 0.01 and peaks[2] >= 0.01
    oy = (big.shape[1] - s[1]) // 2
    assert big[2:-2, oy : oy + s[1], oy : oy + s[2]].sum() / big[2:-2].sum() >= 0.99


def test_confocal_is_narrower():
    spacing = (0.05, 0.025, 0.025)
    wide = widefield_psf_3d((41, 33, 33), spacing, 1.4, 0.52)
    point = confocal_psf_3d((41, 33, 33), spacing, 1.4, 0.488, 0.52)
    one_au = confocal_psf_3d((41, 33, 33), spacing, 1.4, 0.488, 0.52, pinhole=1.0)
    for k in (point, one_au):
        _check_kernel(k)
    c = 16

    def widths(k):
        return fwhm(k[20, c], spacing[2]), fwhm(k[:, c, c], spacing[0])

    (lw, aw), (lp, ap), (l1, a1) = widths(wide), widths(point), widths(one_au)
    # point pinhole: ≈ 1/√2 of the widefield widths (0.37 λ/NA laterally; Wilson 2011)
    assert lp == pytest.approx(0.37 * 0.505 / 1.4, rel=0.1)
    assert lp < l1 < lw and ap < a1 < aw
    auto = confocal_psf_3d(None, (0.2, 0.065, 0.065), 1.4, 0.488, 0.52)
    _check_kernel(auto)
    assert auto.shape[1] < psf_extent((0.2, 0.065, 0.065), 1.4, 0.52)[1]  # confocal energy is compact


def test_resample_preserves_mass_centre_and_width():
    fine = widefield_psf_3d((41, 41, 41), (0.05, 0.02, 0.02), **OIL)
    c = 20
    lat, ax = fwhm(fine[c, c], 0.02), fwhm(fine[:, c, c], 0.05)
    for to in ((0.1, 0.04, 0.04), (0.025, 0.01, 0.01), (0.1, 0.03, 0.05)):
        k = resample_psf(fine, (0.05, 0.02, 0.02), to)
        _check_kernel(k)
        m = np.array(k.shape) // 2
        assert k.shape[0] * to[0] == pytest.approx(41 * 0.05, abs=2 * to[0])  # same physical extent
        assert fwhm(k[:, m[1], m[2]], to[0]) == pytest.approx(ax, abs=to[0])
        assert fwhm(k[m[0], m[1]], to[2]) == pytest.approx(lat, abs=to[2])
        assert fwhm(k[m[0], :, m[2]], to[1]) == pytest.approx(lat, abs=to[1])
    flat = resample_psf(fine[c], (0.02, 0.02), (0.04, 0.04))  # 2D works too
    assert flat.ndim == 2 and np.isclose(flat.sum(), 1, atol=1e-5)
    with pytest.raises(ValueError):
        resample_psf(fine, (0.05, 0.02), (0.1, 0.04, 0.04))
    with pytest.raises(ValueError):
        resample_psf(fine, (0.05, 0.02, 0.0), (0.1, 0.04, 0.04))


def test_bead_preparation_recovers_a_known_psf():
    truth = widefield_psf_3d((21, 25, 25), (0.15, 0.05, 0.05), **OIL).astype(np.float64)
    stack = np.zeros((41, 64, 64))
    stack[5:26, 30:55, 12:37] = truth  # off-centre ...
    stack = ndimage.shift(stack, (0.3, -0.4, 0.25), order=3)  # ... by a non-integer offset
    rng = np.random.default_rng(0)
    camera = rng.poisson(np.clip(stack, 0, None) * 2e6) + 100 + rng.normal(0, 2, stack.shape)

    def l1_error(k):  # on the common centred box, both renormalised there
        box = [min(a, b) for a, b in zip(k.shape, truth.shape)]

        def crop(a):
            a = a[tuple(slice((n - b) // 2, (n - b) // 2 + b) for n, b in zip(a.shape, box))].astype(np.float64)
            return a / a.sum()

        return np.abs(crop(k) - crop(truth)).sum()

    clean = prepare_measured_psf_3d(stack * 2e6 + 100, energy=1.0)
    _check_kernel(clean)
    assert l1_error(clean) < 0.03  # measured 0.018 (two cubic-spline shifts)
    k = prepare_measured_psf_3d(camera, energy=0.99, threshold=2)
    _check_kernel(k)
    assert l1_error(k) < 0.08  # measured 0.057 (threshold 0: 0.23, the clipped noise floor)
    assert k.max() == pytest.approx(truth.max(), rel=0.06)
    c = np.array(k.shape) // 2
    assert fwhm(k[:, c[1], c[2]], 0.15) == pytest.approx(fwhm(truth[:, 12, 12], 0.15), abs=0.15)
    assert fwhm(k[c[0], c[1]], 0.05) == pytest.approx(fwhm(truth[10, 12], 0.05), abs=0.05)


def test_bead_preparation_rejects_bad_stacks():
    good = np.zeros((9, 9, 9))
    good[4, 4, 4] = 1
    for bad, msg in ((np.zeros((9, 9)), "3D"), (np.where(good > 0, np.nan, good), "NaN"),
                     (np.full((9, 9, 9), 3.0), "no positive mass")):
        with pytest.raises(ValueError, match=msg):
            prepare_measured_psf_3d(bad)
    assert prepare_measured_psf_3d(good).shape == (1, 1, 1)


def test_validation_errors():
    for kwargs in (dict(na=1.6), dict(na=0), dict(wavelength=-1), dict(refractive_index=0.9)):
        with pytest.raises(ValueError):
            widefield_psf_3d((5, 5, 5), (0.1, 0.1, 0.1), **{**OIL, **kwargs})
    with pytest.raises(ValueError, match="odd"):
        widefield_psf_3d((4, 5, 5), (0.1, 0.1, 0.1), **OIL)
    with pytest.raises(ValueError, match="spacing"):
        widefield_psf_3d((5, 5, 5), (0.1, -0.1, 0.1), **OIL)
    with pytest.raises(ValueError, match="model"):
        widefield_psf_3d((5, 5, 5), (0.1, 0.1, 0.1), **OIL, model="airy")
    with pytest.raises(ValueError, match="pinhole"):
        confocal_psf_3d((5, 5, 5), (0.1, 0.1, 0.1), 1.4, 0.488, 0.52, pinhole=-1)


def test_gibson_lanni_without_psfmodels_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "psfmodels", None)  # import psfmodels → ImportError
    with pytest.raises(ImportError, match="pip install psfmodels"):
        widefield_psf_3d((5, 5, 5), (0.1, 0.1, 0.1), **OIL, model="gibson-lanni")


def test_gibson_lanni_with_psfmodels_agrees_with_born_wolf():
    pytest.importorskip("psfmodels")
    spacing = (0.05, 0.025, 0.025)
    gl = widefield_psf_3d((31, 33, 33), spacing, **OIL, model="gibson-lanni")
    bw = widefield_psf_3d((31, 33, 33), spacing, **OIL)
    _check_kernel(gl)
    assert fwhm(gl[15, 16], spacing[2]) == pytest.approx(fwhm(bw[15, 16], spacing[2]), rel=0.1)
    assert fwhm(gl[:, 16, 16], spacing[0]) == pytest.approx(fwhm(bw[:, 16, 16], spacing[0]), rel=0.2)
