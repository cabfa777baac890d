"""Batch command line: TIFF stacks, zarr, folders, atomic writes, --noise auto, --scheduler."""

import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_fcnn_deblur import deblur, deblur_stages
from napari_fcnn_deblur.cli import commands as cli
from napari_fcnn_deblur.cli import main
from napari_fcnn_deblur.data.samples import blur_valid


@pytest.fixture
def stack_files(tmp_path, camera_case, known_model_file):
    blurry, k, _ = camera_case
    stack = (np.stack([blurry, blurry[::-1], blurry[:, ::-1]]).clip(0, 1) * 3000 + 100).round().astype(np.uint16)
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, stack, photometric="minisblack")
    kern = tmp_path / "kernel.npy"
    np.save(kern, k)
    base = ["deblur", str(src), "-k", str(kern), "--model", str(known_model_file), "--iterations", "1", "-q"]
    return stack, src, base


def test_tiff_stack_shape_dtype_and_no_overwrite(stack_files, tmp_path, known_model_file, capsys):
    stack, src, base = stack_files
    out = tmp_path / "out.tif"
    assert main(base + ["-o", str(out)]) == 0
    res = tifffile.imread(out)
    assert res.shape == stack.shape and res.dtype == np.float32
    expected = deblur(stack, np.load(tmp_path / "kernel.npy"), model=known_model_file, iterations=1)
    np.testing.assert_allclose(res, expected, atol=1e-3)
    before = out.read_bytes()
    assert main(base + ["-o", str(out), "--dtype", "input"]) == 2
    assert "exists" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(base + ["-o", str(out), "--dtype", "input", "--overwrite"]) == 0
    as_input = tifffile.imread(out)
    assert as_input.dtype == np.uint16 and as_input.shape == stack.shape
    assert main(base + ["-o", str(tmp_path / "u8.tif"), "--dtype", "uint8"]) == 0
    assert tifffile.imread(tmp_path / "u8.tif").dtype == np.uint8
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporaries left


