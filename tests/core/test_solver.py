import numpy as np
import pytest
import torch

from conftest import line_kernel, psnr
from napari_fcnn_deblur.core.solver import (
    EPSILON,
    deconvolve,
    gradient_spectrum,
    kernel_spectra,
    pad_and_taper,
    prepare_problem,
    refill_boundary,
)
from napari_fcnn_deblur.core.spectral import difference_otfs, image_gradients, padding_geometry, psf2otf
from napari_fcnn_deblur.data.samples import blur_valid


def _smooth_image(shape, seed=0):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random(shape), 3)
    img = (img - img.min()) / (img.max() - img.min())
    img[shape[0] // 3 : shape[0] // 2, :] += 0.3  # a hard edge too
    return (img / img.max()).astype(np.float32)


def test_true_gradients_recover_sharp_image():
    """Eq. 6 with z = the true gradients of the sharp image and a small γ gives the image back."""
    k = line_kernel(9, 20.0)
    big = _smooth_image((160, 170))
    geom = padding_geometry((100, 110), k.shape)
    hp, wp = geom.shape
    sharp_pad = big[:hp, :wp]
    r0, c0 = geom.top, geom.left
    region = sharp_pad[r0 - k.shape[0] // 2 : r0 + 100 + k.shape[0] // 2, c0 - k.shape[1] // 2 : c0 + 110 + k.shape[1] // 2]
    y, gt = blur_valid(region, k, 0.0)
    assert y.shape == (100, 110)
    problem = prepare_problem(torch.from_numpy(y)[None].double(), torch.from_numpy(k).double())
    zs = image_gradients(torch.from_numpy(sharp_pad)[None].double())
    x = deconvolve(problem, 0.05, zs)
    est = geom.crop(x)[0].numpy()
    assert psnr(est, gt) > 40


def _direct_solve(y_pad, k, gamma, zs):
    """Eq. 6 by a dense linear solve on a tiny periodic grid: (γKᵀK + Σ DᵀD + εI) x = γKᵀy + Σ Dᵀz."""
    from scipy import ndimage

    shape = y_pad.shape
    n = y_pad.size
    d = len(shape)

    def conv(x, kern):  # circular convolution with the kernel centred at its middle pixel
        return ndimage.convolve(x, kern, mode="wrap")

    def corr(x, kern):
        return ndimage.correlate(x, kern, mode="wrap")

    def diff_kernel(axis):
        kern = np.zeros((3,) * d)
        idx = [1] * d
        kern[tuple(idx)] = 1.0
        idx[axis] = 2  # convolution: x[i] - x[i-1] → weight at +1 offset
        kern[tuple(idx)] = -1.0
        return kern

    dks = [diff_kernel(d - 1 - i) for i in range(d)]
    a = np.zeros((n, n))
    for j in range(n):
        e = np.zeros(n)
        e[j] = 1.0
        e = e.reshape(shape)
        col = gamma * corr(conv(e, k), k) + EPSILON * e
        for dk in dks:
            col = col + corr(conv(e, dk), dk)
        a[:, j] = col.ravel()
    b = gamma * corr(y_pad, k)
    for dk, z in zip(dks, zs):
        b = b + corr(z, dk)
    return np.linalg.solve(a, b.ravel()).reshape(shape)


def test_3d_eq6_matches_a_direct_solve_on_a_tiny_volume():
    rng = np.random.default_rng(3)
    k = rng.random((3, 3, 3))
    k /= k.sum()
    y = rng.random((2, 3, 2))
    spectra = kernel_spectra(torch.from_numpy(k), y.shape)
    yt = torch.from_numpy(y)[None]
    problem = prepare_problem(yt, spectra=spectra)
    y_pad = pad_and_taper(yt, spectra)[0].numpy()
    zs = [rng.normal(size=spectra.geometry.shape) for _ in range(3)]
    x = deconvolve(problem, 7.0, [torch.from_numpy(z)[None] for z in zs])[0].numpy()
    ref = _direct_solve(y_pad, k, 7.0, zs)
    assert np.allclose(x, ref, atol=1e-9)


def test_2d_eq6_matches_a_direct_solve():
    rng = np.random.default_rng(4)
    k = rng.random((3, 5))
    k /= k.sum()
    y = rng.random((4, 3))
    spectra = kernel_spectra(torch.from_numpy(k), y.shape)
    yt = torch.from_numpy(y)[None]
    y_pad = pad_and_taper(yt, spectra)[0].numpy()
    zs = [rng.normal(size=spectra.geometry.shape) for _ in range(2)]
    x = deconvolve(prepare_problem(yt, spectra=spectra), 3.0, [torch.from_numpy(z)[None] for z in zs])[0].numpy()
    assert np.allclose(x, _direct_solve(y_pad, k, 3.0, zs), atol=1e-9)


def test_no_border_band():
    """Replicate padding + edge taper: the error near the image border is like the interior's.

    (A plain circular deconvolution of the same image shows a strong ringing band.)
    """
    from skimage import data

    from napari_fcnn_deblur.data.motion_kernels import random_motion_kernel

    k = random_motion_kernel(np.random.default_rng(5), 15)
    sharp = data.camera()[50:300, 100:330].astype(np.float32) / 255
    y, gt = blur_valid(sharp, k, 0.0)
    gamma = 200.0  # the order of the first deconvolution's data weight

    def band_and_interior(est, b=15):
        err = (est - gt) ** 2
        edge = np.concatenate([err[:b].ravel(), err[-b:].ravel(), err[:, :b].ravel(), err[:, -b:].ravel()])
        return np.sqrt(edge.mean()), np.sqrt(err[b:-b, b:-b].mean())

    problem = prepare_problem(torch.from_numpy(y)[None].double(), torch.from_numpy(k).double())
    est = problem.geometry.crop(deconvolve(problem, gamma))[0].numpy()
    edge, interior = band_and_interior(est)
    assert edge < 1.5 * interior

    K = psf2otf(torch.from_numpy(k).double(), y.shape)
    otfs, power = difference_otfs(y.shape, dtype=torch.float64)
    Y = torch.fft.rfft2(torch.from_numpy(y).double())
    naive = torch.fft.irfft2(gamma * K.conj() * Y / (gamma * K.abs() ** 2 + power + 1e-4), s=y.shape)
    naive_edge, _ = band_and_interior(naive.numpy())
    assert naive_edge > 5 * edge
    assert psnr(est, gt) > psnr(naive.numpy(), gt) + 5


def test_deconvolve_is_differentiable_in_gamma_and_gradients():
    k = torch.from_numpy(line_kernel(7, 0.0)).double()
    y = torch.rand(2, 40, 40, dtype=torch.float64)
    problem = prepare_problem(y, k)
    gamma = torch.tensor(50.0, dtype=torch.float64, requires_grad=True)
    z = torch.rand((2,) + problem.geometry.shape, dtype=torch.float64, requires_grad=True)
    out = problem.geometry.crop(deconvolve(problem, gamma, [z, z]))
    out.sum().backward()
    assert gamma.grad is not None and torch.isfinite(gamma.grad) and z.grad is not None


def test_inference_mode_gives_the_autograd_result():
    k = torch.from_numpy(line_kernel(7, 40.0))
    y = torch.rand(1, 30, 36)
    p = prepare_problem(y, k)
    zs = [torch.rand((1,) + p.geometry.shape) for _ in range(2)]
    a = deconvolve(p, 20.0, zs)
    with torch.inference_mode():
        b = deconvolve(p, 20.0, zs)
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("ndim", [2, 3])
def test_a_precomputed_gradient_spectrum_gives_the_same_solve(ndim):
    shape = (1, 30, 36) if ndim == 2 else (1, 8, 14, 12)
    k = torch.rand((5,) * ndim, dtype=torch.float64)
    k /= k.sum()
    p = prepare_problem(torch.rand(shape, dtype=torch.float64), k, ndim=ndim)
    zs = [torch.rand((1,) + p.geometry.shape, dtype=torch.float64) for _ in range(ndim)]
    prior = gradient_spectrum(p, zs)
    with torch.inference_mode():  # in place: the shared spectrum must not be consumed
        a = deconvolve(p, 20.0, zs)
        b = deconvolve(p, 20.0, prior=prior)
        c = deconvolve(p, 20.0, prior=prior)
    assert torch.equal(a, b) and torch.equal(b, c)
    with pytest.raises(ValueError, match="not both"):
        deconvolve(p, 20.0, zs, prior=prior)
    with pytest.raises(ValueError, match="one per axis"):
        gradient_spectrum(p, zs[:1])


def test_per_image_gamma_equals_separate_solves():
    k = torch.from_numpy(line_kernel(9, 60.0))
    y = torch.rand(2, 50, 60)
    p = prepare_problem(y, k)
    both = deconvolve(p, torch.tensor([100.0, 3.0]))
    assert torch.allclose(both[0:1], deconvolve(prepare_problem(y[:1], k), 100.0), atol=1e-5)
    assert torch.allclose(both[1:2], deconvolve(prepare_problem(y[1:], k), 3.0), atol=1e-5)


def test_batched_equals_single_and_spectra_are_shared():
    k = torch.from_numpy(line_kernel(9, 60.0))
    y = torch.rand(3, 50, 60)
    spectra = kernel_spectra(k, (50, 60))
    both = deconvolve(prepare_problem(y, spectra=spectra), 100.0)
    one = deconvolve(prepare_problem(y[1:2], k), 100.0)
    assert torch.allclose(both[1:2], one, atol=1e-5)
    with pytest.raises(ValueError, match="expected blurry images"):
        prepare_problem(torch.rand(1, 40, 60), spectra=spectra)


def test_refill_keeps_observed_pixels_and_blurs_the_estimate_into_the_frame():
    """The refilled padded image is y inside and K * x outside (checked through the data term)."""
    k = line_kernel(7, 45.0)
    rng = np.random.default_rng(3)
    y = torch.from_numpy(rng.random((2, 30, 34)))
    problem = prepare_problem(y, torch.from_numpy(k).double())
    geom = problem.geometry
    x = torch.from_numpy(rng.random((2,) + geom.shape))
    refilled = refill_boundary(problem, x)
    otf = psf2otf(torch.from_numpy(k).double(), geom.shape)
    blurred = torch.fft.irfftn(torch.fft.rfftn(x, dim=(-2, -1)) * otf, s=geom.shape, dim=(-2, -1))
    expected = blurred.clone()
    geom.crop(expected).copy_(y)
    image = torch.fft.irfftn(refilled.data / otf.conj(), s=geom.shape, dim=(-2, -1))
    assert torch.allclose(image, expected, atol=1e-8)
    assert refilled.observed is y and refilled.spectra is problem.spectra
    assert torch.equal(problem.data, prepare_problem(y, torch.from_numpy(k).double()).data)  # input unchanged


def test_refill_with_a_good_estimate_fixes_the_boundary():
    """With the true latent image as estimate, a refilled frame deconvolves closer to the truth
    than the edge taper (no gradients, small γ regularisation: the boundary is what differs)."""
    k = line_kernel(13, 20.0)
    big = _smooth_image((160, 170))
    geom = padding_geometry((100, 110), k.shape)
    hp, wp = geom.shape
    sharp_pad = big[:hp, :wp].astype(np.float64)
    r0, c0 = geom.top, geom.left
    region = sharp_pad[r0 - k.shape[0] // 2 : r0 + 100 + k.shape[0] // 2, c0 - k.shape[1] // 2 : c0 + 110 + k.shape[1] // 2]
    y, gt = blur_valid(region, k, 0.0)
    problem = prepare_problem(torch.from_numpy(y)[None], torch.from_numpy(k).double())
    tapered = geom.crop(deconvolve(problem, 2000.0))[0].numpy()
    refilled = refill_boundary(problem, torch.from_numpy(sharp_pad)[None])
    better = geom.crop(deconvolve(refilled, 2000.0))[0].numpy()
    assert psnr(better, gt) > psnr(tapered, gt) + 3


def test_refill_needs_the_observed_images():
    problem = prepare_problem(torch.rand(1, 20, 20), torch.from_numpy(line_kernel(5, 0.0)))
    bare = type(problem)(spectra=problem.spectra, data=problem.data)
    with pytest.raises(ValueError, match="observed"):
        refill_boundary(bare, torch.zeros((1,) + problem.geometry.shape))
