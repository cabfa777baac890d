"""The command line's robustness, run as users run it (a separate process): one-line errors before any
work, batches that go on and resume, inputs never overwritten, Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

CLI = [sys.executable, "-m", "napari_fcnn_deblur.cli"]


def run(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def one_line_error(r: subprocess.CompletedProcess, code: int = 2) -> str:
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.fixture
def inputs(tmp_path, camera_case, known_model_file):
    blurry, k, _ = camera_case
    img, kern = tmp_path / "in.tif", tmp_path / "k.npy"
    tifffile.imwrite(img, blurry.astype(np.float32))
    np.save(kern, k)
    return tmp_path, img, kern, known_model_file


def test_output_and_model_problems_are_one_line_errors_before_any_work(inputs):
    d, img, kern, model = inputs
    (d / "folder.tif").mkdir()
    (d / "afile").write_text("x")
    corrupt = d / "corrupt.safetensors"
    corrupt.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{junk}")
    cases = [
        (["-o", d / "noext"], "no file type"),
        (["-o", d / "out.xyz"], "unknown file type"),
        (["-o", d / "folder.tif"], "existing folder"),
        (["-o", d / "out.png", "--dtype", "float32"], "8/16-bit"),
        (["-o", d / "afile" / "out.tif"], "is a file"),
        (["-o", d / "ok.tif", "--model", corrupt], "corrupt.safetensors"),
    ]
    for extra, message in cases:
        model_args = [] if "--model" in extra else ["--model", model]
        t = time.perf_counter()
        r = run("deblur", img, "-k", kern, *model_args, *extra)
        assert message in one_line_error(r), (extra, r.stderr)
        assert not (d / "ok.tif").exists()
    assert time.perf_counter() - t < 120


def test_batch_names_a_bad_file_goes_on_and_resumes(inputs):
    d, img, kern, model = inputs
    folder, out = d / "batch", d / "out"
    folder.mkdir()
    data = tifffile.imread(img)
    tifffile.imwrite(folder / "a.tif", data)
    (folder / "b.tif").write_bytes(b"II*\x00 not really a tiff")
    tifffile.imwrite(folder / "c.tif", data[::-1].copy())
    r = run("deblur", folder, "-k", kern, "--model", model, "--iterations", "1", "-q", "-o", out)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "b.tif" in r.stderr and "1 of 3 files failed" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.tif", "c.tif"]
    (folder / "b.tif").unlink()
    tifffile.imwrite(folder / "b.tif", data)
    r = run("deblur", folder, "-k", kern, "--model", model, "--iterations", "1", "-o", out, "--skip-existing")
    assert r.returncode == 0, r.stderr
    assert "skipped" in r.stderr and sorted(p.name for p in out.iterdir()) == ["a.tif", "b.tif", "c.tif"]


def test_save_stages_never_writes_over_the_input(inputs):
    d, img, kern, model = inputs
    victim = d / "scan_stage1.tif"
    victim.write_bytes(img.read_bytes())
    before = victim.read_bytes()
    r = run("deblur", victim, "-k", kern, "--model", model, "-o", d / "scan.tif", "--save-stages", "--overwrite")
    assert "would overwrite the input" in one_line_error(r)
    assert victim.read_bytes() == before


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_ctrl_c_exits_130_with_a_message_and_no_output(inputs, camera_case):
    d, _, kern, model = inputs
    blurry, _, _ = camera_case
    big = d / "big.tif"
    tifffile.imwrite(big, np.tile(blurry, (20, 1, 1)).astype(np.float32))  # long enough to interrupt
    out = d / "big_out.tif"
    p = subprocess.Popen([*CLI, "deblur", str(big), "-k", str(kern), "--model", str(model), "-o", str(out)],
                         stderr=subprocess.PIPE, text=True)
    first = p.stderr.read(1)  # the progress bar has started: the run is under way
    assert first
    p.send_signal(signal.SIGINT)
    err = first + p.stderr.read()
    assert p.wait(timeout=120) == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not out.exists() and not [f for f in d.iterdir() if f.name.startswith(".big_out")]
