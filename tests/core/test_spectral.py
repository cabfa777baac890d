import numpy as np
import pytest
import torch

from napari_fcnn_deblur.core.spectral import (
    circular_blur,
    difference_otfs,
    gradient_adjoint,
    image_gradients,
    padding_geometry,
    psf2otf,
    taper_weights,
    zero_outside,
)


@pytest.mark.parametrize("shape", [(20, 24), (6, 10, 9)])
def test_difference_otfs_match_image_gradients(shape):
    d = len(shape)
    x = torch.rand((2,) + shape, dtype=torch.float64)
    otfs, power = difference_otfs(shape, dtype=torch.float64)
    grads = image_gradients(x, d)
    assert len(otfs) == len(grads) == d
    dims = tuple(range(-d, 0))
    for p, g in zip(otfs, grads):
        assert torch.allclose(torch.fft.irfftn(torch.fft.rfftn(x, dim=dims) * p, s=shape, dim=dims), g, atol=1e-12)
    assert torch.allclose(power, sum(p.abs() ** 2 for p in otfs) * torch.ones_like(power), atol=1e-12)


@pytest.mark.parametrize("shape", [(20, 24), (6, 10, 9)])
def test_gradient_adjoint_is_the_summed_conjugate_difference_filters(shape):
    d = len(shape)
    zs = [torch.randn((2,) + shape, dtype=torch.float64) for _ in range(d)]
    kept = [z.clone() for z in zs]
    otfs, _ = difference_otfs(shape, dtype=torch.float64)
    dims = tuple(range(-d, 0))
    expected = sum(p.conj() * torch.fft.rfftn(z, dim=dims) for p, z in zip(otfs, zs))
    assert torch.allclose(torch.fft.rfftn(gradient_adjoint(zs), dim=dims), expected, atol=1e-10)
    assert all(torch.equal(z, k) for z, k in zip(zs, kept))  # inputs untouched
    # the adjoint: <D x, z> = <x, Dᵀ z> summed over directions
    x = torch.randn((2,) + shape, dtype=torch.float64)
    lhs = sum((g * z).sum() for g, z in zip(image_gradients(x, d), zs))
    assert torch.allclose(lhs, (x * gradient_adjoint(zs)).sum())
    with pytest.raises(ValueError, match="at least one"):
        gradient_adjoint([])


def test_gradient_order_is_x_then_y_then_z():
    x = torch.zeros(1, 4, 5, 6, dtype=torch.float64)
    x[0, :, :, 3:] = 1.0  # a step along x only
    gx, gy, gz = image_gradients(x, 3)
    assert gx.abs().sum() > 0 and gy.abs().sum() == 0 and gz.abs().sum() == 0


@pytest.mark.parametrize("ks,shape", [((5, 5), (16, 16)), ((3, 5, 5), (8, 16, 12))])
def test_psf2otf_of_a_centred_delta_is_one(ks, shape):
    k = torch.zeros(ks, dtype=torch.float64)
    k[tuple(s // 2 for s in ks)] = 1.0
    otf = psf2otf(k, shape)
    assert otf.shape == shape[:-1] + (shape[-1] // 2 + 1,)
    assert torch.allclose(otf, torch.ones_like(otf))


def test_circular_blur_matches_direct_convolution():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    k = rng.random((3, 5, 3))
    k /= k.sum()
    x = rng.random((7, 12, 10))
    ref = ndimage.convolve(x, k, mode="wrap")
    out = circular_blur(torch.from_numpy(x)[None], psf2otf(torch.from_numpy(k), x.shape), 3)[0].numpy()
    assert np.allclose(out, ref, atol=1e-12)


def test_padding_geometry_pads_by_the_kernel_size_along_every_axis():
    g = padding_geometry((101, 77), (15, 9))
    assert (g.top, g.left) == (15, 9) and g.before == g.after == (15, 9)
    assert g.shape == (101 + 30, 77 + 18) and g.image_shape == (101, 77)
    x = torch.arange(101 * 77.0).reshape(1, 101, 77)
    padded = g.pad(x)
    assert padded.shape == (1,) + g.shape
    assert torch.equal(g.crop(padded), x)
    assert torch.equal(padded[0, :15, 9:-9], x[0, :1].expand(15, -1))  # replicate padding
    g3 = padding_geometry((5, 20, 30), (3, 7, 9))
    assert g3.shape == (11, 34, 48)
    v = torch.rand(2, 5, 20, 30)
    assert torch.equal(g3.crop(g3.pad(v)), v)
    with pytest.raises(ValueError, match="same number of axes"):
        padding_geometry((5, 20, 30), (7, 9))


def test_taper_weights_are_one_inside_and_fall_to_zero_at_the_frame():
    k = torch.ones(3, 5, 7, dtype=torch.float64) / 105
    a = taper_weights(k, (12, 20, 24))
    assert a.shape == (12, 20, 24)
    assert float(a.max()) <= 1.0 and float(a.min()) == 0.0
    assert float(a[6, 10, 12]) == pytest.approx(1.0)



def test_region_widens_the_image_box_and_zero_outside_clears_the_rest():
    geo = padding_geometry((4, 10, 12), (3, 5, 5))  # grid (10, 20, 22), image at (3, 5, 5)
    assert geo.region(0) == (slice(3, 7), slice(5, 15), slice(5, 17))
    assert geo.region(2) == (slice(1, 9), slice(3, 17), slice(3, 19))
    assert geo.region(50) == (slice(0, 10), slice(0, 20), slice(0, 22))  # clipped at the frame
    t = torch.ones(2, *geo.shape)
    out = zero_outside(t, geo.region(1))
    assert out is t and t.sum() == 2 * 6 * 12 * 14
    assert t[:, 2:8, 4:16, 4:18].min() == 1
    assert torch.equal(zero_outside(torch.ones(3, 4), (slice(0, 4),)), torch.ones(3, 4))  # nothing outside

    g = torch.rand(2, 5, 6, requires_grad=True)
    out = zero_outside(g, (slice(1, 4), slice(2, 6)))  # recorded by autograd: a new tensor, same values
    assert out is not g and torch.equal(out.detach(), zero_outside(g.detach().clone(), (slice(1, 4), slice(2, 6))))
    out.sum().backward()
    assert g.grad.sum() == 2 * 3 * 4
