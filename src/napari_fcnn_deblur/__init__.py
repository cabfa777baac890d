"""napari-fcnn-deblur: non-blind deblurring with the learned FCNN cascade of Zhang et al. (CVPR 2017).

The core (this package without ``_widget``) needs no Qt and no napari::

    from napari_fcnn_deblur import deblur
    sharp = deblur(blurry, kernel, noise_level=0.01, iterations=3)
"""

from .api import StageResult, deblur, deblur_stages
from .cascade import Cascade
from .model_io import ModelNotFoundError, available_models, load_cascade, save_cascade

try:
    from importlib.metadata import version as _version

    __version__ = _version("napari-fcnn-deblur")
except Exception:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = [
    "Cascade",
    "ModelNotFoundError",
    "StageResult",
    "available_models",
    "deblur",
    "deblur_stages",
    "load_cascade",
    "save_cascade",
]