def test_interrupted_tiff_write_leaves_no_file(stack_files, tmp_path, monkeypatch, capsys):
    _, _, base = stack_files
    out = tmp_path / "out.tif"

    def half_write(path, array, **kw):
        with open(path, "wb") as f:
            f.write(b"II*\x00 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(tifffile, "imwrite", half_write)
    assert main(base + ["-o", str(out)]) == 130  # Ctrl-C: exit status 130, a message, no traceback
    assert "interrupted" in capsys.readouterr().err
    assert list(tmp_path.glob("*out*")) == [] and list(tmp_path.glob(".*")) == []


def test_interrupted_zarr_write_leaves_no_store(stack_files, tmp_path, monkeypatch):
    pytest.importorskip("zarr")
    _, _, base = stack_files
    out = tmp_path / "out.zarr"
    calls = []
    original = cli.write_zarr_block

    def fail_on_second(arr, region, block):
        calls.append(region)
        if len(calls) == 2:
            raise KeyboardInterrupt
        original(arr, region, block)

    monkeypatch.setattr(cli, "write_zarr_block", fail_on_second)
    assert main(base + ["-o", str(out)]) == 130
    assert len(calls) == 2
    assert not out.exists() and not (tmp_path / ".out.partial.zarr").exists()


def test_folder_run(tmp_path, camera_case, known_model_file):
    blurry, k, _ = camera_case
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    u8 = (blurry.clip(0, 1) * 255).round().astype(np.uint8)
    iio.imwrite(folder / "a.png", u8)
    iio.imwrite(folder / "b.png", u8[::-1].copy())
    tifffile.imwrite(folder / "c.tif", blurry.astype(np.float32))
    (folder / "notes.txt").write_text("not an image")
    np.save(tmp_path / "k.npy", k)
    args = [
        "deblur",
        str(folder),
        "-k",
        str(tmp_path / "k.npy"),
        "--model",
        str(known_model_file),
        "-o",
        str(out),
        "-q",
    ]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.tif"]
    assert iio.imread(out / "a.png").dtype == np.uint8
    c = tifffile.imread(out / "c.tif")
    assert c.dtype == np.float32
    np.testing.assert_allclose(c, deblur(blurry, k, model=known_model_file), atol=1e-5)
    assert main(args) == 2  # outputs exist: nothing is overwritten


def test_zarr_round_trip_and_scheduler(stack_files, tmp_path, camera_case):
    zarr = pytest.importorskip("zarr")
    stack, _, base = stack_files
    base = base[:1] + base[2:]  # drop the TIFF input
    plain = tmp_path / "in.zarr"
    zarr.create_array(str(plain), data=stack, chunks=(1, 64, 64))
    ome = tmp_path / "ome.zarr"  # OME-Zarr 0.4 layout: group, multiscales, level arrays "0", "1"
    root = zarr.open_group(str(ome), mode="w", zarr_format=2)
    root.create_array("0", data=stack, chunks=(1, 176, 176))
    root.create_array("1", data=stack[:, ::2, ::2], chunks=(1, 88, 88))
    ms = {"version": "0.4", "axes": [{"name": a} for a in "zyx"], "datasets": [{"path": "0"}, {"path": "1"}]}
    root.attrs["multiscales"] = [ms]

    assert main(base[:1] + [str(plain)] + base[1:] + ["-o", str(tmp_path / "a.zarr")]) == 0
    a = zarr.open_array(str(tmp_path / "a.zarr"), mode="r")
    assert a.shape == stack.shape and a.dtype == np.float32
    assert main(base[:1] + [str(plain)] + base[1:] + ["-o", str(tmp_path / "a.tif")]) == 0
    np.testing.assert_allclose(a[...], tifffile.imread(tmp_path / "a.tif"), atol=1e-6)

    assert (
        main(
            base[:1]
            + [str(ome)]
            + base[1:]
            + ["-o", str(tmp_path / "b.zarr"), "--dtype", "input", "--scheduler", "threads"]
        )
        == 0
    )
    b = zarr.open_group(str(tmp_path / "b.zarr"), mode="r")
    assert b.attrs["multiscales"][0]["datasets"] == [{"path": "0"}, {"path": "1"}]  # every level written
    assert b["0"].dtype == np.uint16 and b["0"].shape == stack.shape
    assert b["1"].dtype == np.uint16 and b["1"].shape == stack[:, ::2, ::2].shape
    lvl0 = b["0"][...].astype(np.float64)
    means = lvl0.reshape(lvl0.shape[0], lvl0.shape[1] // 2, 2, lvl0.shape[2] // 2, 2).mean(axis=(2, 4))
    assert np.abs(b["1"][...] - np.rint(means)).max() <= 1  # level 1 is the 2×2 mean of the result
    expected = np.clip(np.rint(a[...]), 0, 65535).astype(np.uint16)
    assert np.abs(b["0"][...].astype(int) - expected.astype(int)).max() <= 1  # rounding of float32 round-off

    # refuses to overwrite a zarr store, even through dask
    assert main(base[:1] + [str(plain)] + base[1:] + ["-o", str(tmp_path / "a.zarr"), "--scheduler", "threads"]) == 2


@pytest.fixture
def three_models(tmp_path, monkeypatch):
    """Shipped-model slots for 0.01 / 0.03 / 0.05 filled with test cascades (told apart by γ0)."""
    from conftest import soft_threshold_cascade
    from napari_fcnn_deblur.io import models as model_io

    paths = {}
    for level, g0 in ((0.01, 200.0), (0.03, 100.0), (0.05, 50.0)):
        c = soft_threshold_cascade(gammas=(g0, 60.0, 20.0, 5.0))
        c.noise_level = level
        paths[level] = model_io.save_cascade(c, tmp_path / f"fcnn_noise{level:.2f}.safetensors")
    monkeypatch.setattr(model_io, "shipped_model_path", lambda level: paths[level])
    # no noise-map cascade: the default is the nearest per-level one, whatever the measured table says
    monkeypatch.setattr(model_io, "noisemap_model_path", lambda: tmp_path / "no_noisemap.safetensors")
    return paths


@pytest.fixture
def noisy3(camera_case):
    _, k, _ = camera_case
    from skimage import data

    sharp = data.camera()[80:256, 180:356].astype(np.float32) / 255
    blurry, _ = blur_valid(sharp, k, 0.03, seed=4)
    return blurry.astype(np.float32), k


def test_auto_noise_picks_the_model(noisy3, three_models, caplog):
    import logging

    img, k = noisy3
    with caplog.at_level(logging.INFO, logger="napari_fcnn_deblur"):
        first = next(deblur_stages(img, k, noise_level="auto", iterations=1))
    assert abs(first.noise_level - 0.03) < 0.005
    assert first.gamma == pytest.approx(100.0, rel=1e-4)  # γ0 of the 0.03 model
    assert "estimated noise level" in caplog.text
    explicit = next(deblur_stages(img, k, noise_level=0.01, iterations=1))
    assert explicit.noise_level == 0.01 and explicit.gamma == pytest.approx(200.0, rel=1e-4)
    np.testing.assert_array_equal(
        deblur(img, k, noise_level="auto", iterations=1), deblur(img, k, noise_level=first.noise_level, iterations=1)
    )


def test_cli_noise_auto_prints_estimate(noisy3, three_models, tmp_path, capsys):
    img, k = noisy3
    tifffile.imwrite(tmp_path / "img.tif", img)
    np.save(tmp_path / "k.npy", k)
    args = ["deblur", str(tmp_path / "img.tif"), "-k", str(tmp_path / "k.npy"), "--noise", "auto", "--iterations", "1"]
    assert main(args + ["-o", str(tmp_path / "out.tif"), "-q"]) == 0
    err = capsys.readouterr().err
    assert "estimated noise level: σ = 0.03" in err and "model: per-level cascade 3 %" in err
    with pytest.raises(SystemExit):
        main(args[:-2] + ["--noise", "loud", "-o", str(tmp_path / "bad.tif")])


# ----------------------------------------------------------------------------- robustness (issue 15)


def test_version_and_output_problems_found_before_any_work(tmp_path, camera_case, known_model_file, monkeypatch,
                                                          capsys):
    import subprocess
    import sys

    from napari_fcnn_deblur import __version__
    from napari_fcnn_deblur.engine.run import DeblurRun

    r = subprocess.run([sys.executable, "-m", "napari_fcnn_deblur.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and __version__ in r.stdout
    blurry, k, _ = camera_case
    img, kern = tmp_path / "in.tif", tmp_path / "k.npy"
    tifffile.imwrite(img, blurry.astype(np.float32))
    np.save(kern, k)
    ran = []
    monkeypatch.setattr(DeblurRun, "deblur", lambda *a, **kw: ran.append(1))
    (tmp_path / "afolder").mkdir()
    (tmp_path / "afile").write_text("x")
    cases = {
        "noext": "no file type",
        "out.xyz": "unknown file type",
        "afolder": "no file type",
        "afolder.tif": None,  # made a folder below
        "afile/out.tif": "is a file, not a folder",
        "out.png": "stores 8/16-bit integers",
        "in.tif": "is an input file",
    }
    (tmp_path / "afolder.tif").mkdir()
    cases["afolder.tif"] = "existing folder"
    for name, message in cases.items():
        rc = main(["deblur", str(img), "-k", str(kern), "-o", str(tmp_path / name), "--model", str(known_model_file),
                   "-q", "--overwrite"])
        assert rc == 2, name
        assert message in capsys.readouterr().err, name
    assert not ran  # every problem was found before any deblurring


def test_save_stages_never_overwrites_the_input(tmp_path, camera_case, known_model_file):
    blurry, k, _ = camera_case
    img, kern = tmp_path / "scan_stage1.tif", tmp_path / "k.npy"
    tifffile.imwrite(img, blurry.astype(np.float32))
    np.save(kern, k)
    before = img.read_bytes()
    rc = main(["deblur", str(img), "-k", str(kern), "-o", str(tmp_path / "scan.tif"), "--save-stages", "--overwrite",
               "--model", str(known_model_file), "-q"])
    assert rc == 2 and img.read_bytes() == before


def test_batch_goes_on_after_a_bad_file_names_it_and_resumes_with_skip_existing(tmp_path, camera_case,
                                                                                known_model_file, capsys):
    blurry, k, _ = camera_case
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for name in ("a.tif", "c.tif"):
        tifffile.imwrite(folder / name, blurry.astype(np.float32))
    (folder / "b.tif").write_bytes(b"not a tiff")
    kern = tmp_path / "k.npy"
    np.save(kern, k)
    args = ["deblur", str(folder), "-k", str(kern), "-o", str(out), "--model", str(known_model_file), "-q",
            "--iterations", "1"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "b.tif" in err and "1 of 3 files failed" in err
    assert (out / "a.tif").is_file() and (out / "c.tif").is_file() and not (out / "b.tif").exists()
    tifffile.imwrite(folder / "b.tif", blurry.astype(np.float32))  # fixed: only it is done again
    mtime = (out / "a.tif").stat().st_mtime_ns
    assert main(args + ["--skip-existing"]) == 0
    assert (out / "b.tif").is_file() and (out / "a.tif").stat().st_mtime_ns == mtime


def test_atomic_writer_does_not_follow_a_planted_link(tmp_path):
    from napari_fcnn_deblur.io.images import write_image_atomic

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out" / "result.tif"
    out.parent.mkdir()
    (out.parent / ".result.tif.partial.tif").symlink_to(victim)  # the old predictable name
    write_image_atomic(out, np.ones((8, 8), np.float32))
    assert victim.read_text() == "precious"
    np.testing.assert_array_equal(tifffile.imread(out), np.ones((8, 8), np.float32))
    assert [p.name for p in out.parent.iterdir() if "partial" in p.name] == [".result.tif.partial.tif"]


def test_cli_channel_axis_with_one_kernel_per_channel(tmp_path, camera_case, known_model_file):
    from conftest import line_kernel

    blurry, k, _ = camera_case
    k2 = line_kernel(7, 100.0)
    img = (np.stack([blurry, blurry[::-1]]).clip(0, 1) * 3000 + 100).astype(np.uint16)
    tifffile.imwrite(tmp_path / "two.tif", img)
    np.save(tmp_path / "k1.npy", k)
    np.save(tmp_path / "k2.npy", k2)
    base = ["deblur", str(tmp_path / "two.tif"), "-k", str(tmp_path / "k1.npy"), "-k", str(tmp_path / "k2.npy"),
            "--model", str(known_model_file), "-q"]
    assert main(base + ["-o", str(tmp_path / "out.tif"), "--channel-axis", "0"]) == 0
    expected = deblur(img, [k, k2], 0.01, model=known_model_file, channel_axis=0)
    np.testing.assert_allclose(tifffile.imread(tmp_path / "out.tif"), expected, atol=1e-3)
    assert main(base + ["-o", str(tmp_path / "nochan.tif")]) == 2  # two kernels need --channel-axis
    assert main(base + ["-o", str(tmp_path / "st.tif"), "--channel-axis", "0", "--save-stages",
                        "--iterations", "1"]) == 0
    assert tifffile.imread(tmp_path / "st_stage1.tif").shape == img.shape


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "napari_fcnn_deblur.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_dtype_conversion_rule_as_subprocess(tmp_path, camera_case, known_model_file):
    """float [0, 1] → uint8 is ×255 (not only 0 and 1); uint16 → uint8 maps the intensity range onto 0–255
    (not all 255); the input's own type keeps its units; --intensity-range sets the mapped range."""
    blurry, k, _ = camera_case
    np.save(tmp_path / "k.npy", k)
    common = ["-k", str(tmp_path / "k.npy"), "--model", str(known_model_file), "--iterations", "1", "-q"]
    f32 = tmp_path / "f.tif"
    tifffile.imwrite(f32, blurry.astype(np.float32))
    r = _cli("deblur", str(f32), *common, "-o", str(tmp_path / "f.tif.npy"))
    assert r.returncode == 0, r.stderr
    ref = np.load(tmp_path / "f.tif.npy")
    r = _cli("deblur", str(f32), *common, "-o", str(tmp_path / "f8.png"), "--dtype", "uint8")
    assert r.returncode == 0, r.stderr
    u8 = iio.imread(tmp_path / "f8.png")
    assert u8.dtype == np.uint8 and len(np.unique(u8)) > 100
    np.testing.assert_array_equal(u8, np.clip(np.rint(ref.astype(np.float64) * 255.0), 0, 255).astype(np.uint8))

    offset, gain = 100, 3000  # camera-like uint16: values 100..3100
    u16 = (blurry.clip(0, 1) * gain + offset).round().astype(np.uint16)
    src16 = tmp_path / "u16.tif"
    tifffile.imwrite(src16, u16)
    r = _cli("deblur", str(src16), *common, "-o", str(tmp_path / "same.tif"), "--dtype", "uint16")
    assert r.returncode == 0, r.stderr
    same = tifffile.imread(tmp_path / "same.tif")
    assert same.dtype == np.uint16 and 50 < np.median(same) < 3200  # units kept
    r = _cli("deblur", str(src16), *common, "-o", str(tmp_path / "to8.png"), "--dtype", "uint8")
    assert r.returncode == 0, r.stderr
    to8 = iio.imread(tmp_path / "to8.png").astype(np.float64)
    assert (to8 == 255).mean() < 0.05 and to8.std() > 30  # not saturated: a real 8-bit picture
    lo, hi = np.percentile(u16, [0.05, 99.95])
    expected = np.clip(np.rint((same.astype(np.float64) - lo) * 255 / (hi - lo)), 0, 255)
    assert np.abs(to8 - expected).mean() < 1.0  # the same result, its intensity range onto 0–255
    r = _cli("deblur", str(src16), *common, "-o", str(tmp_path / "fixed.png"), "--dtype", "uint8",
             "--intensity-range", "0", "4095")
    assert r.returncode == 0, r.stderr
    fixed = iio.imread(tmp_path / "fixed.png").astype(np.float64)
    assert abs(np.median(fixed) - np.median(same) * 255 / 4095) < 2  # 12-bit range onto 0–255


def _cli_meta_case(tmp_path, camera_case, known_model_file):
    blurry, k, _ = camera_case
    np.save(tmp_path / "k.npy", k)
    stack = np.stack([blurry, blurry[::-1], blurry[:, ::-1], blurry]).astype(np.float32)  # Z=2 × C=2
    common = ["-k", str(tmp_path / "k.npy"), "--model", str(known_model_file), "--iterations", "1", "-q"]
    return stack.reshape(2, 2, *blurry.shape), common


def test_tiff_metadata_survives_as_subprocess(tmp_path, camera_case, known_model_file):
    """ImageJ hyperstacks keep voxel sizes, unit and labels; OME-TIFFs physical sizes and channel names;
    plain TIFFs their resolution tags; a TIFF to .zarr becomes OME-Zarr with its scales."""
    stack, common = _cli_meta_case(tmp_path, camera_case, known_model_file)
    ij = tmp_path / "ij.tif"
    tifffile.imwrite(ij, stack, imagej=True, resolution=(1 / 0.108, 1 / 0.108),
                     metadata={"axes": "ZCYX", "spacing": 0.3, "unit": "micron", "Labels": ["a", "b", "c", "d"]})
    r = _cli("deblur", str(ij), *common, "-o", str(tmp_path / "ij_out.tif"))
    assert r.returncode == 0, r.stderr
    with tifffile.TiffFile(tmp_path / "ij_out.tif") as t:
        assert t.is_imagej and t.series[0].axes == "ZCYX" and t.series[0].shape == stack.shape
        assert t.imagej_metadata["spacing"] == 0.3 and t.imagej_metadata["unit"] == "micron"
        assert t.imagej_metadata["Labels"] == ["a", "b", "c", "d"]
        xr = t.pages[0].tags["XResolution"].value
        assert abs(xr[1] / xr[0] - 0.108) < 1e-6

    ome = tmp_path / "in.ome.tif"
    tifffile.imwrite(ome, stack, metadata={"axes": "ZCYX", "PhysicalSizeX": 0.065, "PhysicalSizeY": 0.065,
                                           "PhysicalSizeZ": 0.2, "Channel": {"Name": ["DAPI", "GFP"]}})
    r = _cli("deblur", str(ome), *common, "-o", str(tmp_path / "ome_out.tif"), "--dtype", "float32")
    assert r.returncode == 0, r.stderr
    with tifffile.TiffFile(tmp_path / "ome_out.tif") as t:
        assert t.is_ome and t.series[0].axes == "ZCYX"
        xml = t.ome_metadata
    assert 'PhysicalSizeX="0.065"' in xml and 'PhysicalSizeZ="0.2"' in xml
    assert 'Name="DAPI"' in xml and 'Name="GFP"' in xml

    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, stack[0, 0], resolution=(300, 300), resolutionunit=2)
    r = _cli("deblur", str(plain), *common, "-o", str(tmp_path / "plain_out.tif"))
    assert r.returncode == 0, r.stderr
    with tifffile.TiffFile(tmp_path / "plain_out.tif") as t:
        assert t.pages[0].tags["XResolution"].value == (300, 1) and t.pages[0].tags["ResolutionUnit"].value == 2


def test_tiff_to_zarr_is_ome_zarr_with_scales_and_pyramid(tmp_path, camera_case, known_model_file, monkeypatch):
    zarr = pytest.importorskip("zarr")
    from napari_fcnn_deblur.io import images

    monkeypatch.setattr(images, "PYRAMID_MIN_SIDE", 64)  # small test image, still two levels
    stack, common = _cli_meta_case(tmp_path, camera_case, known_model_file)
    ome = tmp_path / "in.ome.tif"
    zcyx = np.ascontiguousarray(stack.transpose(1, 0, 2, 3))  # OME-Zarr wants C before Z
    tifffile.imwrite(ome, zcyx, metadata={"axes": "CZYX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.1,
                                          "PhysicalSizeZ": 0.25, "Channel": {"Name": ["DAPI", "GFP"]}})
    assert main(["deblur", str(ome), *common, "-o", str(tmp_path / "out.zarr")]) == 0
    g = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    ms = g.attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "z", "y", "x"]
    assert ms["axes"][2]["unit"] == "micrometer"
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    assert scales[0] == [1.0, 0.25, 0.1, 0.1] and len(scales) >= 2 and scales[1][2] == pytest.approx(0.2)
    assert g["0"].shape == zcyx.shape and g["1"].shape == zcyx.shape[:2] + tuple((n + 1) // 2 for n in zcyx.shape[2:])
    assert [c["label"] for c in g.attrs["ome"]["omero"]["channels"]] == ["DAPI", "GFP"]
