"""fcnn-deblur deblur with a 3D PSF: volumetric, voxel sizes read from the files and written back."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile

from conftest import soft_volume_cascade
from napari_fcnn_deblur import deblur
from napari_fcnn_deblur.cli import main
from napari_fcnn_deblur.data.phantoms import blur_volume, phantom_3d
from napari_fcnn_deblur.data.psf3d import widefield_psf_3d
from napari_fcnn_deblur.io.models import save_cascade


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("vol")
    psf = widefield_psf_3d((7, 11, 11), (0.3, 0.1, 0.1), 1.2, 0.52, 1.333)
    fine = widefield_psf_3d((13, 21, 21), (0.15, 0.05, 0.05), 1.2, 0.52, 1.333)
    vol = phantom_3d((22, 40, 40), "filaments", density=0.6, seed=3)
    data, sharp = blur_volume(vol, psf, photons=300.0, read_noise=1.0, offset=100.0, rng=np.random.default_rng(0),
                              uint16=True)
    stack = d / "stack.tif"
    tifffile.imwrite(stack, data, imagej=True, resolution=(10.0, 10.0),
                     metadata={"axes": "ZYX", "spacing": 0.3, "unit": "micron"})
    psf_file = d / "psf_fine.tif"
    tifffile.imwrite(psf_file, fine.astype(np.float32), imagej=True, resolution=(20.0, 20.0),
                     metadata={"axes": "ZYX", "spacing": 0.15, "unit": "micron"})
    model = save_cascade(soft_volume_cascade(), d / "vol.safetensors")
    return d, data, sharp, stack, psf_file, fine, model


def _psnr(units, sharp):
    x = (np.asarray(units, np.float64) - 100) / 300
    return 10 * np.log10(1.0 / np.mean((x - sharp) ** 2))


def test_volume_with_voxel_sizes_from_the_files_as_subprocess(files, tmp_path):
    d, data, sharp, stack, psf_file, fine, model = files
    out = tmp_path / "out.tif"
    r = subprocess.run([sys.executable, "-m", "napari_fcnn_deblur.cli", "deblur", str(stack), "-k", str(psf_file),
                        "--model", str(model), "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "estimated noise level: Poisson" in r.stderr  # --noise defaults to auto for a 3D PSF
    res = tifffile.imread(out)
    assert res.shape == data.shape and res.dtype == np.float32
    assert _psnr(res, sharp) > _psnr(data, sharp) + 0.3  # a hand-set test network: plumbing, not quality
    expected = deblur(data, fine, "auto", model=str(model), spacing=(0.3, 0.1, 0.1), psf_spacing=(0.15, 0.05, 0.05))
    np.testing.assert_allclose(res, expected, rtol=1e-4, atol=1e-2)  # the PSF was resampled to the image's grid
    with tifffile.TiffFile(out) as t:  # voxel sizes written back
        assert t.imagej_metadata["spacing"] == 0.3 and t.series[0].axes == "ZYX"
        xr = t.pages[0].tags["XResolution"].value
        assert abs(xr[1] / xr[0] - 0.1) < 1e-6


def test_spacing_flags_and_errors(files, tmp_path, capsys):
    d, data, _, stack, psf_file, fine, model = files
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, data)  # no voxel size
    args = ["deblur", str(plain), "-k", str(psf_file), "--model", str(model), "--iterations", "1", "-q"]
    assert main(args + ["-o", str(tmp_path / "a.tif")]) == 2
    assert "pass --spacing" in capsys.readouterr().err
    assert main(args + ["-o", str(tmp_path / "a.tif"), "--spacing", "0.3", "0.1", "0.1"]) == 0
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, data[5])
    assert main(["deblur", str(flat), "-k", str(psf_file), "--model", str(model), "-o", str(tmp_path / "b.tif")]) == 2
    assert "needs a volume" in capsys.readouterr().err


def test_measured_bead_stack_is_prepared(files, tmp_path, capsys):
    d, data, _, stack, _, _, model = files
    psf = widefield_psf_3d((7, 11, 11), (0.3, 0.1, 0.1), 1.2, 0.52, 1.333)
    bead = np.zeros((13, 25, 25))
    bead[4:11, 9:20, 7:18] = psf * 5000  # off-centre
    rng = np.random.default_rng(1)
    bead = rng.poisson(bead + 100).astype(np.uint16)
    bead_file = tmp_path / "bead.tif"
    tifffile.imwrite(bead_file, bead)
    assert main(["deblur", str(stack), "-k", str(bead_file), "--model", str(model), "--iterations", "1",
                 "-o", str(tmp_path / "c.tif")]) == 0
    assert "measured 3D PSF" in capsys.readouterr().err


def test_ome_tiff_volume_keeps_its_physical_sizes_and_resamples_the_psf(files, tmp_path):
    d, data, sharp, _, _, fine, model = files
    ome = tmp_path / "in.ome.tif"
    tifffile.imwrite(ome, data, metadata={"axes": "ZYX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.1,
                                          "PhysicalSizeZ": 0.3})
    psf = tmp_path / "psf.ome.tif"
    tifffile.imwrite(psf, fine.astype(np.float32), metadata={"axes": "ZYX", "PhysicalSizeX": 50.0,
                                                             "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 50.0,
                                                             "PhysicalSizeYUnit": "nm", "PhysicalSizeZ": 0.15})
    out = tmp_path / "out.ome.tif"
    assert main(["deblur", str(ome), "-k", str(psf), "--model", str(model), "--iterations", "1", "-q",
                 "--dtype", "float32", "-o", str(out)]) == 0
    with tifffile.TiffFile(out) as t:
        assert t.is_ome and t.series[0].axes == "ZYX"
        xml = t.ome_metadata
        res = t.asarray()
    assert 'PhysicalSizeX="0.1"' in xml and 'PhysicalSizeZ="0.3"' in xml
    # the PSF's nm were read as such: resampled from 0.15 × 0.05 × 0.05 µm to the image's grid
    expected = deblur(data, fine, "auto", model=str(model), iterations=1, spacing=(0.3, 0.1, 0.1),
                      psf_spacing=(0.15, 0.05, 0.05))
    np.testing.assert_allclose(res, expected, rtol=1e-4, atol=1e-2)


def test_channels_of_a_volume_to_ome_zarr_with_one_psf(files, tmp_path):
    zarr = pytest.importorskip("zarr")
    d, data, _, _, _, _, model = files
    psf = widefield_psf_3d((3, 11, 11), (0.3, 0.1, 0.1), 1.2, 0.52, 1.333)  # kz = 3 = the channel count
    psf_file = tmp_path / "psf.npy"
    np.save(psf_file, psf)
    czyx = np.stack([data, data[:, ::-1], data[:, :, ::-1]])
    ome = tmp_path / "in.ome.tif"
    tifffile.imwrite(ome, czyx, metadata={"axes": "CZYX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.1,
                                          "PhysicalSizeZ": 0.3, "Channel": {"Name": ["DAPI", "GFP", "RFP"]}})
    out = tmp_path / "out.zarr"
    assert main(["deblur", str(ome), "-k", str(psf_file), "--model", str(model), "--iterations", "1", "-q",
                 "--channel-axis", "0", "--noise", "0.01", "-o", str(out)]) == 0
    g = zarr.open_group(str(out), mode="r")
    ms = g.attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "z", "y", "x"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.3, 0.1, 0.1]
    assert [c["label"] for c in g.attrs["ome"]["omero"]["channels"]] == ["DAPI", "GFP", "RFP"]
    res = np.asarray(g["0"])
    for c in range(3):  # every channel deconvolved volumetrically with the one PSF
        expected = deblur(czyx[c], psf, 0.01, model=str(model), iterations=1)
        np.testing.assert_allclose(res[c], expected.astype(res.dtype), rtol=1e-4, atol=1.0)
