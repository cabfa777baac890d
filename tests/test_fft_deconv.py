import numpy as np
import torch

from conftest import line_kernel, psnr
from napari_fcnn_deblur.fft_deconv import (
    deconvolve,
    gradient_otfs,
    image_gradients,
    padding_geometry,
    prepare_problem,
    psf2otf,
)
from napari_fcnn_deblur.sample_images import blur_valid


def _smooth_image(shape, seed=0):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random(shape), 3)
    img = (img - img.min()) / (img.max() - img.min())
    img[shape[0] // 3 : shape[0] // 2, :] += 0.3  # a hard edge too
    return (img / img.max()).astype(np.float32)


def test_gradient_otfs_match_image_gradients():
    x = torch.rand(1, 20, 24, dtype=torch.float64)
    gh, gv = gradient_otfs((20, 24), dtype=torch.float64)
    gx, gy = image_gradients(x)
    assert torch.allclose(torch.fft.ifft2(torch.fft.fft2(x) * gh).real, gx, atol=1e-12)
    assert torch.allclose(torch.fft.ifft2(torch.fft.fft2(x) * gv).real, gy, atol=1e-12)


def test_psf2otf_centres_kernel():
    k = torch.zeros(5, 5, dtype=torch.float64)
    k[2, 2] = 1.0  # delta at the centre → OTF of the identity
    otf = psf2otf(k, (16, 16))
    assert torch.allclose(otf, torch.ones_like(otf))


def test_padding_geometry_pads_by_the_kernel_size():
    g = padding_geometry((101, 77), (15, 9))
    assert (g.top, g.bottom, g.left, g.right) == (15, 15, 9, 9)
    assert g.shape == (101 + 30, 77 + 18)
    x = torch.arange(101 * 77.0).reshape(1, 1, 101, 77)
    assert torch.equal(g.crop(torch.nn.functional.pad(x, (9, 9, 15, 15))), x)


def test_true_gradients_recover_sharp_image():
    """Eq. 6 with z = the true gradients of the sharp image and a small γ gives the image back."""
    k = line_kernel(9, 20.0)
    big = _smooth_image((160, 170))
    geom = padding_geometry((100, 110), k.shape)
    hp, wp = geom.shape
    # sharp image on the whole padded domain; the blurry image is its blur over the image region
    sharp_pad = big[:hp, :wp]
    r0, c0 = geom.top, geom.left
    region = sharp_pad[r0 - k.shape[0] // 2 : r0 + 100 + k.shape[0] // 2, c0 - k.shape[1] // 2 : c0 + 110 + k.shape[1] // 2]
    y, gt = blur_valid(region, k, 0.0)
    assert y.shape == (100, 110)
    problem = prepare_problem(torch.from_numpy(y)[None].double(), torch.from_numpy(k).double())
    zx, zy = image_gradients(torch.from_numpy(sharp_pad)[None].double())
    x = deconvolve(problem, 0.05, zx, zy)
    est = geom.crop(x)[0].numpy()
    assert psnr(est, gt) > 40


def test_no_border_band():
    """Replicate padding + edge taper: the error near the image border is like the interior's.

    (A plain circular deconvolution of the same image shows a strong ringing band.)
    """
    from skimage import data

    from napari_fcnn_deblur.motion_kernels import random_motion_kernel

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
    gh, gv = gradient_otfs(y.shape, dtype=torch.float64)
    Y = torch.fft.fft2(torch.from_numpy(y).double())
    naive = torch.fft.ifft2(gamma * K.conj() * Y / (gamma * K.abs() ** 2 + gh.abs() ** 2 + gv.abs() ** 2 + 1e-4)).real
    naive_edge, _ = band_and_interior(naive.numpy())
    assert naive_edge > 5 * edge
    assert psnr(est, gt) > psnr(naive.numpy(), gt) + 5


def test_deconvolve_is_differentiable_in_gamma():
    k = torch.from_numpy(line_kernel(7, 0.0)).double()
    y = torch.rand(2, 40, 40, dtype=torch.float64)
    problem = prepare_problem(y, k)
    gamma = torch.tensor(50.0, dtype=torch.float64, requires_grad=True)
    out = problem.geometry.crop(deconvolve(problem, gamma))
    out.sum().backward()
    assert gamma.grad is not None and torch.isfinite(gamma.grad)


def test_batched_equals_single():
    k = torch.from_numpy(line_kernel(9, 60.0))
    y = torch.rand(3, 50, 60)
    p = prepare_problem(y, k)
    both = deconvolve(p, 100.0)
    one = deconvolve(prepare_problem(y[1:2], k), 100.0)
    assert torch.allclose(both[1:2], one, atol=1e-5)
