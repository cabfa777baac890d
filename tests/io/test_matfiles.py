"""MAT files: size cap, damaged files and wrong variables are one-line ValueErrors naming the file."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy.io import savemat

from napari_fcnn_deblur.io import matfiles
from napari_fcnn_deblur.io.matconvnet import load_matconvnet_cascade
from napari_fcnn_deblur.io.matfiles import load_mat, mat_numeric, mat_variables


def test_load_mat_reads_variables(tmp_path):
    p = tmp_path / "k.mat"
    savemat(p, {"kernel": np.eye(5), "note": "text"})
    mat = load_mat(p)
    assert sorted(mat) == ["kernel", "note"]
    np.testing.assert_array_equal(mat_numeric(p, "kernel"), np.eye(5))
    assert [v[:2] for v in mat_variables(p)] == [("kernel", (5, 5)), ("note", (1,))]


def test_junk_and_truncated_files_name_the_file(tmp_path):
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"\0" * 64 + b"not a MATLAB file" * 20)
    with pytest.raises(ValueError, match="junk.mat is not a readable MATLAB"):
        load_mat(junk)
    good = tmp_path / "good.mat"
    savemat(good, {"a": np.arange(10_000.0)}, do_compression=True)
    cut = tmp_path / "cut.mat"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="cut.mat"):
        load_mat(cut)


def test_size_cap_is_checked_before_loading(tmp_path, monkeypatch):
    big = tmp_path / "big.mat"
    savemat(big, {"stack": np.zeros((30, 200, 200))}, do_compression=True)
    monkeypatch.setattr(matfiles, "MAX_VALUES", 1_000_000)
    with pytest.raises(ValueError, match="big.mat holds 1,200,000 values"):
        load_mat(big)
    assert load_mat(big, max_values=2_000_000)["stack"].shape == (30, 200, 200)


@pytest.mark.parametrize(
    "content, message",
    [
        ({"lam": np.ones(4)}, "has no variable 'lambda'"),
        ({"lambda": "abc"}, "not a real numeric array"),
        ({"lambda": np.array([1.0, np.nan, 1.0, 1.0])}, "NaN or infinite"),
        ({"lambda": np.array([1.0, -2.0, 1.0, 1.0])}, "must be positive"),
    ],
)
def test_bad_lambda_mat_is_refused_by_name(tmp_path, content, message):
    folder = tmp_path / "noise0.01"
    folder.mkdir()
    savemat(folder / "lambda.mat", content)
    with pytest.raises(ValueError, match=message):
        load_matconvnet_cascade(folder)


def test_import_command_on_junk_lambda_mat_is_one_line(tmp_path):
    folder = tmp_path / "noise0.01"
    folder.mkdir()
    (folder / "lambda.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\x07" * 200)
    (folder / "iter1_weights.mat").write_bytes(b"junk")
    out = tmp_path / "m.safetensors"
    r = subprocess.run([sys.executable, "-m", "napari_fcnn_deblur.cli", "import-matconvnet", str(folder), "-o", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "lambda.mat" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()
