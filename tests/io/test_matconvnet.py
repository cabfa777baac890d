"""The authors' released cascades run through this engine reach the measured reference PSNR.

Skipped when ../shared/reference (not part of the package) is absent.
"""

import imageio.v3 as iio
import numpy as np
import pytest

from conftest import REFERENCE
from napari_fcnn_deblur import deblur
from napari_fcnn_deblur.io.matconvnet import load_matconvnet_cascade

pytestmark = [pytest.mark.reference, pytest.mark.slow,
              pytest.mark.skipif(not REFERENCE.is_dir(), reason="../shared/reference not present")]

# mean full-image PSNR measured with a replicate-pad + edge-taper engine (reference README)
TARGETS = {0.01: 33.21, 0.03: 30.28, 0.05: 28.94}


def _demo_case(level: float, i: int):
    clean = iio.imread(REFERENCE / "demo" / "clean" / f"clean_{i}.png").astype(np.float32) / 255
    blur = iio.imread(REFERENCE / "demo" / f"noise{level:.2f}" / f"blur_{i}.png").astype(np.float32) / 255
    k = iio.imread(REFERENCE / "demo" / f"noise{level:.2f}" / f"kernel_{i}.png").astype(np.float32)
    k = k / k.sum()
    oy, ox = (k.shape[0] - 1) // 2, (k.shape[1] - 1) // 2  # valid blur: output pixel i ↔ clean pixel i + offset
    return blur, k, clean[oy : oy + blur.shape[0], ox : ox + blur.shape[1]]


@pytest.mark.parametrize("level", sorted(TARGETS))
def test_released_cascades_reach_reference_psnr(level):
    cascade = load_matconvnet_cascade(REFERENCE / "models", level)
    scores = []
    for i in range(1, 9):
        blur, k, gt = _demo_case(level, i)
        out = np.clip(deblur(blur, k, noise_level=level, model=cascade, device="cpu"), 0, 1)
        scores.append(10 * np.log10(1.0 / np.mean((out - gt) ** 2)))
    assert np.mean(scores) >= TARGETS[level] - 0.005, scores


def test_import_command_writes_project_format(tmp_path):
    from napari_fcnn_deblur.cli import main
    from napari_fcnn_deblur.io.models import load_cascade

    out = tmp_path / "released_1pc.safetensors"
    assert main(["import-matconvnet", str(REFERENCE / "models"), "--noise", "0.01", "-o", str(out)]) == 0
    c = load_cascade(out)
    assert c.n_stages == 3
    np.testing.assert_allclose(c.gammas.detach().numpy(), [250, 39.53, 6.251, 0.9884], rtol=1e-3)
    assert out.stat().st_mode & 0o044  # readable by group/others (umask permitting): dask workers, other users


def test_import_refuses_an_existing_output_before_any_work_and_a_zero_stage_folder(tmp_path, monkeypatch):
    import shutil

    from napari_fcnn_deblur.cli import main
    from napari_fcnn_deblur.io import matconvnet

    out = tmp_path / "exists.safetensors"
    out.write_bytes(b"keep me")
    called = []
    monkeypatch.setattr(matconvnet, "load_matconvnet_cascade", lambda *a: called.append(a))
    assert main(["import-matconvnet", str(REFERENCE / "models"), "--noise", "0.01", "-o", str(out)]) == 2
    assert not called and out.read_bytes() == b"keep me"
    monkeypatch.undo()
    empty = tmp_path / "noise0.01"
    empty.mkdir()
    shutil.copy(REFERENCE / "models" / "noise0.01" / "lambda.mat", empty / "lambda.mat")
    with pytest.raises(ValueError, match="at least one stage"):
        matconvnet.load_matconvnet_cascade(empty)
