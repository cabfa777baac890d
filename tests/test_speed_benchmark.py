"""benchmarks/speed.py: rows for the per-level cascade and the default noise-map cascade (all its stages and
refills), FLOPs that count what each runs, and a report section that replaces only ``## Speed``."""

from __future__ import annotations

import pytest

from conftest import load_benchmark
from napari_fcnn_deblur.io.models import NOISEMAP_MODEL, get_model


def test_flops_count_the_network_and_the_refills():
    sb = load_benchmark("speed")
    base = sb.cascade_flops((64, 96), (9, 9), 3)
    assert sb.cascade_flops((64, 96), (9, 9), 3, macs_per_pixel=2 * sb.MACS_PER_PIXEL) > 1.9 * base
    assert sb.cascade_flops((64, 96), (9, 9), 3, refills=20) > base  # FFTs of the refills
    assert sb.cascade_flops((64, 96), (9, 9), 5) > base


@pytest.mark.slow
def test_rows_of_both_cascades(tmp_path, monkeypatch):
    sb = load_benchmark("speed")
    real = sb.matmul_ceiling
    monkeypatch.setattr(sb, "matmul_ceiling", lambda dev, dtype, n=256, repeats=1: real(dev, dtype, 256, 1))
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n## Quality\n\nquality text\n\n## Speed\n\nold\n\n## Scale\n\nscale text\n")
    assert sb.main(["--sizes", "48x40", "--repeats", "1", "--skip-baselines", "--devices", "cpu",
                    "--out", str(out)]) == 0
    text = out.read_text()
    assert "quality text" in text and "scale text" in text and "\nold\n" not in text
    nm = get_model(NOISEMAP_MODEL, 0.01)
    label = f"| noise-map cascade (default model), {nm.n_stages} stages, {nm.refills} refills, fp32 | cpu | 48x40 |"
    assert label in text
    assert "| cascade, 3 stages, fp32 | cpu | 48x40 |" in text
