"""napari-fcnn-deblur: non-blind deblurring with the learned FCNN cascade of Zhang et al. (CVPR 2017).

Layers (imports only point down): ``core`` (torch: spectra, eq. 6 solver, FCNN, cascade) →
``io`` / ``data`` (model files, images; PSFs, kernels, samples) → ``engine`` (options, layouts,
intensity, noise, kernels, devices, tiles, the prepared run, dask) → ``api`` (:func:`deblur`,
:func:`deblur_stages`) → ``cli`` and the napari files (``_widget``, ``_reader``, ``_sample_data``);
``baselines`` and ``training`` sit beside them.  Everything but the napari files needs no Qt::

    from napari_fcnn_deblur import deblur
    sharp = deblur(blurry, kernel, noise_level=0.01, iterations=3)
"""

from .api import DeblurRun, StageResult, deblur, deblur_stages
from .core.cascade import Cascade
from .io.models import ModelNotFoundError, available_models, load_cascade, save_cascade

try:
    from importlib.metadata import version as _version

    __version__ = _version("napari-fcnn-deblur")
except Exception:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = [
    "Cascade",
    "DeblurRun",
    "ModelNotFoundError",
    "StageResult",
    "available_models",
    "deblur",
    "deblur_stages",
    "load_cascade",
    "save_cascade",
]
