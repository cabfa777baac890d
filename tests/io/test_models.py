import json

import numpy as np
import pytest
import torch

from napari_fcnn_deblur.core.cascade import Cascade
from napari_fcnn_deblur.io import models as model_io
from napari_fcnn_deblur.io.models import (
    ModelNotFoundError,
    get_model,
    load_cascade,
    nearest_trained_level,
    save_cascade,
)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    c = Cascade(2, gammas=[100.0, 10.0, 1.0], noise_level=0.03, metadata={"note": "x"}, width=6)
    p = save_cascade(c, tmp_path / "m.safetensors")
    d = load_cascade(p)
    assert d.n_stages == 2 and d.noise_level == 0.03 and d.metadata["note"] == "x" and d.width == 6
    assert model_io.read_metadata(p)["n_stages"] == "2"  # the header alone (what the widget reads)
    import os

    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask  # not safetensors' 0600: other users' dask workers read it
    np.testing.assert_allclose(d.gammas.detach().numpy(), [100, 10, 1], rtol=1e-6)
    for a, b in zip(c.parameters(), d.parameters()):
        assert torch.allclose(a, b)


def test_rejects_foreign_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a napari-fcnn-deblur cascade"):
        load_cascade(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError):
        load_cascade(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a napari-fcnn-deblur cascade"):
        model_io.read_metadata(tmp_path / "junk.safetensors")


@pytest.mark.parametrize("level, expected", [(0.0, 0.01), (0.015, 0.01), (0.02, 0.03), (0.035, 0.03), (0.04, 0.05), (0.2, 0.05)])
def test_nearest_level_rule(level, expected):
    assert nearest_trained_level(level) == expected


def test_missing_shipped_model_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(model_io, "shipped_model_path", lambda lv: tmp_path / f"none{lv}.safetensors")
    monkeypatch.setattr(model_io, "noisemap_model_path", lambda: tmp_path / "none.safetensors")
    with pytest.raises(ModelNotFoundError, match="no trained model is installed"):
        get_model(None, 0.01)
    with pytest.raises(ModelNotFoundError, match="noise-map cascade is not installed"):
        get_model("noisemap", 0.01)


def _noisemap_file(tmp_path, table=None):
    from napari_fcnn_deblur.core.conditioned import NoiseMapCascade

    meta = {} if table is None else {model_io.DEFAULT_RULE_KEY: json.dumps(table)}
    return save_cascade(NoiseMapCascade(1, width=4, metadata=meta), tmp_path / "nm.safetensors")


def test_default_model_follows_the_measured_table(monkeypatch, tmp_path):
    """model=None: the noise-map cascade, except Gaussian noise where the table says the per-level cascade wins."""
    from napari_fcnn_deblur.core.conditioned import NoiseMapCascade

    table = {"sigma": [0.01, 0.03, 0.05, 0.10], "noisemap_db": [26.0, 24.5, 23.5, 21.0],
             "per_level_db": [27.0, 24.0, 23.8, 16.0]}
    path = _noisemap_file(tmp_path, table)
    monkeypatch.setattr(model_io, "noisemap_model_path", lambda: path)
    assert model_io.per_level_margin(0.01, table) == pytest.approx(-1.0)
    assert model_io.per_level_margin(0.002, table) == pytest.approx(-1.0)  # held at the ends
    for sigma, expected in [(0.005, "per-level cascade 1 %"), (0.01, "per-level cascade 1 %"),
                            (0.03, "noise-map cascade"), (0.05, "per-level cascade 5 %"),
                            (0.08, "noise-map cascade"), (0.3, "noise-map cascade")]:
        choice = model_io.select_model(None, sigma)
        assert choice.label == expected, (sigma, choice.describe())
        assert choice.reason.startswith("default: ") and "measured table" in choice.reason
    # signal-dependent noise and noise maps: always the noise-map cascade
    assert isinstance(get_model(None, 0.01, gaussian=False), NoiseMapCascade)
    # a noise-map file without a table (a freshly trained one): the noise-map cascade everywhere
    (tmp_path / "x").mkdir()
    bare = _noisemap_file(tmp_path / "x", None)
    monkeypatch.setattr(model_io, "noisemap_model_path", lambda: bare)
    assert model_io.select_model(None, 0.01).describe() == "noise-map cascade (default)"


def test_a_broken_table_is_a_clear_error(tmp_path):
    p = _noisemap_file(tmp_path, {"sigma": [0.03, 0.01], "noisemap_db": [1, 2], "per_level_db": [1, 2]})
    with pytest.raises(ValueError, match="ascending levels"):
        model_io.default_rule(p)


def test_model_cache_returns_same_object(tmp_path):
    p = save_cascade(Cascade(1, gammas=[10.0, 1.0], width=4), tmp_path / "m.safetensors")
    assert get_model(p, 0.01) is get_model(str(p), 0.05)


def test_one_loader_for_plain_and_noise_map_cascades(tmp_path):
    from napari_fcnn_deblur.core.conditioned import NoiseMapCascade

    torch.manual_seed(0)
    nm = NoiseMapCascade(2, width=6, metadata={"note": "x"})
    with torch.no_grad():
        nm.gamma_coeffs.add_(torch.randn(3, 3) * 0.1)
    p = save_cascade(nm, tmp_path / "nm.safetensors")
    meta = model_io.read_metadata(p)
    assert meta["format"] == model_io.NOISEMAP_FORMAT and meta["kind"] == "noisemap" and meta["width"] == "6"
    again = load_cascade(p)
    # the γ floor is the model's own setting: it comes back with it (the format's other keys do not)
    assert isinstance(again, NoiseMapCascade) and again.n_stages == 2
    assert again.metadata == {"note": "x", "sigma_gamma_floor": "0.01"} and again.gamma_floor == 0.01
    for (ka, a), (kb, b) in zip(nm.state_dict().items(), again.state_dict().items()):
        assert ka == kb and torch.equal(a, b)
    y, k, sd = torch.rand(2, 24, 28), torch.ones(5, 5) / 25, torch.rand(2, 24, 28) * 0.05
    with torch.no_grad():
        torch.testing.assert_close(again(y, k, sd), nm(y, k, sd), rtol=0, atol=0)
    # the shipped per-level files still load as plain cascades and run
    plain = load_cascade(model_io.shipped_model_path(0.03))
    assert type(plain) is Cascade and plain.n_stages == 3
    with torch.no_grad():
        assert torch.isfinite(plain(y, k)).all()
    # the engine runs both kinds: a noise-map file resolves to the noise-map cascade
    assert isinstance(get_model(p, 0.03), NoiseMapCascade)


def test_cache_follows_the_content_not_the_mtime(tmp_path):
    import os
    import shutil

    p = save_cascade(Cascade(1, gammas=[10.0, 1.0], width=4), tmp_path / "m.safetensors")
    first = get_model(p, 0.01)
    other = save_cascade(Cascade(1, gammas=[20.0, 2.0], width=4), tmp_path / "other.safetensors")
    st = p.stat()
    shutil.copyfile(other, p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # a copy that keeps the old modification time
    second = get_model(p, 0.01)
    assert second is not first
    np.testing.assert_allclose(second.gammas.detach().numpy(), [20.0, 2.0], rtol=1e-6)


@pytest.mark.parametrize("bad", ["nan weight", "zero gamma", "int weight", "inf gamma"])
def test_loading_rejects_weights_that_would_give_nan_or_zeros(tmp_path, bad):
    from safetensors.torch import load_file, save_file

    from napari_fcnn_deblur.io.models import read_metadata

    p = save_cascade(Cascade(1, gammas=[10.0, 1.0], width=4), tmp_path / "m.safetensors")
    t, meta = load_file(str(p)), read_metadata(p)
    if bad == "nan weight":
        t["stage1.conv3.weight"][0, 0, 0, 0] = float("nan")
    elif bad == "zero gamma":
        t["gammas"][1] = 0.0
    elif bad == "inf gamma":
        t["gammas"][0] = float("inf")
    else:
        t["stage1.conv1.bias"] = t["stage1.conv1.bias"].to(torch.int32)
    save_file(t, str(p), metadata=meta)
    with pytest.raises(ValueError, match="NaN or infinite|γ must all be > 0|floating point"):
        load_cascade(p)
