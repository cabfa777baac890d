"""The "FCNN deblur" dock widget: a thin Qt layer over the Qt-free engine.

All pixels are computed by the engine's one run path
(:class:`~napari_fcnn_deblur.engine.run.DeblurRun`, prepared on the whole layer,
so a preview plane and a whole-layer run use the same intensity map and noise
estimate as :func:`napari_fcnn_deblur.deblur`), in a napari ``thread_worker``
that passes on the engine's progress items and one result per stage, so the GUI
thread never runs the cascade.  The widget only keeps UI state and makes layers.  Results travel back through
the worker's ``yielded`` signal and become layers on the GUI thread.  Problems a
user can fix (wrong layer, NaNs, no model...) become napari notifications; the
widget never raises and never modifies its input layers.

Memory of whole-layer runs on stacks (more than one plane): the engine runs
chunks of planes through every stage (:func:`_stack_items`), the final stage
goes into one in-memory float32 array, the intermediate stages and the
gradients into ``.npy`` files of a temporary folder (:class:`_ScratchFolder`)
that their layers show lazily (memory-mapped, read only where displayed).
Peak memory is thus about the final result plus one chunk's working memory
instead of a float32 copy per stage and two more per stage with gradients.

Volumes: a 3D PSF (a kernel layer with several planes, or a generated 3D
widefield / confocal PSF) on a layer with at least three axes runs
volumetrically (:class:`~napari_fcnn_deblur.engine.volume.VolumeRun`): the last
three axes are (Z, Y, X), leading axes are a stack of volumes.  The preview
deconvolves the z-slab of ±(PSF depth) planes around the plane on screen (the
whole (Y, X) extent) and shows that slab in place; stage layers are 3D, with
grad x / y / z layers when asked.  A 2D kernel on such a layer stays plane by plane.

Noise and model: *Noise* is ``"auto"`` (the engine estimates σ, or a Poisson–Gaussian a·x + b, from the
whole layer) or a number (the spin box, in %); *Model* is the engine's default rule (``model=None``: the
noise-map cascade, or the per-level cascade where the measured table says it is better; volumes: the volume
cascade), ``"noisemap"``, ``"per-level"`` (2D only) or a cascade file.  The widget never picks a model
itself: once the worker has prepared the run it shows the noise the engine used and the model it chose,
with the reason (``run.model_description``), and the result layers' metadata records both.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    RadioButtons,
    SpinBox,
)
from napari.layers import Image
from napari.qt.threading import thread_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info, show_warning
from psygnal import Signal

from .api import DeblurRun, Progress, StageResult, VolumeRun, is_volume_kernel
from .data import psf, psf3d
from .engine.devices import PRECISIONS, available_devices
from .engine.kernels import prepare_kernel
from .engine.layout import PlaneLayout
from .engine.noise import NoiseLevel
from .io import models as model_io

if TYPE_CHECKING:
    import napari.viewer

logger = logging.getLogger(__name__)

#: Largest kernel side (pixels) the kernel picker offers: real PSFs / motion kernels are far smaller.
MAX_KERNEL_SIDE = 256
#: Stage count assumed while no model can be read (the paper's cascade has 3 stages).
DEFAULT_STAGES = 3
#: Key of the provenance dict this widget writes into the metadata of the layers it makes.
META_KEY = "napari_fcnn_deblur"

#: 'Model' choices (the combo's values): the engine's default rule (``model=None``: the noise-map cascade, or
#: a per-level cascade where the measured table says it is better; with a 3D PSF the volume cascade), the
#: shipped noise-map cascade, the paper's per-level cascade nearest the noise level (2D only), a cascade file.
DEFAULT_MODEL = "default"
NOISEMAP = model_io.NOISEMAP_MODEL
PER_LEVEL = model_io.PER_LEVEL_MODEL
FROM_FILE = "model file"
_LEVELS = "/".join(f"{lv * 100:g}" for lv in model_io.TRAINED_NOISE_LEVELS)
MODEL_CHOICES = [
    ("default (noise-map cascade; per-level where measured better)", DEFAULT_MODEL),
    ("noise-map cascade", NOISEMAP),
    (f"per-level (paper's {_LEVELS} % models)", PER_LEVEL),
    (FROM_FILE, FROM_FILE),
]
MODEL_LABELS = {value: label for label, value in MODEL_CHOICES}
#: The shipped models named by the 'Model' combo that only deblur planes (a 3D PSF runs the volume cascade).
MODELS_2D = (NOISEMAP, PER_LEVEL)
CURRENT_PLANE = "current plane (preview)"
WHOLE_LAYER = "whole layer"

#: 'Noise' choices: estimated by the engine from the image (``noise_level="auto"``), or the number of the
#: spin box (s.d. in % of the intensity range the run maps to [0, 1]).
AUTO = "auto"
NUMBER = "number"
NOISE_CHOICES = [("auto (estimate from the image)", AUTO), ("a number (s.d. in %)", NUMBER)]
#: The noise spin box: range, step and default (%).
NOISE_PERCENT_RANGE = (0.1, 30.0)
NOISE_PERCENT_STEP = 0.1
NOISE_PERCENT_DEFAULT = 1.0

#: Kernel sources: a layer of the viewer, or one of the model PSF generators of :mod:`.psf`.
KERNEL_LAYER = "layer"
GAUSSIAN = "Gaussian"
DISK = "disk (defocus)"
MOTION = "linear motion"
WIDEFIELD = "widefield (Airy)"
WIDEFIELD_3D = "3D widefield (Born–Wolf)"
CONFOCAL_3D = "3D confocal"
#: Generators of 3D PSFs (for z-stacks: the run is volumetric).
GENERATORS_3D = (WIDEFIELD_3D, CONFOCAL_3D)
GENERATORS = (GAUSSIAN, DISK, MOTION, WIDEFIELD, *GENERATORS_3D)
#: Largest generated 3D PSF, (Z, Y, X) voxels: the generators' automatic box (which may hold a hundred
#: planes of widefield light) is capped here, and to the volume, so that runs and previews stay fast.
MAX_GENERATED_3D = (15, 31, 31)
#: What happens to a kernel *layer* before use (the modes of :func:`.psf.prepare_psf`, as on the command line).
KERNEL_PREP_CHOICES = [
    ("auto (measured PSFs only)", "auto"),
    ("measured PSF: subtract background, recentre, crop", "measured"),
    ("none: use the layer as it is", "raw"),
]

#: A whole-layer run of a stack reads and runs chunks of planes of at most this many float32 bytes ...
CHUNK_BYTES = 32 * 2**20
#: ... and at most this fraction (1/n) of the stack, so one chunk's working memory stays small next to the result.
CHUNK_FRACTION = 32
#: Prefix of the temporary folder holding the on-disk layers (intermediate stages, gradients) of stack runs.
SCRATCH_PREFIX = "napari-fcnn-deblur-"
#: At most this many values, and at most 1/64, of each gradient of a stack run are sampled for its contrast limits.
GRADIENT_SAMPLE = 1 << 16
#: Percentile of |gradient| used as the symmetric contrast limit of gradient layers.
GRADIENT_PERCENTILE = 99.5


# ----------------------------------------------------------------------------- worker side (no Qt, no layers)


@dataclass(frozen=True)
class _Job:
    """Everything the worker needs, captured on the GUI thread when Run is pressed."""

    source_name: str
    data: Any  # the source layer's array (numpy, dask, zarr...): only ever read
    rgb: bool
    kernel: np.ndarray | None  # None: a generated 3D PSF, computed by the worker (kernel_recipe)
    noise_level: float | str  # AUTO: estimated once by the engine for the whole layer
    iterations: int
    device: str
    model: Path | str | None  # None: the engine's default rule (volumes: the volume cascade); NOISEMAP; PER_LEVEL
    plane_index: tuple[int, ...]  # leading-axis index of the preview plane; () = the whole layer
    preview: bool
    kernel_name: str = ""  # the kernel layer's name, or the generated PSF's description
    precision: str = "auto"
    gradients: bool = False  # the user asked for the gradient layers
    scratch: Path | None = None  # a whole-layer run of a stack: folder for its on-disk stages and gradients
    kernel_note: str = ""  # what the measured-PSF preparation did to the kernel layer ("" when nothing)
    volume: bool = False  # a 3D PSF: the last three axes are (Z, Y, X), deconvolved in 3D (VolumeRun)
    spacing: tuple[float, float, float] | None = None  # the image's voxel size, when the PSF is resampled to it ...
    psf_spacing: tuple[float, float, float] | None = None  # ... from the PSF layer's (same unit)
    grid_note: str = ""  # how the PSF is put on the image's voxel grid, in words ("" when it already is)
    kernel_recipe: Callable[[], np.ndarray] | None = None  # a generated 3D PSF (computed off the GUI thread)
    z_index: int | None = None  # a volume preview: the plane on screen (the worker runs the slab around it)

    def item_ndim(self) -> int:
        """Axes of one item the engine runs: a volume (3), an RGB plane (3) or a plane (2); the others lead."""
        return 3 if self.volume or self.rgb else 2


@dataclass
class _Prepared:
    """The engine prepared the run (before the first stage): the noise it uses and the model it chose."""

    noise: NoiseLevel  # given or estimated (σ, or Poisson–Gaussian a and b)
    model: str  # which model runs and why (the run's model_description)
    estimated: bool  # the noise was estimated from the image ('auto')


@dataclass
class _VolumeReady:
    """A volumetric run is prepared: the PSF's shape on the image's grid and (preview) the z-slab it runs."""

    kernel_shape: tuple[int, ...]
    slab: tuple[int, int] | None = None  # planes z0:z1 of the volume


@dataclass
class _StageDone:
    """One stage of the whole job (the preview plane, or every plane of the layer).

    A stack run also says its image's value range and its gradients' contrast limits (computed chunk by
    chunk: its arrays on disk are never read whole).
    """

    result: StageResult
    image_range: tuple[float, float] | None = None
    grad_limits: tuple[float, float] | None = None


@dataclass
class _Failed:
    message: str
    level: str = "error"  # or "warning"


def _plane_words(index: tuple[int, ...]) -> str:
    return f" (plane {', '.join(map(str, index))})" if index else ""


def _image_problem(image: np.ndarray, job: _Job, index: tuple[int, ...]) -> _Failed | None:
    """Input problems worth a biologist-readable message rather than the engine's."""
    where = _plane_words(index)
    if np.issubdtype(image.dtype, np.floating) and not np.all(np.isfinite(image)):
        return _Failed(
            f"The image '{job.source_name}'{where} contains pixels that are not numbers (NaN) or are infinite, "
            "e.g. from a division by zero or a mask. Replace them (for example by 0) and run again."
        )
    if image.size and np.ptp(image) == 0:
        value = image.ravel()[0].item()
        return _Failed(
            f"The image '{job.source_name}'{where} is blank (every pixel is {value:g}): there is nothing to deblur.",
            "warning",
        )
    return None


