"""Inference: a volume in any orientation and spacing -> labels on the input grid.

read -> canonicalise -> normalise -> enhance -> network -> postprocess -> write. The CLI,
the Slicer module and the tests all call :class:`Segmenter`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..core.enhance import EnhanceConfig, enhance
from ..core.errors import InputError
from ..core.geometry import Geometry
from ..core.io import ImageVolume
from ..models import ModelCard, load_network
from ..nets.config import PRECISIONS, TEST_TIME_ROTATIONS
from ..core.postprocess import clean_labels
from ..core.preprocess import labels_at_size, neighbour_indices, to_model_grid, with_neighbours

log = logging.getLogger("dinseg")

#: progress(stage, done, total): called as slices are segmented
ProgressCallback = Callable[[str, int, int], None]
STAGES = ("load model", "read", "canonicalise", "enhance", "network", "postprocess", "write")


@dataclass
class StageTimer:
    """Wall time per pipeline stage in seconds (GPU work is synchronised before reading the clock)."""

    seconds: Dict[str, float] = field(default_factory=lambda: {stage: 0.0 for stage in STAGES})
    synchronize: Callable[[], None] = lambda: None

    @contextlib.contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.synchronize()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def table(self) -> str:
        total = sum(self.seconds.values()) or 1e-9
        rows = [f"  {name:<13}{value:8.2f} s {100 * value / total:5.1f} %" for name, value in self.seconds.items()]
        return "\n".join(rows + [f"  {'total':<13}{total:8.2f} s"])


def check_class_weights(weights: Sequence[float], num_classes: int) -> List[float]:
    """The class weights as floats, or an InputError unless there is one positive number per class."""
    try:
        values = [float(weight) for weight in weights]
    except (TypeError, ValueError):
        raise InputError(f"class weights must be numbers, got {weights!r}") from None
    if len(values) != num_classes or not all(np.isfinite(values)) or min(values) <= 0:
        raise InputError(f"class weights must be {num_classes} positive numbers (background first), got {weights!r}")
    return values


def resolve_device(device: str = "auto"):
    """'auto' -> cuda, then mps, then cpu; 'cuda:N' picks a GPU; an unavailable device is an InputError."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA GPU is available here")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise InputError(f"--device {device}: there are {torch.cuda.device_count()} GPU(s), numbered 0 to "
                         f"{torch.cuda.device_count() - 1}")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("--device mps: Apple MPS is not available here")
    return torch.device(device)



def half_precision_dtype(device, precision: str = "auto"):
    """The reduced-precision dtype the network runs in on ``device``, or None for float32.

    'auto': float16 on CUDA; float32 on CPUs and MPS. bfloat16 on CPUs is not used: it about
    halved the time on AVX-512 BF16, but oneDNN's AMX kernels (PyTorch 2.13) moved labels far
    enough to cost the MR model 0.15 Dice on a CHAOS patient. 'float32': always float32.
    """
    import torch

    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; use {' or '.join(PRECISIONS)}")
    if precision == "float32":
        return None
    if device.type == "cuda":
        return torch.float16
    return None


