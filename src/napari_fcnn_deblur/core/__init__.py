"""The numerical core (torch only): transfer functions, the eq. 6 solver, the gradient FCNN, the cascade.

Nothing here knows about files, devices policy, intensity units, napari or the command line.
"""

from .cascade import Cascade, StageTensors, WholeGrid
from .denoiser import GradientDenoiser
from .solver import DeconvProblem, KernelSpectra, deconvolve, kernel_spectra, prepare_problem
from .spectral import PaddingGeometry, padding_geometry

__all__ = [
    "Cascade",
    "StageTensors",
    "WholeGrid",
    "GradientDenoiser",
    "DeconvProblem",
    "KernelSpectra",
    "deconvolve",
    "kernel_spectra",
    "prepare_problem",
    "PaddingGeometry",
    "padding_geometry",
]
