import copy

import numpy as np
import pytest
import torch

from conftest import line_kernel, psnr
from napari_fcnn_deblur.core.cascade import MARGIN_KEY, REFILLS_KEY, Cascade, WholeGrid
from napari_fcnn_deblur.core.solver import prepare_problem


def test_stage_loop_yields_every_stage_and_keeps_gradients(known_cascade, camera_case):
    blurry, k, gt = camera_case
    y, kt = torch.from_numpy(blurry)[None], torch.from_numpy(k)
    with torch.no_grad():
        outs = list(known_cascade.run(y, kt))
    assert [o.stage for o in outs] == [0, 1, 2, 3]
    assert outs[0].gradients is None and len(outs[1].gradients) == 2
    assert outs[-1].image.shape == y.shape
    # the hand-set soft-threshold cascade sharpens: the last stage beats the initial deconvolution
    assert psnr(outs[-1].image[0].numpy(), gt) > psnr(outs[0].image[0].numpy(), gt)


def test_denoise_strategy_is_what_runs(known_cascade, camera_case):
    blurry, k, _ = camera_case
    problem = prepare_problem(torch.from_numpy(blurry)[None], torch.from_numpy(k))
    calls = []

    def zero(net, x, ndim):
        calls.append(ndim)
        return [torch.zeros_like(x) for _ in range(ndim)]

    with torch.no_grad():
        outs = list(known_cascade.run(problem=problem, denoise=zero, keep_gradients=False))
        default = list(known_cascade.run(problem=problem, denoise=WholeGrid()))
    assert calls == [2, 2, 2]
    assert all(o.gradients is None for o in outs)
    assert not torch.allclose(outs[-1].x_padded, default[-1].x_padded)


def test_narrow_cascade_and_iterations_checks():
    c = Cascade(2, width=4)
    assert c.width == 4 and c.n_stages == 2
    assert c.check_iterations(None) == 2 and c.check_iterations(np.int64(1)) == 1
    for bad in (3, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="iterations"):
            c.check_iterations(bad)
    with pytest.raises(ValueError, match="gammas"):
        Cascade(2, gammas=[1.0, 2.0])


def test_forward_is_differentiable_in_gamma():
    torch.manual_seed(0)
    c = Cascade(1, width=4)
    y = torch.rand(1, 40, 40)
    out = c(y, torch.from_numpy(line_kernel(5, 0.0)))
    out.mean().backward()
    assert c.log_gammas.grad is not None and torch.all(torch.isfinite(c.log_gammas.grad))


def test_boundary_refills_run_per_stage_and_follow_the_model(known_cascade, camera_case, tmp_path):
    """refills=0 is the plain loop; r refills solve eq. 6 r times per stage with a refilled frame; a cascade's
    metadata sets its default (kept through a save/load), and bad values are refused."""
    from napari_fcnn_deblur.io.models import load_cascade, save_cascade

    blurry, k, gt = camera_case
    y, kt = torch.from_numpy(blurry)[None], torch.from_numpy(k)
    with torch.no_grad():
        plain = [o.image.clone() for o in known_cascade.run(y, kt)]
        zero = [o.image.clone() for o in known_cascade.run(y, kt, refills=0)]
        two = [o.image.clone() for o in known_cascade.run(y, kt, refills=2)]
    assert all(torch.equal(a, b) for a, b in zip(plain, zero))
    assert torch.equal(two[0], plain[0])  # the initial deconvolution has no estimate to refill from
    assert not torch.allclose(two[-1], plain[-1])
    # the refilled frame helps the hand-set cascade too
    assert psnr(two[-1][0].numpy(), gt) > psnr(plain[-1][0].numpy(), gt)

    c = Cascade(1, width=2, metadata={REFILLS_KEY: "2"})
    assert c.refills == 2
    assert load_cascade(save_cascade(c, tmp_path / "c.safetensors")).refills == 2
    assert known_cascade.refills == 0
    for bad in (-1, 1.5, True, "two"):
        with pytest.raises(ValueError, match="refills"):
            list(known_cascade.run(y, kt, refills=bad))


def test_network_margin_restricts_the_priors_to_the_image_box(known_cascade, camera_case, tmp_path):
    """A cascade with a network margin m (metadata) uses its networks' gradients on the image ± m and zero
    target gradients in the rest of the frame; without one, the whole grid (the paper's setting). The
    margin survives a save/load; bad values are refused; the loop stays differentiable."""
    from napari_fcnn_deblur.io.models import load_cascade, save_cascade

    blurry, k, gt = camera_case
    y, kt = torch.from_numpy(blurry)[None], torch.from_numpy(k)
    margin = copy.deepcopy(known_cascade)
    margin.metadata[MARGIN_KEY] = "3"
    assert known_cascade.network_margin is None and margin.network_margin == 3
    with torch.no_grad():
        plain = list(known_cascade.run(y, kt, iterations=1))
        restricted = list(margin.run(y, kt, iterations=1))
    region = restricted[1].problem.geometry.region(3)
    for zp, zr in zip(plain[1].gradients, restricted[1].gradients):
        inside = (slice(None),) + region
        torch.testing.assert_close(zr[inside], zp[inside])  # same networks, same input (stage 0 is shared)
        outside = torch.ones_like(zr, dtype=torch.bool)
        outside[inside] = False
        assert zr[outside].abs().max() == 0 and zp[outside].abs().max() > 0
    # the frame is not observed: the image changes little, and still gains over the blurry input
    out = restricted[-1].image[0].numpy()
    assert abs(psnr(out, gt) - psnr(plain[-1].image[0].numpy(), gt)) < 0.5
    assert psnr(out, gt) > psnr(blurry, gt) + 2
    assert load_cascade(save_cascade(margin, tmp_path / "m.safetensors")).network_margin == 3
    for bad in ("-1", "1.5", "wide"):
        with pytest.raises(ValueError, match="network margin"):
            _ = Cascade(1, width=2, metadata={MARGIN_KEY: bad}).network_margin
    torch.manual_seed(0)
    c = Cascade(1, width=4, metadata={MARGIN_KEY: "2"})
    c(torch.rand(1, 40, 40), torch.from_numpy(line_kernel(5, 0.0))).mean().backward()
    assert all(p.grad is not None for p in c.denoisers.parameters())
