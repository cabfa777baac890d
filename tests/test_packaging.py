"""The wheel and sdist that `python -m build` makes are installable and hub-ready (slow: builds + a fresh venv)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.name for p in (ROOT / "src" / "napari_fcnn_deblur" / "models").glob("*.safetensors"))


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, **kw)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("build")
    # Why a copy: building writes build/ and *.egg-info next to the sources; the checkout stays clean.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "LICENSE", "README.md"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, src / name)
    if not (src / "README.md").exists():
        (src / "README.md").write_text("napari-fcnn-deblur\n")
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.tmp"))
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: offline and fast, with the setuptools of this environment (same backend as an isolated build)
    _run([sys.executable, "-m", "build", "--no-isolation", "--skip-dependency-check", "--outdir", str(out), str(src)])
    return {"wheel": next(out.glob("*.whl")), "sdist": next(out.glob("*.tar.gz"))}


@pytest.mark.slow
def test_wheel_and_sdist_contain_manifest_and_weights(dists):
    wheel = zipfile.ZipFile(dists["wheel"]).namelist()
    assert "napari_fcnn_deblur/napari.yaml" in wheel
    for name in ("_widget.py", "_sample_data.py", "_reader.py"):
        assert f"napari_fcnn_deblur/{name}" in wheel
    assert any(n.endswith(".dist-info/entry_points.txt") for n in wheel)
    for model in SHIPPED:
        assert f"napari_fcnn_deblur/models/{model}" in wheel
    with tarfile.open(dists["sdist"]) as tar:
        sdist = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
    assert "src/napari_fcnn_deblur/napari.yaml" in sdist
    assert "LICENSE" in sdist
    for model in SHIPPED:
        assert f"src/napari_fcnn_deblur/models/{model}" in sdist
    entry_points = zipfile.ZipFile(dists["wheel"]).read(
        next(n for n in wheel if n.endswith(".dist-info/entry_points.txt"))
    )
    assert b"[napari.manifest]" in entry_points and b"napari_fcnn_deblur:napari.yaml" in entry_points
    metadata = zipfile.ZipFile(dists["wheel"]).read(next(n for n in wheel if n.endswith(".dist-info/METADATA")))
    assert b"Classifier: Framework :: napari" in metadata


@pytest.mark.slow
def test_wheel_installs_and_imports_in_a_fresh_venv(dists, tmp_path):
    env = tmp_path / "venv"
    venv.create(env, system_site_packages=True, with_pip=False)
    py = env / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    # Why the .pth: torch, napari... live in this test environment (maybe itself a venv); appended after the
    # fresh venv's own site-packages, so the package imported below is the installed wheel, not the checkout.
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "zz_test_deps.pth").write_text("\n".join(deps) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", str(dists["wheel"])])
    check = textwrap.dedent(
        f"""
        import pathlib, napari_fcnn_deblur as m
        from importlib.resources import files
        from importlib.metadata import distribution
        assert pathlib.Path(m.__file__).is_relative_to(pathlib.Path({str(site)!r})), m.__file__
        assert (files("napari_fcnn_deblur") / "napari.yaml").is_file()
        for name in {SHIPPED!r}:
            assert (files("napari_fcnn_deblur") / "models" / name).is_file(), name
        eps = [e for e in distribution("napari-fcnn-deblur").entry_points if e.group == "napari.manifest"]
        assert [e.value for e in eps] == ["napari_fcnn_deblur:napari.yaml"], eps
        from npe2 import PluginManifest
        mf = PluginManifest.from_distribution("napari-fcnn-deblur")
        mf.validate_imports()
        import numpy as np
        from napari_fcnn_deblur import available_models
        print("models:", sorted(available_models()))
        """
    )
    out = _run([str(py), "-c", check], cwd=tmp_path)
    levels = sorted(float(n[10:14]) for n in SHIPPED if n.startswith("fcnn_noise"))  # per-level cascades
    assert f"models: {levels}" in out.stdout


def test_readme_links_are_absolute():
    """PyPI and the napari hub show the README out of the repository: relative links and images break there."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    targets = re.findall(r"\]\(([^)]+)\)", readme)
    assert targets
    relative = [t for t in targets if not t.startswith(("https://", "http://", "#"))]
    assert not relative, relative
