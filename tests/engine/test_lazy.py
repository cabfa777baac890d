"""dask arrays in → lazy dask arrays out, equal to the eager results."""

import subprocess
import sys

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
import dask  # noqa: E402

from napari_fcnn_deblur import deblur  # noqa: E402


@pytest.fixture(scope="module")
def stack(camera_case):
    """(3, 176, 176) uint16 stack in camera units (robust percentile scaling)."""
    blurry, k, _ = camera_case
    planes = np.stack([blurry, blurry[::-1], blurry[:, ::-1]])
    return (planes.clip(0, 1) * 3000 + 100).round().astype(np.uint16), k


def test_lazy_stack_threads_equals_eager(stack, known_model_file):
    img, k = stack
    eager = deblur(img, k, model=known_model_file, iterations=2)
    lazy = deblur(da.from_array(img, chunks=(2, 64, 64)), k, model=known_model_file, iterations=2)
    assert isinstance(lazy, da.Array)
    assert lazy.dtype == np.float32 and lazy.shape == img.shape
    assert lazy.chunks == ((1, 1, 1), (img.shape[1],), (img.shape[2],))  # one (Y, X) plane per task
    with dask.config.set(scheduler="threads"):
        out = lazy.compute()
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, eager)


def test_lazy_rgba_auto_noise_and_tiles(camera_case, known_cascade):
    blurry, k, _ = camera_case
    rgba = np.stack([blurry, blurry * 0.5, blurry * 0.8, np.full_like(blurry, 0.7)], axis=-1)
    eager = deblur(rgba, k, noise_level="auto", model=known_cascade, iterations=1, tile_size=64)
    lazy = deblur(da.from_array(rgba), k, noise_level="auto", model=known_cascade, iterations=1, tile_size=64)
    out = lazy.compute(scheduler="sync")
    assert out.shape == rgba.shape and np.all(out[..., 3] == np.float32(0.7))
    np.testing.assert_array_equal(out, eager)


def test_lazy_checks_arguments_up_front(stack, known_cascade):
    img, k = stack
    with pytest.raises(ValueError, match="iterations"):
        deblur(da.from_array(img), k, model=known_cascade, iterations=7)
    with pytest.raises(ValueError, match="NaN"):
        deblur(da.from_array(np.full((20, 20), np.nan)), np.ones((3, 3)), model=known_cascade)
    with pytest.raises(ValueError, match="at least 2D"):
        deblur(da.ones(10), np.ones((3, 3)), model=known_cascade)


def test_package_import_does_not_import_dask():
    code = (
        "import sys; import napari_fcnn_deblur, napari_fcnn_deblur.cli, napari_fcnn_deblur.engine.tiles; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed', 'zarr')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=40
        ) as c,
        distributed.Client(c) as client,
    ):
        yield c, client


@pytest.mark.slow
def test_lazy_stack_on_local_cluster(stack, known_model_file, cluster):
    img, k = stack
    _, client = cluster
    eager = deblur(img, k, model=known_model_file, iterations=2)
    lazy = deblur(da.from_array(img), k, model=str(known_model_file), iterations=2)
    out = client.compute(lazy).result()
    np.testing.assert_allclose(out, eager, rtol=0, atol=1e-3)  # other processes: same numbers up to threading
    assert np.abs(out - eager).max() / 3000 < 1e-6


@pytest.mark.slow
def test_cli_scheduler_address(stack, known_model_file, cluster, tmp_path):
    import tifffile

    from napari_fcnn_deblur.cli import main

    img, k = stack
    cl, _ = cluster
    src, kern = tmp_path / "stack.tif", tmp_path / "k.npy"
    tifffile.imwrite(src, img, photometric="minisblack")
    np.save(kern, k)
    base = ["deblur", str(src), "-k", str(kern), "--model", str(known_model_file), "--iterations", "1", "-q"]
    assert main(base + ["-o", str(tmp_path / "eager.tif")]) == 0
    assert main(base + ["-o", str(tmp_path / "dist.zarr"), "--scheduler", cl.scheduler_address]) == 0
    import zarr

    np.testing.assert_allclose(
        zarr.open_array(str(tmp_path / "dist.zarr"), mode="r")[...], tifffile.imread(tmp_path / "eager.tif"), atol=1e-3
    )