def guess_modality(array: np.ndarray) -> str:
    """'CT' when the image holds Hounsfield-like air (values below -500), or when at least 5 %
    of it lies below -50 (a CT already clipped to a soft-tissue window, as Synapse stores it:
    magnitude MR is never that negative), else 'MR'."""
    if float(array.min()) < -500:
        return "CT"
    sample = array.ravel()[:: max(1, array.size // 1_000_000)]
    return "CT" if float(np.mean(sample < -50)) >= 0.05 else "MR"


def guess_anatomy(volume: ImageVolume, modality: str) -> str:
    """'heart' for what looks like a short-axis cine stack (MR: a time series, or at most 25
    slices at least 5 mm apart), else 'abdomen'."""
    if modality.upper() != "MR":
        return "abdomen"
    slices = volume.array.shape[-3]
    if volume.is_time_series or (slices <= 25 and volume.geometry.spacing[2] >= 5.0):
        return "heart"
    return "abdomen"


def model_for(volume: ImageVolume):
    """(card, reason): the installed model that fits this image's modality and anatomy."""
    from ..models import choose_model

    modality = volume.modality or guess_modality(volume.array)
    source = "DICOM Modality" if volume.modality else "intensities"
    anatomy = guess_anatomy(volume, modality)
    card = choose_model(modality, anatomy)
    return card, f"{modality} ({source}), {'short-axis cine' if anatomy == 'heart' else anatomy}"


def check_modality(volume: ImageVolume, card: ModelCard, strict: bool = False, name: str = "the image") -> None:
    """Warn (or, with ``strict``, refuse) when the image's modality is not the model's.

    The modality comes from the DICOM header when there is one, else from the intensities.
    """
    modality = volume.modality or guess_modality(volume.array)
    if modality.upper() == card.modality.upper():
        return
    message = f"{name} looks like {modality} but model {card.name} is for {card.modality}"
    if strict:
        raise InputError(message + " (refused with --strict)")
    log.warning("%s; the result may be poor", message)


def available_memory_bytes(device) -> int:
    """Free memory on the device: CUDA's free memory, else the system's available RAM."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


@dataclass
class SegmentationResult:
    """Labels on the input grid, (z, y, x) or (t, z, y, x) uint8, and how they were made."""

    labels: np.ndarray
    geometry: Geometry
    card: ModelCard
    device: str
    frame_spacing: Optional[float] = None
    timer: StageTimer = field(default_factory=StageTimer)


class Segmenter:
    """Runs one model card on volumes.

    device: 'auto', 'cpu', 'cuda' or 'mps'. enhancement: overrides the card's enhancement
    (the model was trained with the card's, so this is for experiments). batch_size: slices
    per forward pass; None chooses from free memory. On a CUDA out-of-memory error the batch
    is halved, and at one slice the work falls back to the CPU with a warning. network: an
    in-memory network to use instead of the card's weights (validation during training).
    largest_component / fill_holes: None takes the card's ``postprocessing`` (the clean-up the
    model was measured with), True or False overrides it. rotations: test-time augmentation,
    the softmax averaged over 1, 2 or 4 in-plane rotations by 90 degrees (None: the card's
    ``postprocessing["rotations"]``, default 1); for models trained with all rotations.
    class_weights: one factor per class (background first) that multiplies its probability
    before the arg-max, a prior correction fitted by ``dinseg calibrate`` (None: the card's
    ``postprocessing["class_weights"]``, default none). record: a list to which every batch's
    (B, K, h, w) probabilities on the model grid and its (H, W) slice shape are appended.
    precision: 'auto' (float16 on CUDA, float32 on CPUs) or 'float32'.
    """

    def __init__(self, card: ModelCard, device: str = "auto", enhancement: Optional[EnhanceConfig] = None,
                 batch_size: Optional[int] = None, largest_component: Optional[bool] = None,
                 fill_holes: Optional[bool] = None, progress: Optional[ProgressCallback] = None,
                 network=None, rotations: Optional[int] = None,
                 class_weights: Optional[Sequence[float]] = None, record: Optional[list] = None,
                 precision: str = "auto"):
        import torch

        self.card = card
        self.device = resolve_device(device)
        self.half_dtype = half_precision_dtype(self.device, precision)
        self.enhancement = enhancement or card.preprocessing.enhancement
        self.requested_batch_size = batch_size
        defaults = card.postprocessing
        self.largest_component = bool(defaults.get("largest_component", False)
                                      if largest_component is None else largest_component)
        self.fill_holes = bool(defaults.get("fill_holes", False) if fill_holes is None else fill_holes)
        self.rotations = int(defaults.get("rotations", 1) if rotations is None else rotations)
        if self.rotations not in TEST_TIME_ROTATIONS:
            raise InputError(f"test-time rotations must be one of {', '.join(map(str, TEST_TIME_ROTATIONS))}, "
                             f"got {self.rotations}")
        trained_degrees = card.training.get("config", {}).get("augmentation", {}).get("rotate_degrees")
        if self.rotations > 1 and trained_degrees is not None and float(trained_degrees) < 90:
            raise InputError(f"{card.name} was trained with rotations up to {trained_degrees:g} degrees only: "
                             "test-time rotations by 90 degrees would mislead it; use --rotations 1")
        weights = defaults.get("class_weights") if class_weights is None else class_weights
        self.class_weights = None if weights is None else torch.tensor(
            check_class_weights(weights, card.num_classes), dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.record = record
        self.progress = progress or (lambda stage, done, total: None)
        self.network = load_network(card, self.device) if network is None else network.to(self.device)
        self.uses_enhanced = self.network.uses_enhanced
        self._torch = torch

    def synchronize(self) -> None:
        """Wait for queued GPU work, so that stage timings are true."""
        if self.device.type == "cuda":
            self._torch.cuda.synchronize(self.device)

    def segment(self, volume: ImageVolume, frame: Optional[int] = None,
                timer: Optional[StageTimer] = None) -> SegmentationResult:
        """Segment every frame of ``volume`` (or only ``frame``, 0-based, of a time series)."""
        timer = timer or StageTimer()
        timer.synchronize = self.synchronize
        array = volume.array
        if frame is not None:
            if not volume.is_time_series:
                raise InputError("--frames N applies to a 4D time series; this image is 3D")
            if not 0 <= frame < volume.frames:
                raise InputError(f"frame {frame + 1} does not exist; the series has frames 1..{volume.frames} "
                                 "(counting from 1)")
            array = array[frame]
        frames = array if array.ndim == 4 else array[np.newaxis]
        bounds = self.card.preprocessing.normalization.bounds(array)
        labels = np.stack([self._segment_frame(f, volume.geometry, bounds, timer, index, len(frames))
                           for index, f in enumerate(frames)])
        return SegmentationResult(labels=labels if array.ndim == 4 else labels[0], geometry=volume.geometry,
                                  card=self.card, device=str(self.device), timer=timer,
                                  frame_spacing=volume.frame_spacing if array.ndim == 4 else None)

    def _segment_frame(self, array: np.ndarray, geometry: Geometry, bounds, timer: StageTimer,
                       frame_index: int, frame_count: int) -> np.ndarray:
        """(z, y, x) intensities -> (z, y, x) uint8 labels on the same grid."""
        preprocessing = self.card.preprocessing
        reorientation = preprocessing.reorientation(geometry)
        canonical = reorientation.to_canonical(array)
        spacing_x, spacing_y, _ = reorientation.spacing(geometry)
        slice_shape = canonical.shape[1:]
        model_shape = preprocessing.model_shape(slice_shape, (spacing_x, spacing_y))
        output = np.zeros(canonical.shape, dtype=np.uint8)
        batch_size = self.requested_batch_size or self._auto_batch_size(model_shape, slice_shape)
        total = canonical.shape[0] * frame_count
        start = 0
        context = preprocessing.context_slices
        while start < canonical.shape[0]:
            stop = min(start + batch_size, canonical.shape[0])
            slab = canonical[neighbour_indices(start, stop, context, canonical.shape[0])] if context \
                else canonical[start:stop]
            try:
                output[start:stop] = self._predict_slab(slab, bounds, model_shape, timer)
            except self._torch.cuda.OutOfMemoryError:
                batch_size = self._recover_from_out_of_memory(batch_size)
                continue
            start = stop
            self.progress("network", frame_index * canonical.shape[0] + stop, total)
        with timer.stage("postprocess"):
            return self.to_input_grid(output, reorientation)

    def to_input_grid(self, canonical_labels: np.ndarray, reorientation) -> np.ndarray:
        """(z, h, w) labels in canonical orientation -> (z, y, x) labels on the input grid, cleaned up."""
        labels = np.ascontiguousarray(reorientation.from_canonical(canonical_labels))
        if self.largest_component or self.fill_holes:
            labels = clean_labels(labels, self.largest_component, self.fill_holes, in_place=True)
        return labels

    def _predict_slab(self, slab: np.ndarray, bounds, model_shape, timer: StageTimer) -> np.ndarray:
        """(B + 2 * context, H, W) canonical intensities (B slices and their neighbours) -> (B, H, W) uint8 labels."""
        torch = self._torch
        context = self.card.preprocessing.context_slices
        with torch.inference_mode():
            with timer.stage("canonicalise"):
                slices = to_model_grid(slab, bounds, model_shape, self.device)
            with timer.stage("enhance"):
                enhanced = enhance(slices, self.enhancement) if self.uses_enhanced else None
                slices = with_neighbours(slices, context)
                enhanced = None if enhanced is None else with_neighbours(enhanced, context)
            with timer.stage("network"):
                probabilities = self._probabilities(slices, enhanced)
            with timer.stage("postprocess"):
                labels = labels_at_size(probabilities, slab.shape[1:]).to(torch.uint8).cpu().numpy()
            if self.record is not None:
                self.record.append((probabilities.cpu(), tuple(slab.shape[1:])))
            return labels

    def _probabilities(self, slices, enhanced):
        """(B, C, H, W) slices -> (B, K, H, W) softmax, averaged over the test-time rotations and
        multiplied by the class weights."""
        torch = self._torch
        total = None
        for quarter_turns in range(0, 4, 4 // self.rotations):
            turned = torch.rot90(slices, quarter_turns, dims=(-2, -1))
            turned_enhanced = None if enhanced is None else torch.rot90(enhanced, quarter_turns, dims=(-2, -1))
            with torch.autocast(device_type=self.device.type, dtype=self.half_dtype or torch.float32,
                                enabled=self.half_dtype is not None):
                logits = self.network(turned, turned_enhanced)
            probabilities = torch.rot90(logits.float().softmax(dim=1), -quarter_turns, dims=(-2, -1))
            total = probabilities if total is None else total + probabilities
        total = total / self.rotations
        return total if self.class_weights is None else total * self.class_weights

    def _auto_batch_size(self, model_shape, slice_shape) -> int:
        """Slices per pass so that activations use at most a quarter of the free memory."""
        config = self.card.network
        pixels = model_shape[0] * model_shape[1]
        streams = 2 if self.uses_enhanced else 1
        # live float32 activations per slice, with a safety factor of 8 for intermediates
        per_slice = 4 * 8 * pixels * (streams * config.stem_channels
                                      + sum(streams * w * 4 / 4 ** (i + 1) for i, w in enumerate(config.widths)))
        per_slice += 4 * 3 * config.num_classes * slice_shape[0] * slice_shape[1]
        budget = available_memory_bytes(self.device) // 4
        return int(max(1, min(64, budget // per_slice)))

    def _recover_from_out_of_memory(self, batch_size: int) -> int:
        torch = self._torch
        torch.cuda.empty_cache()
        if batch_size > 1:
            log.warning("GPU out of memory with %d slices per batch; retrying with %d", batch_size, batch_size // 2)
            return batch_size // 2
        log.warning("GPU out of memory with one slice per batch; continuing on the CPU")
        self.device = torch.device("cpu")
        self.network = self.network.to(self.device)
        return 1