def _explain(err: Exception, job: _Job, index: tuple[int, ...] = ()) -> _Failed:
    """Turn an engine exception into a message for the notification area."""
    name, where = job.source_name, _plane_words(index)
    if isinstance(err, model_io.ModelNotFoundError):  # e.g. the per-level cascade nearest an estimate
        text = str(err).split(". ")[0]
        return _Failed(_missing_model(job.model, job.noise_level) or (
            f"The model for '{name}' is not installed ({text}). Under 'Model', choose another model or "
            f"'{FROM_FILE}', or reinstall napari-fcnn-deblur."))
    if isinstance(err, OSError) and job.scratch is not None and str(job.scratch) in str(err):
        return _Failed(
            f"Deblurring '{name}' could not keep its intermediate stages on disk ({err}). Free disk space in "
            f"{job.scratch.parent}, or point TMPDIR to a larger disk before starting napari, and run again."
        )
    if isinstance(err, FileNotFoundError):
        return _Failed(f"The model file is gone: {err}. Pick it again under 'model file'.")
    if isinstance(err, ValueError):
        text = str(err)
        return _Failed(f"Cannot deblur '{name}'{where}: {text[:1].lower() + text[1:]}.")
    if isinstance(err, (RuntimeError, MemoryError)) and "memory" in str(err).lower():
        return _Failed(
            f"Not enough memory to deblur '{name}'{where} on device '{job.device}'. "
            "Choose device 'cpu', deblur the current plane only, or crop the image."
        )
    logger.exception("FCNN deblur failed on %s%s", name, where)
    return _Failed(f"Deblurring '{name}'{where} failed unexpectedly ({type(err).__name__}: {err}). Please report this.")


def _missing_model(model: Path | str | None, noise_level: float | str) -> str | None:
    """Why the shipped 2D model a job names cannot run (not installed), for people; None when it can.

    ``model`` as in :class:`_Job` (None: the default rule, which falls back to the per-level cascades when
    the noise-map cascade is missing: :func:`~napari_fcnn_deblur.io.models.select_model`); a file: None.
    """
    noisemap = model_io.noisemap_model_path().is_file()
    per_level = model_io.available_models()
    fix = (f"choose '{FROM_FILE}' and pick a cascade file (.safetensors, e.g. made with 'fcnn-deblur train'), "
           "or reinstall napari-fcnn-deblur.")
    if model is None and not noisemap and not per_level:
        return (f"No trained model is installed (neither the noise-map cascade nor the per-level cascades). "
                f"Under 'Model', {fix}")
    if model == NOISEMAP and not noisemap:
        other = f"'{PER_LEVEL}', or " if per_level else ""
        return f"The noise-map cascade is not installed. Under 'Model', choose {other}{fix}"
    if model == PER_LEVEL:
        if noise_level == AUTO:
            if per_level:
                return None
            what = "No per-level cascade is installed"
        else:
            level = model_io.nearest_trained_level(float(noise_level))
            if level in per_level:
                return None
            what = f"No per-level cascade is installed for {level * 100:g} % noise (the trained level nearest it)"
        other = f"'{DEFAULT_MODEL}' or '{NOISEMAP}', or " if noisemap else ""
        return f"{what}. Under 'Model', choose {other}{fix}"
    return None


def _noise_words(noise: NoiseLevel, estimated: bool) -> str:
    """The noise of a run for the status line: ``estimated noise σ = 2.71 % (Gaussian)``, the Poisson–Gaussian
    a and b (:meth:`NoiseLevel.describe`), or ``noise σ = 1 % (given)``."""
    if noise.is_gaussian and estimated:
        return f"estimated noise σ = {100 * noise.sigma:.2f} % (Gaussian)"
    if noise.is_gaussian:
        return f"noise σ = {100 * noise.sigma:.3g} % (given)"
    return f"{'estimated ' if estimated else ''}noise: {noise.describe()}"


def _no_volume_model_message() -> str:
    return (
        "The volume cascade (the model for 3D PSFs) is not installed. Under 'Model', choose "
        f"'{FROM_FILE}' and pick a volume cascade file (.safetensors), or reinstall napari-fcnn-deblur."
    )


def _prepare_run(job: _Job, kernel: np.ndarray) -> DeblurRun | VolumeRun:
    """The engine's run for the whole layer (one intensity map and noise estimate for every part of it)."""
    if job.volume:
        return VolumeRun.prepare(job.data, kernel, job.noise_level, job.iterations, job.device, job.model,
                                 precision=job.precision, spacing=job.spacing, psf_spacing=job.psf_spacing)
    return DeblurRun.prepare(job.data, kernel, job.noise_level, job.iterations, job.device, job.model,
                             precision=job.precision, rgb=job.rgb)


def _steps(run: DeblurRun | VolumeRun, image: np.ndarray, job: _Job) -> Iterator[Progress | StageResult]:
    return run.steps(image, job.gradients) if job.volume else run.steps(image)


def _ready_items(run: DeblurRun | VolumeRun, job: _Job, slab: tuple[int, int] | None = None) -> Iterator[Any]:
    """What the GUI learns once the run is prepared: a volume's PSF grid and slab, the noise and the model."""
    if job.volume:
        yield _VolumeReady(tuple(run.options.kernel.shape), slab)
    yield _Prepared(run.noise, run.model_description, job.noise_level == AUTO)


def _slab(depth: int, kz: int, z: int) -> tuple[int, int]:
    """The preview's z-slab: ±``kz`` planes around plane ``z`` (2 kz + 1 planes, at least the PSF's depth),
    moved inside a volume of ``depth`` planes."""
    n = min(depth, 2 * kz + 1)
    z0 = int(np.clip(z - n // 2, 0, depth - n))
    return z0, z0 + n


def _deblur_items(job: _Job) -> Iterator[_StageDone | _Failed | _Prepared | _VolumeReady | Progress]:
    """Run the engine on ``job``: progress items and one item per finished stage (quit() stops between them).

    The run is prepared on the whole layer, so the intensity map and the noise
    estimate are the engine's one rule for the layer, whether the whole layer
    or one preview plane (volumes: a preview slab) is deblurred.  A whole-layer
    run of a stack (``job.scratch`` set) goes chunk by chunk (:func:`_stack_items`).
    """
    index = job.plane_index
    try:
        kernel = job.kernel
        if job.kernel_recipe is not None:  # a generated 3D PSF: computed here, off the GUI thread
            try:
                kernel = job.kernel_recipe()
            except ValueError as err:
                text = str(err)
                yield _Failed(f"Cannot make the kernel '{job.kernel_name}': {text[:1].lower() + text[1:]}.")
                return
        if job.scratch is not None:
            yield from _stack_items(job, kernel)
            return
        if job.volume:
            yield from _volume_items(job, kernel)
            return
        image = np.asarray(job.data[index] if index else job.data)  # dask/zarr are read here, off the GUI thread
        bad = _image_problem(image, job, index)
        if bad is not None:
            yield bad
            return
        run = _prepare_run(job, kernel)
        yield from _ready_items(run, job)
        for item in _steps(run, image, job):
            yield _StageDone(item) if isinstance(item, StageResult) else item
    except Exception as err:  # reported as a notification by the GUI thread, never re-raised
        yield _explain(err, job, index)
        return


def _volume_items(job: _Job, kernel: np.ndarray) -> Iterator[_StageDone | _Failed | _Prepared | _VolumeReady
                                                               | Progress]:
    """One volume through the volume cascade: the whole layer, or (preview) the z-slab around the plane on screen."""
    index = job.plane_index
    if isinstance(job.data, np.ndarray):  # a numpy layer is checked whole (no copy) before the engine's checks
        bad = _image_problem(job.data, job, ())
        if bad is not None:
            yield bad
            return
    run = _prepare_run(job, kernel)
    slab = None
    if job.preview:
        slab = _slab(job.data.shape[-3], run.options.kernel.shape[0], int(job.z_index or 0))
        image = np.asarray(job.data[index + (slice(*slab),)])
    else:
        image = np.asarray(job.data)
    bad = _image_problem(image, job, index)
    if bad is not None:
        yield bad
        return
    yield from _ready_items(run, job, slab)
    for item in _steps(run, image, job):
        yield _StageDone(item) if isinstance(item, StageResult) else item


_deblur_worker = thread_worker(_deblur_items)


def _chunk_planes(n: int, item_bytes: int) -> int:
    """Leading indices per chunk of a stack run: at most :data:`CHUNK_BYTES` and 1/:data:`CHUNK_FRACTION` of it."""
    return max(1, min(n // CHUNK_FRACTION, CHUNK_BYTES // max(item_bytes, 1)))


def _read_items(data: Any, lead: tuple[int, ...], i0: int, i1: int) -> np.ndarray:
    """Leading indices ``i0:i1`` (flat, C order) of an array-like, read now as one numpy array."""
    if len(lead) == 1:
        return np.asarray(data[i0:i1])
    return np.stack([np.asarray(data[np.unravel_index(i, lead)]) for i in range(i0, i1)])


def _write_items(path: Path, n: int, i0: int, values: np.ndarray) -> None:
    """Write leading indices ``i0:i0 + len(values)`` of the ``.npy`` file ``path`` (unmapped again at once)."""
    out = np.lib.format.open_memmap(path, mode="r+")
    out.reshape((n,) + values.shape[1:])[i0 : i0 + len(values)] = values
    out.flush()
    del out


#: The gradient layers of a run: planes have x and y, volumes x, y and z.
GRADIENT_ROLES = {False: ("grad x", "grad y"), True: ("grad x", "grad y", "grad z")}


def _gradients(res: StageResult) -> tuple[np.ndarray | None, ...]:
    return res.grad_x, res.grad_y, res.grad_z


def _stack_items(job: _Job, kernel: np.ndarray) -> Iterator[_StageDone | _Failed | _Prepared | _VolumeReady
                                                             | Progress]:
    """A whole-layer run of a stack (of planes, or of volumes), chunk after chunk, with bounded memory.

    Each chunk runs through every stage; its final stage goes into one
    in-memory float32 array, its intermediate stages and (RGB: colour-averaged)
    gradients into ``.npy`` files in ``job.scratch``.  When every item is done,
    one :class:`_StageDone` per stage follows, whose intermediate images and
    gradients are read-only memory maps of those files.
    """
    data, scratch = job.data, job.scratch
    shape = tuple(data.shape)
    roles = GRADIENT_ROLES[job.volume]
    if job.volume:  # items are volumes (Z, Y, X); progress counts volume-steps
        lead = shape[:-3]
        units_per_item, grad_shape = 1, shape
    else:
        layout = PlaneLayout.of(shape, job.rgb)
        lead = layout.lead
        units_per_item, grad_shape = layout.n_planes // math.prod(lead), lead + layout.plane_shape
    n = math.prod(lead)
    item_shape = shape[len(lead) :]  # one leading index: (Y, X), (Y, X, 3|4) or (Z, Y, X)
    if isinstance(data, np.ndarray):  # a numpy layer is checked whole (no copy); lazy ones by the engine per chunk
        bad = _image_problem(data, job, ())
        if bad is not None:
            yield bad
            return
    run = _prepare_run(job, kernel)
    yield from _ready_items(run, job)
    k_last = run.iterations
    final = np.empty(shape, np.float32)
    files: dict[tuple[str, int], Path] = {("image", s): scratch / f"stage{s}.npy" for s in range(k_last)}
    if job.gradients:
        for s in range(1, k_last + 1):
            for role in roles:
                files[role, s] = scratch / f"{role.replace(' ', '_')}_stage{s}.npy"
    for (role, _), path in files.items():
        np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                  shape=shape if role == "image" else grad_shape).flush()  # header and size now
    per = _chunk_planes(n, math.prod(item_shape) * 4)
    total = n * units_per_item * (k_last + 1)
    grad_step = max(64, -(-math.prod(grad_shape) // GRADIENT_SAMPLE)) | 1  # odd: not always the same columns
    ranges = {s: [math.inf, -math.inf] for s in range(k_last + 1)}
    samples: dict[tuple[str, int], list[np.ndarray]] = {key: [] for key in files if key[0] != "image"}
    templates: dict[int, StageResult] = {}
    for i0 in range(0, n, per):
        chunk = _read_items(data, lead, i0, min(n, i0 + per))
        for item in _steps(run, chunk, job):
            if isinstance(item, Progress):
                yield Progress(i0 * units_per_item * (k_last + 1) + item.done, total)
                continue
            s = item.stage
            ranges[s][0] = min(ranges[s][0], float(item.image.min()))
            ranges[s][1] = max(ranges[s][1], float(item.image.max()))
            if s == k_last:
                final.reshape((n,) + item_shape)[i0 : i0 + len(chunk)] = item.image
            else:
                _write_items(files["image", s], n, i0, item.image)
            if job.gradients and s > 0:
                for role, g in zip(roles, _gradients(item)):
                    if job.rgb:  # one signed map per direction: the mean over colour channels
                        g = g.mean(axis=-1)
                    _write_items(files[role, s], n, i0, g)
                    samples[role, s].append(np.abs(g).ravel()[::grad_step].copy())
            templates[s] = dataclasses.replace(item, image=None, grad_x=None, grad_y=None, grad_z=None)
            del item
        del chunk
    for s in range(k_last + 1):
        image = final if s == k_last else np.load(files["image", s], mmap_mode="r")
        grads: dict[str, np.ndarray | None] = {}
        limits = None
        if job.gradients and s > 0:
            grads = {role: np.load(files[role, s], mmap_mode="r") for role in roles}
            limits = tuple(float(np.percentile(np.concatenate(samples[role, s]), GRADIENT_PERCENTILE))
                           for role in roles)
        res = dataclasses.replace(templates[s], image=image, grad_x=grads.get("grad x"), grad_y=grads.get("grad y"),
                                  grad_z=grads.get("grad z"))
        yield _StageDone(res, image_range=(ranges[s][0], ranges[s][1]), grad_limits=limits)


class _ScratchFolder:
    """The temporary folder of a widget's on-disk layers (intermediate stages and gradients of stack runs).

    Created on first use in the system's temporary folder (``TMPDIR``), one
    sub-folder per run.  :meth:`sweep` deletes the files no layer of the viewer
    uses any more (a removed layer, a layer a re-run updated, a cancelled or
    failed run, every layer when the viewer closes) and the folder once it is
    empty; :meth:`close` deletes the folder now (when the widget is destroyed,
    and at the latest when Python exits).
    """

    def __init__(self) -> None:
        self.root: Path | None = None
        self._finalizer: weakref.finalize | None = None

    def new_run(self) -> Path:
        """A new, empty folder for one run."""
        if self.root is None or not self.root.is_dir():
            self.root = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
            self._finalizer = weakref.finalize(self, shutil.rmtree, self.root, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix="run-", dir=self.root))

    def free_bytes(self) -> int:
        """Free disk space where the run folders go."""
        return shutil.disk_usage(self.root if self.root is not None else tempfile.gettempdir()).free

    def sweep(self, layers: Any, keep: Path | None = None) -> None:
        """Delete the files (and empty run folders) no layer in ``layers`` shows, except in the folder ``keep``."""
        if self.root is None or not self.root.is_dir():
            return
        used = set()
        for lyr in layers:
            data = getattr(lyr, "data", None)
            if isinstance(data, np.memmap) and data.filename:
                used.add(Path(data.filename).resolve())
        for folder in self.root.iterdir():
            if keep is not None and folder.resolve() == keep.resolve():
                continue
            for f in folder.iterdir():
                if f.resolve() not in used:
                    f.unlink(missing_ok=True)  # a file still mapped elsewhere stays readable (POSIX)
            if not any(folder.iterdir()):
                folder.rmdir()
        if not any(self.root.iterdir()):  # nothing on disk any more (e.g. the viewer closed: its layers went)
            self.close()

    def close(self, *_: Any) -> None:
        """Delete the whole folder now (a later run makes a new one)."""
        if self._finalizer is not None:
            self._finalizer()
        self.root, self._finalizer = None, None


# ----------------------------------------------------------------------------- GUI side


def _layer_array(layer: Image) -> Any:
    """Full-resolution data of an Image layer (level 0 of a multiscale pyramid)."""
    return layer.data[0] if layer.multiscale else layer.data


def _plane_ndim(layer: Image) -> int:
    return 3 if layer.rgb else 2


def _is_kernel_like(layer: Image) -> bool:
    """What the kernel picker offers: a small plane, or (greyscale) a small z-stack — a 3D PSF — whose extra
    axes all have length 1 (at most :data:`MAX_KERNEL_SIDE` along Y and X, and along Z)."""
    shape = tuple(_layer_array(layer).shape)
    nd = _plane_ndim(layer) if layer.rgb or len(shape) < 3 else 3
    lead, item = shape[:-nd], shape[-nd:]
    sides = item[:2] if layer.rgb else item
    return all(s == 1 for s in lead) and 0 < min(sides) and max(sides) <= MAX_KERNEL_SIDE


def _kernel_shape(layer: Image) -> tuple[int, ...]:
    """A kernel layer's shape without its leading axes of length 1 (a (1, 1, 9, 9) layer is a 9 × 9 kernel)."""
    shape = tuple(_layer_array(layer).shape)
    while len(shape) > 2 and shape[0] == 1:
        shape = shape[1:]
    return shape


def _kernel_named(layer: Image) -> bool:
    name = layer.name.lower()
    return "kernel" in name or "psf" in name


def _layout_words(shape: tuple[int, ...], rgb: bool, preview: bool, volume: bool = False) -> str:
    """What the run takes the layer to be, in words (so a 4-channel image read as RGBA is not a surprise)."""
    if volume:
        n = math.prod(shape[:-3])
        what = "volume (Z, Y, X) with a 3D PSF: 3D deconvolution"
        if n > 1:
            what = f"a stack of {n} volumes (…, Z, Y, X) with a 3D PSF: each volume deconvolved in 3D"
        if preview:
            which = " of the volume on screen" if n > 1 else ""
            return f"{what} of the z-slab around the plane on screen{which} (preview: ±PSF depth, whole Y × X)"
        return what
    if rgb:
        alpha = ", alpha kept as it is" if shape[-1] == 4 else ""
        return f"RGB: the 3 colour channels each deblurred{alpha}"
    if len(shape) == 2:
        return "one plane"
    n = math.prod(shape[:-2])
    if preview:
        return f"the plane on screen of a stack of {n}"
    return (f"a stack of {n} planes, each with the same kernel and one intensity map; for channels with their own "
            "PSF use deblur(..., channel_axis=) or fcnn-deblur --channel-axis")


def _axis_size_nm(layer: Image, axis: int) -> float | None:
    """The layer's scale along ``axis`` in nanometres, when that axis has a length unit (None: no physical size)."""
    units = getattr(layer, "units", None)  # napari >= 0.6
    if not units or len(units) < -axis:
        return None
    try:
        nm = float(layer.scale[axis]) * float((1 * units[axis]).to("nanometer").magnitude)
    except Exception:  # 'pixel' or another unit without a length
        return None
    return nm if np.isfinite(nm) and nm > 0 else None


def _pixel_size_nm(layer: Image) -> float | None:
    """The layer's pixel size along X in nanometres, when its scale has a length unit (None: no physical size)."""
    return _axis_size_nm(layer, -2 if layer.rgb else -1)


def _z_step_nm(layer: Image) -> float | None:
    """A z-stack's plane spacing (the third axis from the end) in nanometres, when it has a length unit."""
    if layer.rgb or layer.ndim < 3:
        return None
    return _axis_size_nm(layer, -3)


def _voxel_size(layer: Image) -> tuple[tuple[float, float, float], str | None]:
    """The layer's voxel size (dz, dy, dx): in µm when its last three axes have length units, else its scale
    as it is (unit None)."""
    sizes = [_axis_size_nm(layer, a) for a in (-3, -2, -1)]
    if all(v is not None for v in sizes):
        return tuple(v / 1000 for v in sizes), "µm"  # type: ignore[return-value, operator]
    return tuple(float(v) for v in layer.scale[-3:]), None  # type: ignore[return-value]


def _sizes(values, unit: str | None = None) -> str:
    """``0.3 × 0.1 × 0.1 µm`` (sizes), or ``5 × 9 × 9`` (shapes)."""
    text = " × ".join(f"{v:g}" for v in values)
    return f"{text} {unit}" if unit else text


def _psf_grid(image: Image, kernel: Image) -> tuple[tuple | None, tuple | None, str]:
    """(spacing, psf_spacing, in words) to put a 3D PSF layer on a volume layer's voxel grid.

    A PSF layer with scale 1 (and no length unit) is taken on the image's grid, like a 2D kernel (said in words
    when the image has a voxel size: never silently); one with the
    image's voxel size is used as it is; one with another voxel size is resampled by the engine from its
    voxel size to the image's (``spacing``, ``psf_spacing``).  ``ValueError`` (a message for people) when the
    two voxel sizes cannot be related: the image states none, or only one of them has a length unit.
    """
    ks, k_unit = _voxel_size(kernel)
    im, i_unit = _voxel_size(image)
    if k_unit is None and np.allclose(ks, 1.0):
        if i_unit is None and np.allclose(im, 1.0):
            return None, None, ""
        return None, None, (f"states no voxel size (layer scale 1) and is taken on the image's voxel grid of "
                            f"{_sizes(im, i_unit or '(no unit)')}; if it was recorded at another voxel size, set "
                            "its layer scale to that size to have it resampled")
    if k_unit == i_unit and np.allclose(ks, im, rtol=1e-3):
        return None, None, ""
    fix = "or set the PSF layer's scale to 1 if it is already sampled like the image"
    if i_unit is None and np.allclose(im, 1.0):
        raise ValueError(
            f"The 3D PSF layer '{kernel.name}' has voxels of {_sizes(ks, k_unit)} (its layer scale) but the image "
            f"'{image.name}' states no voxel size (scale 1 on Z, Y and X): the PSF cannot be resampled to the "
            f"image's grid. Set the image layer's scale to its voxel size (dz, dy, dx), {fix}."
        )
    if k_unit != i_unit:
        raise ValueError(
            f"The 3D PSF layer '{kernel.name}' has voxels of {_sizes(ks, k_unit or '(no unit)')} and the image "
            f"'{image.name}' of {_sizes(im, i_unit or '(no unit)')}: only one of them has a length unit, so the PSF "
            f"cannot be resampled to the image's grid. Give both layers length units (e.g. µm), {fix}."
        )
    return im, ks, f"resampled from voxels of {_sizes(ks, k_unit)} to the image's {_sizes(im, i_unit)}"


def _kernel_scale_problem(image: Image, kernel: Image) -> str | None:
    """A message when the kernel layer's pixels are not the image's (a kernel with scale 1 is taken in image pixels)."""
    nd = 2
    ks = np.asarray(kernel.scale[-nd:], float)
    im = np.asarray(image.scale[-3:-1] if image.rgb else image.scale[-nd:], float)
    if np.allclose(ks, 1.0) or np.allclose(ks, im, rtol=1e-3):
        return None
    return (
        f"The kernel layer '{kernel.name}' has pixels of {ks[0]:g} × {ks[1]:g} but the image '{image.name}' has "
        f"{im[0]:g} × {im[1]:g} (layer scale): the kernel must be sampled on the image's pixel grid. Resample the "
        "kernel to the image's pixel size, or set the kernel layer's scale to the image's if it already is."
    )


def _is_volume_model(path: Path) -> bool:
    """Whether a cascade file holds a volume cascade (for 3D PSFs), from its header only."""
    try:
        return model_io.read_metadata(path).get("format") == model_io.VOLUME_FORMAT
    except (OSError, ValueError):
        return False


def _stage_count(path: Path) -> int | None:
    """Number of stages of a cascade file, from its header only (None when unreadable)."""
    try:
        return int(model_io.read_metadata(path)["n_stages"])
    except (OSError, ValueError, KeyError):
        return None


@dataclass
class _RunState:
    """Bookkeeping of one run, on the GUI thread."""

    job: _Job
    source_scale: tuple[float, ...]
    out_translate: tuple[float, ...]
    source_metadata: dict  # the source layer's own metadata: results merge it (ours under META_KEY)
    frame: dict  # units, axis labels and affine of the source layer (where this napari has them)
    contrast_limits: tuple[float, float]
    colormap: Any
    out_lead: tuple[int, ...]
    show_gradients: bool  # captured at Run: toggling the box mid-run must not mix layer sets
    started: float = field(default_factory=time.perf_counter)
    stages_done: int = 0
    failed: bool = False
    aborted: bool = False
    layers: dict[str, Image] = field(default_factory=dict)
    final: Image | None = None  # image layer of the highest stage so far
    noise_text: str = ""  # "estimated noise σ = 2.71 % (Gaussian)", once the worker has prepared the run
    model_text: str = ""  # the engine's words for the model it chose, and why (run.model_description)
    planes_done: int = 0  # work done (plane-steps, as in Progress), for the cancel message of stack runs
    slab: tuple[int, int] | None = None  # a volume preview: the planes z0:z1 it deconvolved
    kernel_shape: tuple[int, ...] = ()  # a volume run: its PSF on the image's grid


class DeblurWidget(Container):
    """Dock widget "FCNN deblur": pick a blurry image and its kernel, press Run.

    Each stage of the cascade adds (or, when run again on the same source,
    updates) an Image layer ``"<source> stage k"`` — and, with *show
    gradients*, hidden layers ``"<source> grad x stage k"`` / ``"... grad y ..."``.
    For a whole-layer run of a stack, the last stage is an in-memory array and the
    other stages and the gradients are read-only memory maps of files in a
    temporary folder, deleted when their layers are removed or the widget closes.
    """

    #: Emitted on the GUI thread when a run ends: "done", "cancelled" or "failed".
    run_finished = Signal(str)

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        # Why unwrap: napari hands plugins a PublicOnlyProxy; the layer pickers and selection need the real
        # objects (identity comparisons). Only public API is used below.
        self.viewer = getattr(viewer, "__wrapped__", viewer)
        self.image_layer = ComboBox(label="Blurry image", choices=self._image_choices)
        self.kernel_source = ComboBox(
            label="Kernel source", choices=[KERNEL_LAYER, *GENERATORS], value=KERNEL_LAYER
        )
        self.kernel_layer = ComboBox(label="Kernel / PSF", choices=self._kernel_choices)
        self.kernel_prep = ComboBox(label="PSF preparation", choices=KERNEL_PREP_CHOICES, value="auto")
        self.psf_sigma = FloatSpinBox(label="σ (px)", min=0.1, max=30.0, step=0.1, value=2.0)
        self.psf_radius = FloatSpinBox(label="Radius (px)", min=0.5, max=60.0, step=0.5, value=3.0)
        self.psf_length = FloatSpinBox(label="Length (px)", min=1.0, max=120.0, step=1.0, value=15.0)
        self.psf_angle = FloatSpinBox(label="Angle (°)", min=-180.0, max=180.0, step=1.0, value=0.0)
        self.psf_na = FloatSpinBox(label="NA", min=0.05, max=1.7, step=0.05, value=1.4)
        self.psf_excitation = FloatSpinBox(label="Excitation λ (nm)", min=200.0, max=2000.0, step=10.0, value=488.0)
        self.psf_wavelength = FloatSpinBox(label="Emission λ (nm)", min=200.0, max=2000.0, step=10.0, value=520.0)
        self.psf_index = FloatSpinBox(label="Refractive index", min=1.0, max=2.0, step=0.001, value=1.515)
        self.psf_pinhole = FloatSpinBox(label="Pinhole (AU)", min=0.0, max=10.0, step=0.1, value=1.0)
        self.psf_pixel_size = FloatSpinBox(label="Pixel size (nm)", min=1.0, max=10000.0, step=1.0, value=65.0)
        self.psf_z_step = FloatSpinBox(label="Z step (nm)", min=1.0, max=100000.0, step=10.0, value=200.0)
        self.add_kernel_button = PushButton(text="Add kernel layer")
        self._generator_params = {
            GAUSSIAN: (self.psf_sigma,),
            DISK: (self.psf_radius,),
            MOTION: (self.psf_length, self.psf_angle),
            WIDEFIELD: (self.psf_na, self.psf_wavelength, self.psf_pixel_size),
            WIDEFIELD_3D: (self.psf_na, self.psf_wavelength, self.psf_index, self.psf_pixel_size, self.psf_z_step),
            CONFOCAL_3D: (self.psf_na, self.psf_excitation, self.psf_wavelength, self.psf_index, self.psf_pinhole,
                          self.psf_pixel_size, self.psf_z_step),
        }
        self.noise_mode = ComboBox(label="Noise", choices=NOISE_CHOICES, value=AUTO)
        lo, hi = NOISE_PERCENT_RANGE
        self.noise_percent = FloatSpinBox(label="Noise s.d. (%)", min=lo, max=hi, step=NOISE_PERCENT_STEP,
                                          value=NOISE_PERCENT_DEFAULT)
        self.iterations = SpinBox(label="Iterations", min=1, max=DEFAULT_STAGES, value=DEFAULT_STAGES)
        self.device = ComboBox(label="Device", choices=["auto", *available_devices()], value="auto")
        self.precision = ComboBox(label="Precision", choices=["auto", *PRECISIONS], value="auto")
        self.show_gradients = CheckBox(text="show gradients", value=False)
        self.model_source = ComboBox(label="Model", choices=MODEL_CHOICES, value=DEFAULT_MODEL)
        self.model_file = FileEdit(label="Model file", mode="r", filter="*.safetensors")
        self.scope = RadioButtons(label="Deblur", choices=[CURRENT_PLANE, WHOLE_LAYER], value=CURRENT_PLANE)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="Progress", min=0, max=1, value=0)
        self.layout_info = Label(label="Layout", value="")
        self.status = Label(value="")
        super().__init__(
            widgets=[
                self.image_layer,
                self.kernel_source,
                self.kernel_layer,
                self.kernel_prep,
                self.psf_sigma,
                self.psf_radius,
                self.psf_length,
                self.psf_angle,
                self.psf_na,
                self.psf_excitation,
                self.psf_wavelength,
                self.psf_index,
                self.psf_pinhole,
                self.psf_pixel_size,
                self.psf_z_step,
                self.add_kernel_button,
                self.noise_mode,
                self.noise_percent,
                self.iterations,
                self.device,
                self.precision,
                self.show_gradients,
                self.model_source,
                self.model_file,
                self.scope,
                self.layout_info,
                Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False),
                self.progress,
                self.status,
            ]
        )
        self._worker = None
        self._run: _RunState | None = None
        self._scratch = _ScratchFolder()  # on-disk layers of whole-layer stack runs
        self.activity: napari_progress | None = None  # the run's entry in napari's activity dock
        self._volume_shown = False  # the options describe a volumetric run (3D PSF): see _update_mode
        self._noise_before_volume: str | None = None  # the noise choice (NUMBER) volumes replaced by AUTO
        if hasattr(self.status.native, "setWordWrap"):  # long words (noise, model) wrap instead of widening the dock
            self.status.native.setWordWrap(True)
        self.image_layer.tooltip = "The image to sharpen. It is never modified: results go to new layers."
        self.kernel_layer.tooltip = (
            f"The blur of a single point (PSF or motion kernel): a small 2D greyscale layer (at most "
            f"{MAX_KERNEL_SIDE} × {MAX_KERNEL_SIDE} pixels), or a 3D PSF (a PSF or bead z-stack, Z, Y, X) to "
            "deconvolve a z-stack in 3D."
        )
        self.kernel_prep.tooltip = (
            "A measured PSF (a bead cropped from a camera image) is prepared like psf.load_psf does: its "
            "background (camera offset, the median of its border) is subtracted, values under 3 σ of the border's "
            "noise are set to 0, it is recentred on its centroid, cropped to 99.9 % of its mass and normalised. "
            "'auto' does this for kernels with a background or negative values, and uses computed kernels (zero "
            "border) exactly as they are. A bead z-stack (3D PSF) is prepared in 3D (psf3d.prepare_measured_psf_3d: "
            f"background of its box's faces and {psf3d.BEAD_NOISE_FLOOR:g} σ of their noise subtracted, recentred on its "
            "centroid, cropped to 99 % of its mass, normalised)."
        )
        self.psf_z_step.tooltip = (
            "Distance between the planes of the z-stack (from the image layer's scale when it has a length unit)."
        )
        self.psf_pixel_size.tooltip = (
            "Pixel size in the sample (from the image layer's scale when it has a length unit)."
        )
        self.psf_pinhole.tooltip = "Confocal pinhole diameter in Airy units (1 AU is the usual setting; 0: a point)."
        self.psf_index.tooltip = "Refractive index of the immersion medium: 1.515 oil, 1.333 water, 1.0 air."
        self.layout_info.tooltip = "How the run will read the image layer with this kernel."
        self.kernel_source.tooltip = (
            "Where the kernel comes from: a layer of the viewer, or a model PSF computed from a few parameters."
        )
        self.add_kernel_button.tooltip = "Add the generated kernel as an image layer (to look at it, or to pick it)."
        self.noise_mode.tooltip = (
            "How noisy the blurry image is.\n"
            "• auto (default): measured from the image when you press Run, once for the whole layer: one σ for "
            "even (Gaussian) noise, or σ²(x) = a·x + b for photon (camera) noise. The status line shows the "
            "estimate, and the result layers' metadata keeps it.\n"
            "• a number: you give the noise s.d. in % of the image's intensity range (below)."
        )
        self.noise_percent.tooltip = (
            "Noise s.d. in % of the intensity range the run maps to [0, 1] (8-bit images: 0–255, so 1 % is about "
            "2.5 grey levels; float images in 0–1: that range; others: their 0.05th to 99.95th percentile). The "
            "same σ is assumed everywhere. Too low leaves grain or ripples, too high smooths fine detail."
        )
        self.model_source.tooltip = (
            "Which trained cascade deblurs.\n"
            "• default: the noise-map cascade (one model for any noise level and for photon noise), or the "
            "per-level cascade where the table measured for the noise-map model says it does better at this "
            "Gaussian noise level. The status line says which one ran and why.\n"
            "• noise-map cascade: always the noise-map cascade.\n"
            f"• per-level: the paper's cascade trained at {_LEVELS} % noise nearest the noise level (advanced).\n"
            "• model file: your own cascade (.safetensors, e.g. made with 'fcnn-deblur train').\n"
            "With a 3D PSF, 'default' runs the volume cascade; noise-map and per-level deblur planes only."
        )
        self.iterations.tooltip = "Number of FCNN stages to run (each one adds a layer)."
        self.show_gradients.tooltip = (
            "Also add the denoised gradients each stage used (hidden layers; for a whole stack, kept on disk)."
        )
        self.scope.tooltip = (
            "For stacks and time series: only the plane shown now, or every plane. With a 3D PSF, the preview "
            "deconvolves the z-slab of ±(PSF depth) planes around the plane on screen, in 3D."
        )
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.noise_mode.changed.connect(self._update_noise)
        self.noise_percent.changed.connect(self._update_model_info)
        self.model_source.changed.connect(self._update_model_info)
        self.model_file.changed.connect(self._update_model_info)
        self.image_layer.changed.connect(self._update_scope)
        self.kernel_source.changed.connect(self._update_kernel_source)
        for picker in (self.image_layer, self.kernel_layer, self.kernel_source, self.scope):
            picker.changed.connect(self._update_mode)
        self.add_kernel_button.changed.connect(self.add_kernel_layer)
        # Why our own connections: napari only resets choices of docked widgets; this one also works undocked.
        for event in ("inserted", "removed", "reordered"):
            getattr(self.viewer.layers.events, event).connect(self._layers_changed)
        self.viewer.layers.events.removed.connect(self._sweep_scratch)  # a removed on-disk layer's file goes
        self.native.destroyed.connect(self._scratch.close)
        self.reset_choices()
        self._update_noise()
        self._update_scope()
        self._update_kernel_source()
        self._update_mode()

    # ------------------------------------------------------------------ choices and option state

    def _layers_changed(self, event: Any = None) -> None:
        self.reset_choices()

    def _sweep_scratch(self, event: Any = None) -> None:
        """Delete the on-disk stage/gradient files no layer shows any more (not those of a run in progress)."""
        keep = self._run.job.scratch if self._run is not None else None
        try:
            self._scratch.sweep(self.viewer.layers, keep)
        except OSError as err:  # e.g. a file still mapped on Windows: it goes when the widget closes
            logger.debug("could not delete a temporary layer file: %s", err)

    def _image_choices(self, widget: Any = None) -> list[tuple[str, Image]]:
        layers = [lyr for lyr in self.viewer.layers if isinstance(lyr, Image)]
        # Kernel-looking layers and our own results go last, so the default is the likely blurry image.
        layers.sort(key=lambda lyr: (META_KEY in lyr.metadata, _is_kernel_like(lyr) and _kernel_named(lyr)))
        return [(lyr.name, lyr) for lyr in layers]

    def _kernel_choices(self, widget: Any = None) -> list[tuple[str, Image]]:
        layers = [
            lyr
            for lyr in self.viewer.layers
            if isinstance(lyr, Image) and META_KEY not in lyr.metadata and _is_kernel_like(lyr)
        ]
        layers.sort(key=lambda lyr: (not _kernel_named(lyr), max(_layer_array(lyr).shape[-2:])))
        return [(lyr.name, lyr) for lyr in layers]

    def _update_kernel_source(self, *_: Any) -> None:
        source = self.kernel_source.value
        self.kernel_layer.visible = source == KERNEL_LAYER
        self.kernel_prep.visible = source == KERNEL_LAYER
        self.add_kernel_button.visible = source != KERNEL_LAYER
        shown = set(map(id, self._generator_params.get(source, ())))
        for widgets in self._generator_params.values():
            for w in widgets:
                w.visible = id(w) in shown

    def _psf_is_3d(self) -> bool:
        """Whether the chosen kernel is a 3D PSF (a generated 3D PSF, or a kernel layer with several planes)."""
        source = self.kernel_source.value
        if source != KERNEL_LAYER:
            return source in GENERATORS_3D
        kernel = self.kernel_layer.value
        if kernel is None or kernel.rgb:
            return False
        return is_volume_kernel(np.broadcast_to(False, _kernel_shape(kernel)))  # a view: no data read

    def _volumetric(self) -> bool:
        """Whether Run would deconvolve volumes: a 3D PSF on a greyscale image layer with at least 3 axes."""
        image = self.image_layer.value
        return (image is not None and not image.rgb and len(_layer_array(image).shape) >= 3
                and self._psf_is_3d())

    def _update_mode(self, *_: Any) -> None:
        """Say how the layer will be read, and default volumes to the estimated (Poisson–Gaussian) noise."""
        image = self.image_layer.value
        volume = self._volumetric()
        if image is None:
            self.layout_info.value = ""
        elif self._psf_is_3d() and not volume:
            self.layout_info.value = "a 3D PSF needs a z-stack (Z, Y, X): this layer is " + (
                "RGB" if image.rgb else "one plane")
        else:
            shape = tuple(_layer_array(image).shape)
            nd = 3 if volume else _plane_ndim(image)
            preview = len(shape) > nd and self.scope.value == CURRENT_PLANE
            if volume:
                preview = self.scope.value == CURRENT_PLANE
            words = _layout_words(shape, bool(image.rgb), preview, volume)
            self.layout_info.value = words if volume or len(shape) == nd else f"2D kernel: {words}"
        if volume != self._volume_shown:
            self._volume_shown = volume
            if volume and self.noise_mode.value != AUTO:  # camera z-stacks: photon noise, estimated
                self._noise_before_volume = self.noise_mode.value
                self.noise_mode.value = AUTO
            elif not volume:
                if self._noise_before_volume is not None and self.noise_mode.value == AUTO:
                    self.noise_mode.value = self._noise_before_volume  # the number in the spin box is as it was
                self._noise_before_volume = None
            self._update_model_info()

    def _generated_3d(self, volume_shape: tuple[int, ...] | None = None) -> tuple[Callable[[], np.ndarray], str,
                                                                                   tuple[float, float, float]]:
        """(recipe, name, voxel size in µm) of the selected 3D PSF generator; ValueError for impossible parameters.

        The PSF's shape is the generator's automatic box, capped at :data:`MAX_GENERATED_3D` and at the
        volume's size (largest odd sides).  Pixels are square.
        """
        source = self.kernel_source.value
        na, n = float(self.psf_na.value), float(self.psf_index.value)
        em, ex = float(self.psf_wavelength.value), float(self.psf_excitation.value)
        dz, dx = float(self.psf_z_step.value), float(self.psf_pixel_size.value)
        if na >= n:
            raise ValueError(f"the NA ({na:g}) must be smaller than the refractive index ({n:g})")
        cap = MAX_GENERATED_3D
        if volume_shape is not None:
            cap = tuple(max(1, min(c, s if s % 2 else s - 1)) for c, s in zip(cap, volume_shape[-3:]))
        spacing = (dz / 1000, dx / 1000, dx / 1000)
        voxel = f"voxel {dz:g}×{dx:g}×{dx:g} nm"
        if source == WIDEFIELD_3D:
            recipe = functools.partial(psf3d.widefield_psf_3d, None, spacing, na, em / 1000, n, max_shape=cap)
            return recipe, f"3D widefield PSF NA={na:g} λ={em:g} nm n={n:g} {voxel}", spacing
        if source == CONFOCAL_3D:
            ph = float(self.psf_pinhole.value)
            recipe = functools.partial(psf3d.confocal_psf_3d, None, spacing, na, ex / 1000, em / 1000, n,
                                       pinhole=ph, max_shape=cap)
            name = f"3D confocal PSF NA={na:g} λex={ex:g} λem={em:g} nm n={n:g} pinhole={ph:g} AU {voxel}"
            return recipe, name, spacing
        raise ValueError(f"'{source}' is not a 3D PSF generator")

    def generated_kernel(self) -> tuple[np.ndarray, str]:
        """The kernel of the selected generator and its layer name (ValueError for impossible parameters)."""
        source = self.kernel_source.value
        if source == GAUSSIAN:
            s = self.psf_sigma.value
            return psf.gaussian_psf(s), f"Gaussian PSF σ={s:g}"
        if source == DISK:
            r = self.psf_radius.value
            return psf.disk_psf(r), f"disk PSF r={r:g}"
        if source == MOTION:
            n, a = self.psf_length.value, self.psf_angle.value
            return psf.linear_motion_psf(n, a), f"linear motion PSF L={n:g} θ={a:g}°"
        if source == WIDEFIELD:
            na, wl, px = self.psf_na.value, self.psf_wavelength.value, self.psf_pixel_size.value
            return psf.widefield_psf(na, wl, px), f"widefield PSF NA={na:g} λ={wl:g} nm px={px:g} nm"
        if source in GENERATORS_3D:
            recipe, name, _ = self._generated_3d()
            return recipe(), name
        raise ValueError(f"'{source}' is not a kernel generator")

    def add_kernel_layer(self, *_: Any) -> Image | None:
        """Add the generated kernel to the viewer as an Image layer (None, with a notification, on a problem).

        A 3D PSF gets its voxel size as scale (µm) when the image layer has length units, so picking it as a
        kernel layer later uses it on the image's grid (resampled if the image's voxels differ).
        """
        try:
            k, name = self.generated_kernel()
        except ValueError as err:
            text = str(err)
            show_error(f"Cannot make the kernel: {text[:1].lower() + text[1:]}.")
            return None
        extra: dict[str, Any] = {}
        image = self.image_layer.value
        if k.ndim == 3 and image is not None and _voxel_size(image)[1] is not None:
            extra = {"scale": self._generated_3d()[2], "units": ("µm",) * 3}
        return self.viewer.add_image(k, name=name, colormap="inferno", **extra)

    def noise_choice(self) -> float | str:
        """The noise the run gets: AUTO (estimated by the engine), or the spin box's % as an s.d. on [0, 1]."""
        if self.noise_mode.value == AUTO:
            return AUTO
        return float(self.noise_percent.value) / 100

    def _update_noise(self, *_: Any) -> None:
        self.noise_percent.visible = self.noise_mode.value == NUMBER
        self._update_model_info()

    def _model_path(self) -> Path | None:
        """The cascade file the current options point to, for its stage count (None: no file chosen, or a 2D
        model name with a 3D PSF).  The default's file (noise-map or per-level) is decided by the engine when the
        run is prepared; the noise-map cascade's stands for it here."""
        choice = self.model_source.value
        if choice == FROM_FILE:
            value = self.model_file.value
            return Path(value) if value is not None and str(value) not in ("", ".") else None
        if self._volumetric():
            return model_io.volume_model_path() if choice == DEFAULT_MODEL else None
        noisemap = model_io.noisemap_model_path()
        if choice == NOISEMAP or (choice == DEFAULT_MODEL and noisemap.is_file()):
            return noisemap
        noise = self.noise_choice()
        if noise == AUTO:  # any installed per-level cascade (they all have the paper's 3 stages)
            return next(iter(model_io.available_models().values()), None)
        return model_io.shipped_model_path(model_io.nearest_trained_level(noise))

    def _model_problem(self) -> str | None:
        """What keeps the current model choice from running (a short line for the status), or None."""
        choice, volume = self.model_source.value, self._volumetric()
        if choice == FROM_FILE:
            path = self._model_path()
            if path is not None and _stage_count(path) is None:
                return "That file is not a napari-fcnn-deblur model."
            return None
        if volume and choice in MODELS_2D:
            return (f"'{MODEL_LABELS[choice]}' deblurs 2D planes only: a 3D PSF runs the volume cascade "
                    f"('{DEFAULT_MODEL}') or a volume cascade file.")
        if volume:
            return None if model_io.volume_model_path().is_file() else (
                "The volume cascade is not installed: choose a model file.")
        missing = _missing_model(None if choice == DEFAULT_MODEL else choice, self.noise_choice())
        return missing.split(". Under")[0] + ": choose another model or a model file." if missing else None

    def _update_model_info(self, *_: Any) -> None:
        self.model_file.visible = self.model_source.value == FROM_FILE
        path = self._model_path()
        n = _stage_count(path) if path is not None and path.is_file() else None
        old_max = self.iterations.max
        self.iterations.max = n or DEFAULT_STAGES
        if n and self.iterations.value == old_max:  # "all stages" stays "all stages"
            self.iterations.value = n
        if self.running:
            return
        self.status.value = self._model_problem() or ""

    def _update_scope(self, *_: Any) -> None:
        layer = self.image_layer.value
        self.scope.visible = layer is not None and len(_layer_array(layer).shape) > _plane_ndim(layer)
        nm = _pixel_size_nm(layer) if layer is not None else None
        if nm is not None:  # the generated PSFs follow the image's physical pixel size ...
            self.psf_pixel_size.value = nm
        nm = _z_step_nm(layer) if layer is not None else None
        if nm is not None:  # ... and a z-stack's plane spacing
            self.psf_z_step.value = nm

    @property
    def running(self) -> bool:
        return self._worker is not None

    @property
    def worker(self) -> Any:
        """The napari GeneratorWorker of the run in progress (None when idle)."""
        return self._worker

    # ------------------------------------------------------------------ run / cancel

    def _prepare_job(self) -> _Job | None:
        """Check the options on the GUI thread (cheap checks only); notify and return None on a problem."""
        image, kernel = self.image_layer.value, self.kernel_layer.value
        generated = self.kernel_source.value != KERNEL_LAYER
        if image is None:
            show_warning("Choose the blurry image layer first (open an image, or File ▸ Open Sample ▸ FCNN deblur).")
            return None
        if not generated and kernel is None:
            show_error(
                "No kernel layer to choose: open a small greyscale image of the blur of a single point "
                "(a PSF or motion kernel), or set 'Kernel source' to a model PSF "
                f"({', '.join(GENERATORS)}) and set its parameters."
            )
            return None
        if not generated and kernel is image:
            show_error(f"'{image.name}' is chosen as both the image and the kernel: pick the kernel layer.")
            return None
        data = _layer_array(image)
        shape = tuple(data.shape)
        if 0 in shape:
            show_error(
                f"The image layer '{image.name}' is empty (size {' × '.join(map(str, shape))}): nothing to deblur."
            )
            return None
        if not generated and kernel.rgb:
            show_error(
                f"The kernel layer '{kernel.name}' is a colour (RGB) image; a kernel must be greyscale. "
                "Right-click the layer, choose 'Split RGB', and pick one of the channels as kernel."
            )
            return None
        volume = self._psf_is_3d()
        fields = self._volume_kernel(image, kernel, shape) if volume else self._plane_kernel(image, kernel, shape)
        if fields is None:
            return None
        model = self._job_model(volume)
        if model is False:
            return None
        nd = 3 if volume else _plane_ndim(image)
        lead = shape[: len(shape) - nd]
        preview = self.scope.value == CURRENT_PLANE and (volume or bool(lead))
        plane_index: tuple[int, ...] = ()
        if preview and volume:  # the plane on screen: its volume (leading indices) and its z
            *plane_index, z = self._current_index(image, shape[:-2])
            fields["z_index"] = z
        elif preview:
            plane_index = self._current_index(image, lead)
        return _Job(
            source_name=image.name,
            data=data,
            rgb=bool(image.rgb),
            noise_level=self.noise_choice(),
            iterations=int(min(self.iterations.value, self.iterations.max)),
            device=str(self.device.value),
            model=model,
            plane_index=tuple(plane_index),
            preview=preview,
            precision=str(self.precision.value),
            gradients=bool(self.show_gradients.value),
            volume=volume,
            **fields,
        )

    def _plane_kernel(self, image: Image, kernel: Image | None, shape: tuple[int, ...]) -> dict | None:
        """A 2D kernel's job fields (kernel, kernel_name, kernel_note), checked; None after a notification."""
        kernel_note = ""
        if self.kernel_source.value != KERNEL_LAYER:
            try:
                k, kernel_name = self.generated_kernel()
            except ValueError as err:
                text = str(err)
                show_error(f"Cannot make the kernel: {text[:1].lower() + text[1:]}.")
                return None
            what = f"generated kernel '{kernel_name}'"
        else:
            kernel_name, what = kernel.name, f"kernel layer '{kernel.name}'"
            mismatch = _kernel_scale_problem(image, kernel)
            if mismatch is not None:
                show_error(mismatch)
                return None
            k = np.squeeze(np.asarray(_layer_array(kernel)))
            if k.ndim != 2:
                show_error(
                    f"The kernel layer '{kernel.name}' has {k.ndim} dimensions {k.shape}; the kernel must be one 2D "
                    "image, or a 3D PSF (Z, Y, X) to deconvolve a z-stack in 3D."
                )
                return None
            try:
                prepared = psf.prepare_psf(k, str(self.kernel_prep.value))
            except ValueError as err:
                text = str(err)
                show_error(f"The {what} cannot be used as a measured PSF: {text[:1].lower() + text[1:]}.")
                return None
            k = prepared.kernel
            kernel_note = prepared.describe() if prepared.measured else ""
        plane = shape[-3:-1] if image.rgb else shape[-2:]
        if k.shape[0] > plane[0] or k.shape[1] > plane[1]:
            hint = (
                "Make the PSF smaller (its parameters) or use a larger image."
                if self.kernel_source.value != KERNEL_LAYER
                else "Check the two layer choices: the kernel is the small picture of how one point is blurred."
            )
            show_error(
                f"The kernel '{kernel_name}' ({k.shape[0]} × {k.shape[1]} pixels) is larger than the image "
                f"'{image.name}' ({plane[0]} × {plane[1]} pixels). {hint}"
            )
            return None
        try:
            prepare_kernel(k, plane)
        except ValueError as err:
            text = str(err)
            show_error(f"The {what} cannot be used: {text[:1].lower() + text[1:]}.")
            return None
        return {"kernel": k.astype(np.float32), "kernel_name": kernel_name, "kernel_note": kernel_note}

    def _volume_kernel(self, image: Image, kernel: Image | None, shape: tuple[int, ...]) -> dict | None:
        """A 3D PSF's job fields, checked; None after a notification.

        A PSF layer is prepared as a bead z-stack when 'PSF preparation' says so (auto: when its box's faces
        show a background), and put on the image's voxel grid (:func:`_psf_grid`; the engine resamples it).
        A generated PSF is computed by the worker on the voxel size of the spin boxes.
        """
        generated = self.kernel_source.value != KERNEL_LAYER
        if generated:
            try:
                recipe, name, _ = self._generated_3d(shape if len(shape) >= 3 else None)
            except ValueError as err:
                text = str(err)
                show_error(f"Cannot make the kernel: {text[:1].lower() + text[1:]}.")
                return None
            what, chosen = f"generated '{name}'", f"The generated '{name}' is a 3D PSF"
        else:
            name, what = kernel.name, f"3D PSF layer '{kernel.name}'"
            chosen = f"The kernel layer '{name}' is a 3D PSF ({_sizes(_kernel_shape(kernel))} voxels)"
        if image.rgb or len(shape) < 3:
            show_error(
                f"{chosen}, but the image '{image.name}' is {'an RGB image' if image.rgb else 'a single 2D plane'} "
                f"({_sizes(shape)}): a 3D PSF deconvolves z-stacks (Z, Y, X). Pick a z-stack image layer, or a 2D "
                "kernel (e.g. the PSF's in-focus plane) or a 2D generated PSF."
            )
            return None
        if generated:
            return {"kernel": None, "kernel_recipe": recipe, "kernel_name": name}
        try:
            spacing, psf_spacing, grid_note = _psf_grid(image, kernel)
        except ValueError as err:
            show_error(str(err))
            return None
        k = np.squeeze(np.asarray(_layer_array(kernel)))
        kernel_note = ""
        prep = str(self.kernel_prep.value)
        try:
            if prep == "measured" or (prep == "auto" and psf.looks_measured(k)):
                before = k.shape
                k = psf3d.prepare_measured_psf_3d(k, threshold=psf3d.BEAD_NOISE_FLOOR)
                kernel_note = (f"bead z-stack: background and {psf3d.BEAD_NOISE_FLOOR:g} σ of its noise subtracted, "
                               f"recentred on its centroid, cropped from {_sizes(before)} to {_sizes(k.shape)} "
                               "voxels, normalised to sum 1")
            prepare_kernel(k, None, 3)  # what cannot be a PSF (NaN, negative, all zero) is said now
        except ValueError as err:
            text = str(err)
            prepared = " as a measured PSF" if kernel_note or prep == "measured" else ""
            show_error(f"The {what} cannot be used{prepared}: {text[:1].lower() + text[1:]}.")
            return None
        if spacing is None and any(a > b for a, b in zip(k.shape, shape[-3:])):
            show_error(
                f"The {what} ({_sizes(k.shape)} voxels, Z × Y × X) is larger than the volume '{image.name}' "
                f"({_sizes(shape[-3:])} voxels): a 3D PSF must fit in the z-stack. Crop the PSF (fewer planes), "
                "or use a z-stack with more planes."
            )
            return None
        return {"kernel": np.asarray(k, np.float32), "kernel_name": name, "kernel_note": kernel_note,
                "spacing": spacing, "psf_spacing": psf_spacing, "grid_note": grid_note}

    def _job_model(self, volume: bool) -> Path | str | None | bool:
        """The run's ``model=``: None (the default rule; volumes: the volume cascade), NOISEMAP, PER_LEVEL or a
        file; False after a notification."""
        choice = self.model_source.value
        if choice == FROM_FILE:
            model = self._model_path()
            if model is None or not model.is_file():
                show_error(f"Choose a model file (.safetensors) under 'Model file', or switch 'Model' to "
                           f"'{DEFAULT_MODEL}'.")
                return False
            if _stage_count(model) is None:
                show_error(f"'{model.name}' is not a napari-fcnn-deblur model file (a cascade saved as .safetensors).")
                return False
            if _is_volume_model(model) != volume:
                show_error(
                    f"'{model.name}' is a volume cascade, for 3D PSFs; a 2D kernel needs a 2D cascade: switch "
                    f"'Model' to '{DEFAULT_MODEL}', or pick a 2D cascade file." if not volume else
                    f"'{model.name}' is a 2D cascade; a 3D PSF needs a volume cascade: switch 'Model' to "
                    f"'{DEFAULT_MODEL}' (the volume cascade), or pick a volume cascade file."
                )
                return False
            return model
        if volume:
            if choice in MODELS_2D:
                show_error(
                    f"The model '{MODEL_LABELS[choice]}' deblurs 2D planes only; a 3D PSF is deconvolved by the "
                    "volume cascade. "
                    f"Under 'Model', choose '{DEFAULT_MODEL}' (the volume cascade) or a volume cascade file, or pick "
                    "a 2D kernel to deblur the stack plane by plane."
                )
                return False
            if not model_io.volume_model_path().is_file():
                show_error(_no_volume_model_message())
                return False
            return None
        model = None if choice == DEFAULT_MODEL else choice
        missing = _missing_model(model, self.noise_choice())
        if missing is not None:
            show_error(missing)
            return False
        return model

    def _current_index(self, layer: Image, lead: tuple[int, ...]) -> tuple[int, ...]:
        """Index of the plane on screen (viewer.dims' world position mapped into the layer's data)."""
        pos = np.asarray(layer.world_to_data(self.viewer.dims.point))[: len(lead)]
        return tuple(int(np.clip(np.round(p), 0, n - 1)) for p, n in zip(pos, lead, strict=True))

    def run(self, *_: Any) -> None:
        """Start deblurring in a worker thread (does nothing while a run is going)."""
        if self.running:
            return
        job = self._prepare_job()
        if job is None:
            return
        source: Image = self.image_layer.value
        shape = tuple(_layer_array(source).shape)
        lead_shape = shape[: len(shape) - job.item_ndim()]
        if not job.preview and math.prod(lead_shape) > 1:  # a whole stack: stages and gradients on disk
            job = self._with_scratch(job, shape)
            if job is None:
                return
        scale = tuple(float(s) for s in source.scale)
        translate = [float(t) for t in source.translate]
        if job.preview:  # a one-plane result sits exactly at its plane of the stack
            for i, idx in enumerate(job.plane_index):
                translate[i] += idx * scale[i]
        frame: dict[str, Any] = {"affine": np.asarray(source.affine.affine_matrix)}
        for attr in ("units", "axis_labels"):  # napari >= 0.6
            if hasattr(source, attr):
                frame[attr] = tuple(getattr(source, attr))
        self._run = _RunState(
            job=job,
            source_scale=scale,
            out_translate=tuple(translate),
            source_metadata={k: v for k, v in source.metadata.items() if k != META_KEY},
            frame=frame,
            contrast_limits=tuple(float(c) for c in source.contrast_limits),
            colormap=None if source.rgb else source.colormap,
            out_lead=(1,) * len(lead_shape) if job.preview else lead_shape,
            show_gradients=job.gradients,
        )
        if job.volume:  # volume-steps, as VolumeRun reports them
            planes = 1 if job.preview else math.prod(lead_shape)
        else:
            planes = PlaneLayout.of(shape, job.rgb).n_planes // (math.prod(lead_shape) if job.preview else 1)
        total = planes * (job.iterations + 1)
        self.progress.max, self.progress.value = total, 0
        # napari's activity dock shows the same progress (plane-steps, as the engine reports them)
        self.activity = napari_progress(total=total, desc=f"FCNN deblur: {job.source_name}")
        words = _layout_words(shape, job.rgb, job.preview, job.volume)
        self.status.value = f"Deblurring '{job.source_name}' ({words})…"
        if job.kernel_note:
            show_info(f"Kernel layer '{job.kernel_name}' prepared as a measured PSF: {job.kernel_note}.")
            self.status.value += f" PSF: {job.kernel_note}."
        worker = _deblur_worker(job)
        worker.yielded.connect(self._on_yielded)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self.native.destroyed.connect(worker.quit)  # closing the window stops the computation too
        self._worker = worker
        self.run_button.enabled, self.cancel_button.enabled = False, True
        worker.start()

    def _with_scratch(self, job: _Job, shape: tuple[int, ...]) -> _Job | None:
        """``job`` with a new on-disk folder for its intermediate stages and gradients (None: not enough space)."""
        it = job.iterations
        if job.volume:  # three gradients of the volume's shape
            grads = 3 * math.prod(shape)
        else:
            layout = PlaneLayout.of(shape, job.rgb)
            grads = 2 * math.prod(layout.lead + layout.plane_shape)
        need = 4 * (it * math.prod(shape) + (it * grads if job.gradients else 0))
        try:
            folder = self._scratch.new_run()
            free = self._scratch.free_bytes()
        except OSError as err:
            show_error(f"Cannot make a temporary folder for the intermediate stages of '{job.source_name}': {err}.")
            return None
        if need > 0.95 * free:
            folder.rmdir()
            self._sweep_scratch()  # the temporary folder too, when nothing else is in it
            gradients = " or turn off 'show gradients'" if job.gradients else ""
            show_error(
                f"A whole-layer run of '{job.source_name}' keeps its intermediate stages{' and gradients' if job.gradients else ''} "
                f"on disk: {need / 2**30:.2f} GiB in {folder.parent.parent}, where {free / 2**30:.2f} GiB are free. "
                f"Free some space, point TMPDIR to a larger disk before starting napari, use fewer iterations{gradients}."
            )
            return None
        return dataclasses.replace(job, scratch=folder)

    def cancel(self, *_: Any) -> None:
        """Stop the run after the stage being computed; finished layers stay."""
        if self._worker is not None:
            self._worker.quit()
            self.cancel_button.enabled = False
            self.status.value = "Cancelling after the current stage…"

    # ------------------------------------------------------------------ results (GUI thread)

    def _on_yielded(self, item: _StageDone | _Failed | _Prepared | _VolumeReady | Progress) -> None:
        run = self._run
        if run is None:
            return
        if isinstance(item, Progress):
            self.progress.max, self.progress.value = item.total, item.done
            run.planes_done = item.done
            if self.activity is not None:
                self.activity.update(item.done - self.activity.n)
            return
        if isinstance(item, _VolumeReady):
            self._volume_ready(run, item)
            return
        if isinstance(item, _Prepared):
            run.noise_text, run.model_text = _noise_words(item.noise, item.estimated), item.model
            self.status.value = f"Deblurring '{run.job.source_name}' ({self._run_words(run)})…"
            return
        if isinstance(item, _Failed):
            run.failed = True
            (show_warning if item.level == "warning" else show_error)(item.message)
            self.status.value = item.message if len(item.message) < 90 else item.message[:87] + "…"
            return
        self._show_stage(run, item)
        run.stages_done += 1
        res = item.result
        said = f" ({self._run_words(run)})" if run.noise_text else ""
        self.status.value = f"Deblurring '{run.job.source_name}'{said}: stage {res.stage}/{res.iterations} done"


    def _volume_ready(self, run: _RunState, item: _VolumeReady) -> None:
        """A volume run is prepared: place the preview's slab, and say how the PSF was put on the image's grid."""
        job = run.job
        run.kernel_shape = item.kernel_shape
        if item.slab is not None:  # the slab's layer sits exactly at its planes of the volume
            run.slab = item.slab
            z_axis = len(run.source_scale) - 3
            translate = list(run.out_translate)
            translate[z_axis] += item.slab[0] * run.source_scale[z_axis]
            run.out_translate = tuple(translate)
            self.status.value = (f"Deblurring '{job.source_name}': 3D preview of planes z {item.slab[0]}–"
                                 f"{item.slab[1] - 1} of {job.data.shape[-3]} (±{item.kernel_shape[0]} planes around "
                                 "the plane on screen)…")
        if job.grid_note:
            shapes = f" ({_sizes(job.kernel.shape)} → {_sizes(item.kernel_shape)} voxels)"
            show_info(f"3D PSF '{job.kernel_name}' {job.grid_note}{shapes}.")

    @staticmethod
    def _run_words(run: _RunState) -> str:
        """The noise and the model of a prepared run, for the status line."""
        return f"{run.noise_text}; model: {run.model_text}" if run.model_text else run.noise_text

    def _show_stage(self, run: _RunState, item: _StageDone) -> None:
        res, job = item.result, run.job
        src, k = job.source_name, res.stage
        suffix = " (preview)" if job.preview else ""
        parts: list[tuple[str, str, np.ndarray]] = []
        limits: dict[str, tuple[float, float] | None] = {"image": item.image_range}
        if res.grad_x is not None and run.show_gradients:
            roles = GRADIENT_ROLES[job.volume]
            for i, (role, g) in enumerate(zip(roles, _gradients(res))):
                if job.rgb and g.ndim == res.image.ndim:  # one signed map per direction: the mean over colour channels
                    g = g.mean(axis=-1)
                parts.append((f"{src} {role} stage {k}{suffix}", role, g))
                if item.grad_limits is not None:
                    m = item.grad_limits[i]
                    limits[role] = (-m, m)
        parts.append((f"{src} stage {k}{suffix}", "image", res.image))
        for name, role, data in parts:
            if job.preview:  # one plane of a stack: a layer with the stack's dimensions, one plane deep
                data = data.reshape(run.out_lead + data.shape)
            run.layers[name] = self._put_layer(run, name, role, k, data, res, limits.get(role))
        run.final = run.layers[parts[-1][0]]
        self.viewer.layers.selection.active = run.final

    def _own_layers(self, source: str, preview: bool) -> list[Image]:
        return [
            lyr
            for lyr in self.viewer.layers
            if isinstance(lyr, Image)
            and lyr.metadata.get(META_KEY, {}).get("source") == source
            and lyr.metadata[META_KEY].get("preview") == preview
        ]

    def _put_layer(self, run: _RunState, name: str, role: str, stage: int, data: np.ndarray, res: StageResult,
                   known: tuple[float, float] | None = None) -> Image:
        """Add the layer ``name``, or update the one a previous run made for this source.

        ``known``: the data's value range (image) or contrast limits (gradients) when already computed (a stack
        run's on-disk arrays are not read whole for them).
        """
        job = run.job
        rgb = job.rgb and role == "image"
        if role == "image":
            limits, colormap = run.contrast_limits, run.colormap
            lo, hi = known if known is not None else (float(data.min()), float(data.max()))
        else:  # signed gradients: symmetric limits, diverging colours, hidden until asked for
            m = known[1] if known is not None else float(np.percentile(np.abs(data), GRADIENT_PERCENTILE))
            limits, colormap = (-(m or 1e-6), m or 1e-6), "PiYG"
            lo, hi = limits
        info = {
            "source": job.source_name,
            "role": role,
            "stage": stage,
            "preview": job.preview,
            "plane": job.plane_index if job.preview else None,
            "iterations": res.iterations,
            "noise_level": res.noise_level if np.isfinite(res.noise_level) else job.noise_level,
            "noise": res.noise.describe() if res.noise is not None else "",
            "noise_estimated": job.noise_level == AUTO,
            "kernel": job.kernel_name,
            "gamma": res.gamma,
            "model": res.model or run.model_text,  # which model ran and why, in the engine's words
            "model_choice": str(job.model) if job.model is not None else DEFAULT_MODEL,
            "kernel_preparation": job.kernel_note or "used as it is",
            "on_disk": isinstance(data, np.memmap),
            "volumetric": job.volume,
        }
        if job.volume:
            info["kernel_shape"] = run.kernel_shape  # the PSF on the image's voxel grid
            info["kernel_grid"] = job.grid_note or "used on the image's voxel grid"
            info["slab"] = run.slab  # a preview: the planes z0:z1 it deconvolved
        existing = next((lyr for lyr in self._own_layers(job.source_name, job.preview) if lyr.name == name), None)
        if existing is not None and existing.rgb == rgb and existing.data.ndim == data.ndim:
            existing.data = data
            existing.scale, existing.translate = run.source_scale, run.out_translate
            for attr, value in run.frame.items():
                setattr(existing, attr, value)
            existing.contrast_limits_range = (min(limits[0], lo), max(limits[1], hi))
            existing.contrast_limits = limits
            existing.metadata.update(run.source_metadata)
            existing.metadata[META_KEY] = info
            return existing
        kwargs: dict[str, Any] = {
            "name": name,
            "rgb": rgb,
            "scale": run.source_scale,
            "translate": run.out_translate,
            "contrast_limits": limits,
            "metadata": {**run.source_metadata, META_KEY: info},
            "visible": role == "image",
            **run.frame,
        }
        if colormap is not None and not rgb:
            kwargs["colormap"] = colormap
        layer = Image(data, **kwargs)
        if existing is not None:  # shape changed (e.g. grey → RGB source): replace in place
            index = self.viewer.layers.index(existing)
            layer.visible = existing.visible
            self.viewer.layers.remove(existing)
            self.viewer.layers.insert(index, layer)
        else:
            self.viewer.add_layer(layer)
        return layer

    def _on_aborted(self) -> None:
        if self._run is not None:
            self._run.aborted = True

    def _on_finished(self) -> None:
        run, worker, self._run, self._worker = self._run, self._worker, None, None
        if self.activity is not None:
            self.activity.close()
        if worker is not None:
            try:  # why: the connection would keep the worker, and through it the source array, alive
                self.native.destroyed.disconnect(worker.quit)
            except (RuntimeError, TypeError):
                pass
        self.run_button.enabled, self.cancel_button.enabled = True, False
        if run is None:
            return
        elapsed = time.perf_counter() - run.started
        if run.aborted:
            kept = f"{run.stages_done} finished stage(s) kept"
            if run.job.scratch is not None and run.stages_done == 0:
                part = 100 * run.planes_done / max(self.progress.max, 1)
                kept = (f"stopped at {part:.0f} %; a whole-stack run adds its layers once every plane is done, "
                        "so nothing was added")
            self._sweep_scratch()
            show_info(f"Deblurring '{run.job.source_name}' cancelled: {kept}.")
            self.status.value = f"Cancelled after {elapsed:.1f} s ({kept})."
            self.run_finished.emit("cancelled")
            return
        if run.failed:
            self._sweep_scratch()
            self.run_finished.emit("failed")
            return
        # A re-run with fewer stages or without gradients: drop our older layers it did not refresh,
        # so the top layer is always this run's final result.
        keep = set(map(id, run.layers.values()))
        for lyr in self._own_layers(run.job.source_name, run.job.preview):
            if id(lyr) not in keep:
                self.viewer.layers.remove(lyr)
        self._sweep_scratch()  # files of layers this run updated
        if run.final is not None and run.final in self.viewer.layers:
            self.viewer.layers.selection.active = run.final
            noise = f" ({self._run_words(run)})" if run.noise_text else ""
            kernel = f" PSF: {run.job.kernel_note}." if run.job.kernel_note else ""
            if run.job.grid_note:
                kernel += f" PSF {run.job.grid_note}."
            slab = f" (3D preview of planes z {run.slab[0]}–{run.slab[1] - 1})" if run.slab is not None else ""
            self.status.value = f"Done in {elapsed:.1f} s: '{run.final.name}'{slab}{noise}.{kernel}"
        self.run_finished.emit("done")
