"""File-level segmentation: read, choose the model, check, segment, write, as one call.

:func:`segment_file` (one image) and :func:`segment_files` (a batch into a folder, each model
loaded once) are what the command line, the job's child process and Python users call::

    from dinseg.pipeline import SegmentOptions, segment_file
    result = segment_file("ct.nii.gz", "ct.seg.nrrd", SegmentOptions(device="cpu"))

Every check that can fail runs before the network does; every file is written through the
verified writer (nothing half-written, no input overwritten).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from ..core.errors import DinsegError, InputError
from ..core.samples import resolve_input
from .options import SegmentOptions

log = logging.getLogger("dinseg")

#: --format value -> output extension
FORMAT_EXTENSIONS = {"seg.nrrd": ".seg.nrrd", "nii.gz": ".nii.gz", "nrrd": ".nrrd", "nii": ".nii", "mha": ".mha",
                     "dicom-seg": ".dcm"}
#: image file types a folder of cases may hold (each file one case; subfolders are DICOM series)
CASE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")

ProgressCallback = Callable[[str, int, int], None]


@dataclass
class FileResult:
    """What :func:`segment_file` did: the output, the model, the device, and the time per stage."""

    output: Path
    card: object
    device: str
    timer: object
    enhancement: object
    labels: object
    quality: object = None  # reports.quality.QualityVerdict, or None when not asked for
    geometry: object = None  # core.geometry.Geometry of the labels (one frame's)


@dataclass
class CaseOutcome:
    """One case of :func:`segment_files`: ``status`` is "written", "skipped" or "failed"."""

    name: str
    source: Path
    output: Path
    status: str
    message: str = ""
    model: str = ""
    seconds: float = 0.0
    quality: object = None  # reports.quality.QualityVerdict of a written case


def refuse_overwriting_inputs(outputs, inputs) -> None:
    """Before any work: no output may be an input file or lie inside an input folder (a DICOM series)."""
    sources = [resolve_input(name).resolve() for name in inputs]
    for output in outputs:
        if not output:
            continue
        target = Path(output).resolve()
        for source in sources:
            if target == source or (source.is_dir() and source in target.parents):
                raise InputError(f"{output}: is {'the input' if target == source else 'inside the input folder'} "
                                 f"{source}; refusing to overwrite an input (choose another output)")


class SegmenterCache:
    """One Segmenter per model card and options, made on first use (a batch, or the warm worker,
    loads each model once)."""

    def __init__(self, options: SegmentOptions):
        from ..models import find_model

        self.options = options
        self.named = find_model(options.model) if options.model else None
        self.made: Dict[str, object] = {}

    def card_for(self, volume):
        """The named model, or the installed model that fits the image (logged with the reason)."""
        if self.named is not None:
            return self.named
        from .segmenter import model_for

        card, reason = model_for(volume)
        log.info("model %s %s chosen for this image: %s (--model overrides)", card.name, card.version, reason)
        return card

    def get(self, card):
        from .segmenter import Segmenter

        key = str(card.path or card.name)
        if key not in self.made:
            options = self.options
            enhancement = options.enhancement_for(card)
            if enhancement is not None:
                trained = card.preprocessing.enhancement
                log.warning("enhancing with %s at strength %g instead of the model's %s at %g; the model was "
                            "trained with the latter", enhancement.method, enhancement.strength, trained.method,
                            trained.strength)
            self.made[key] = Segmenter(card, device=options.device, enhancement=enhancement,
                                       batch_size=options.batch_size, largest_component=options.largest_component,
                                       fill_holes=options.fill_holes, rotations=options.rotations,
                                       precision=options.precision)
        return self.made[key]


def check_extras(statistics: Optional[str], split: Optional[str], batch: bool) -> None:
    """Refuse --statistics / --split targets that cannot be written, before any work."""
    from ..core.io import check_output_path, output_extension

    if statistics:
        output_extension(statistics, (".json", ".csv"))
        if not batch:
            check_output_path(statistics, extensions=(".json", ".csv"))
    if split:
        if batch:
            raise InputError("--split takes one input (per-structure files of one case)")
        parent = Path(split).parent
        if not parent.is_dir():
            raise InputError(f"{split}: its parent folder {parent} does not exist")


def _check_frames_fit(volume, output: Path, frame: Optional[int], name: str) -> None:
    if volume.is_time_series and frame is None and output.name.endswith(".seg.nrrd"):
        raise InputError(f"{name} is a time series of {volume.frames} frames; .seg.nrrd holds one "
                         "frame: write .nrrd or .nii.gz for all frames, or choose one with --frames N")


def check_dicom_seg_source(output: Path, volume, name: str) -> None:
    """Before any work: a DICOM SEG output needs a DICOM series input with the UIDs it references."""
    if output.name.lower().endswith(".dcm"):
        from ..reports.dicomseg import source_datasets

        source_datasets(volume, name)


def write_result(output: Path, volume, result, card) -> None:
    """A Segmenter's result in the output's format (see :func:`write_labels`)."""
    write_labels(output, volume, result.labels, result.geometry, card.labels, card.name, card.version,
                 result.frame_spacing)


def write_labels(output: Path, volume, labels, geometry, label_infos, producer: str, version: str,
                 frame_spacing=None) -> None:
    """Labels on ``volume``'s grid in the output's format: DICOM SEG (.dcm, coded with ``label_infos``
    and naming ``producer`` ``version``), Slicer .seg.nrrd or a labelmap."""
    if output.name.lower().endswith(".dcm"):
        from ..reports.dicomseg import write_dicom_seg

        write_dicom_seg(output, labels, volume, label_infos, producer, version)
        return
    from ..reports.segfile import write_segmentation

    write_segmentation(output, labels, geometry, label_infos, frame_spacing)


def variant_labels(segmenter, volume, frame: Optional[int] = None,
                   factors: Sequence[float] = (1.15,)) -> List[object]:
    """Labels of cheap test-time variants of one 3D image (or ``frame`` of a time series): the image
    re-stored with its in-plane spacing times each factor (see reports.quality.variant_geometries)."""
    from ..core.io import ImageVolume
    from ..reports.quality import variant_geometries

    array = volume.array if frame is None else volume.array[frame]
    if array.ndim != 3:
        return []
    saved, segmenter.progress = segmenter.progress, (lambda stage, done, total: None)
    try:
        return [segmenter.segment(ImageVolume(array=array, geometry=geometry, modality=volume.modality)).labels
                for geometry in variant_geometries(volume.geometry, segmenter.card.preprocessing.orientation_mode,
                                                   factors)]
    finally:
        segmenter.progress = saved


def result_quality(volume, result, card, segmenter=None, frame: Optional[int] = None, variants: int = 1):
    """The reports.quality verdict on a result: one 3D frame with ``variants`` test-time variants (0: none);
    a time series frame by frame, without variants (merged, reasons named by frame). Never raises: a
    failure becomes the verdict's note."""
    from ..reports.quality import QualityVerdict, merge_verdicts, quality_verdict
    from .segmenter import guess_modality

    try:
        modality = volume.modality or guess_modality(volume.array)
        array = volume.array if frame is None else volume.array[frame]
        labels = result.labels
        if labels.ndim == 3:
            factors = (1.15, 0.87, 1.3)[:max(0, int(variants))]
            computed = variant_labels(segmenter, volume, frame, factors) if segmenter and factors else None
            return quality_verdict(labels, array, result.geometry, card, variants=computed, modality=modality)
        verdicts = {f"frame {t + 1}": quality_verdict(labels[t], array[t], result.geometry, card, modality=modality)
                    for t in range(labels.shape[0])}
        return merge_verdicts(verdicts)
    except Exception as error:  # the checks never crash a run
        return QualityVerdict(notes=[f"the quality checks could not run ({type(error).__name__}: {error})"])


def _write_extras(volume, result, card, frame: Optional[int], statistics: Optional[Path],
                  split: Optional[str], quality=None) -> None:
    """The statistics file and per-structure masks asked for, from the same labels as the output."""
    from ..reports.statistics import structure_statistics, write_masks, write_statistics
    from .segmenter import guess_modality

    if statistics:
        array = volume.array if frame is None else volume.array[frame]
        rows = structure_statistics(result.labels, array, result.geometry, card.labels)
        modality = volume.modality or guess_modality(volume.array)
        write_statistics(statistics, rows, units="HU" if modality == "CT" else "image units", quality=quality)
    if split:
        write_masks(split, result.labels, result.geometry, card.labels, result.frame_spacing)


def segment_file(source, output, options: SegmentOptions = SegmentOptions(), *, preview: Optional[str] = None,
                 statistics: Optional[str] = None, split: Optional[str] = None,
                 progress: Optional[ProgressCallback] = None,
                 segmenters: Optional[SegmenterCache] = None, quality: bool = True,
                 quality_variants: int = 1) -> FileResult:
    """Segment one image file or DICOM folder (``sample:NAME`` for a bundled sample) into ``output``.

    output: ``.seg.nrrd``, a labelmap (``.nrrd``, ``.nii.gz``, ``.nii``, ``.mha``) or ``.dcm``
    (DICOM SEG, for a DICOM input). preview: a PNG of original | enhanced | overlay.
    statistics: a ``.json`` or ``.csv`` of per-structure figures; split: a folder for one mask
    per structure. progress(stage, done, total) is called as slices are segmented. segmenters: a
    cache of loaded models to use and fill (the warm worker keeps one); None loads the model here.
    quality: give the result a verdict (reports.quality; ``FileResult.quality``, and in the statistics
    file), with ``quality_variants`` test-time variants for the predicted Dice (each one more pass of
    the network; 0 for none).
    """
    from concurrent.futures import ThreadPoolExecutor

    from ..core.io import check_output_path, read_volume

    output = check_output_path(output)
    refuse_overwriting_inputs([output, preview, statistics, split], [source])
    if preview:
        check_output_path(preview, extensions=(".png",))
    check_extras(statistics, split, batch=False)
    path = resolve_input(source)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    with ThreadPoolExecutor(max_workers=1) as reader:
        reading = reader.submit(read_volume, path)  # while PyTorch is imported, which takes longer
        from .segmenter import StageTimer, check_modality

        if segmenters is None:
            segmenters = SegmenterCache(options)
        timer = StageTimer()
        with timer.stage("read"):  # the wait that is left
            volume = reading.result()
    card = segmenters.card_for(volume)
    with timer.stage("load model"):
        segmenter = segmenters.get(card)
    segmenter.progress = progress or (lambda stage, done, total: None)
    check_modality(volume, card, strict=options.strict)
    _check_frames_fit(volume, output, options.frame, str(source))
    check_dicom_seg_source(output, volume, str(source))
    result = segmenter.segment(volume, frame=options.frame, timer=timer)
    verdict = None
    if quality:
        with timer.stage("quality"):
            verdict = result_quality(volume, result, card, segmenter, options.frame, quality_variants)
    with timer.stage("write"):
        write_result(output, volume, result, card)
        _write_extras(volume, result, card, options.frame, statistics, split, verdict)
    if preview:
        from ..reports.preview import render_preview

        frame_image = volume.array if not volume.is_time_series else volume.array[options.frame or 0]
        frame_labels = result.labels if result.labels.ndim == 3 else result.labels[0]
        with timer.stage("preview"):
            render_preview(preview, frame_image, frame_labels, volume.geometry, card.preprocessing,
                           card.labels, title=f"{Path(str(source)).name} - {card.name} {card.version}",
                           enhancement=segmenter.enhancement)
    return FileResult(output=output, card=card, device=str(result.device), timer=timer,
                      enhancement=segmenter.enhancement, labels=result.labels, quality=verdict,
                      geometry=result.geometry)


def case_name(path: Path) -> str:
    """A case's name for its output file: the file name without its image extension."""
    name = path.name
    for extension in CASE_EXTENSIONS + (".dcm",):
        if name.lower().endswith(extension):
            return name[:-len(extension)]
    return name


def case_names(paths: Sequence[Path]) -> List[str]:
    """One output name per case: the file's stem where it is unique, otherwise its folder's name, then
    the folders above joined with "_" until the names differ (``cases/case_00000/imaging.nii.gz`` ->
    ``case_00000``). InputError when two cases cannot be told apart (one folder, one stem)."""
    resolved = [Path(path).resolve() for path in paths]
    depths = [0] * len(resolved)

    def name(index: int) -> str:
        path, depth = resolved[index], depths[index]
        if depth == 0:
            return case_name(path)
        return "_".join(folder.name for folder in reversed(list(path.parents)[:depth]))

    while True:
        groups: Dict[str, List[int]] = {}
        for index in range(len(resolved)):
            groups.setdefault(name(index), []).append(index)
        clashes = [members for members in groups.values() if len(members) > 1]
        if not clashes:
            return [name(index) for index in range(len(resolved))]
        for members in clashes:
            if any(depths[index] >= len(resolved[index].parents) - 1 for index in members) or \
                    len({resolved[index].parent for index in members}) == 1:
                first, second = (paths[index] for index in members[:2])
                raise InputError(f"two cases would write the same output {name(members[0])!r}: {first} and "
                                 f"{second} (one folder, one name; rename one)")
            for index in members:
                depths[index] += 1


def folder_cases(folder: Path) -> List[Path]:
    """The cases of a folder of cases: its image files, or else its subfolders, each a case folder's image
    files (``cases/case_00000/imaging.nii.gz``) or a DICOM series; [] for a series folder."""
    entries = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")]
    images = _image_files(entries)
    if images:
        return images
    if entries and all(p.is_dir() for p in entries):
        return [case for entry in entries for case in (_image_files(sorted(entry.iterdir())) or [entry])]
    return []


def _image_files(entries: Sequence[Path]) -> List[Path]:
    return [p for p in entries
            if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(CASE_EXTENSIONS)]


def is_batch(inputs: Sequence[str], output: str) -> bool:
    """Whether ``dinseg segment INPUTS -o OUTPUT`` is a batch: several inputs, a folder output, or a folder of cases."""
    if len(inputs) > 1 or output.endswith(("/", os.sep)) or Path(output).is_dir():
        return True
    source = resolve_input(inputs[0])
    return source.is_dir() and bool(folder_cases(source))


def batch_cases(inputs: Sequence[str]) -> List[Tuple[str, Path]]:
    """(name, path) of every case: each input a file or series folder, or a folder of cases; names
    from :func:`case_names`."""
    paths = []
    for name in inputs:
        source = resolve_input(name)
        if not source.exists():
            raise InputError(f"{source}: no such file or folder")
        found = folder_cases(source) if source.is_dir() else []
        paths += found or [source]
    return list(zip(case_names(paths), paths))


def segment_files(inputs: Sequence[str], folder, options: SegmentOptions = SegmentOptions(), *,
                  output_format: str = "seg.nrrd", statistics: Optional[str] = None,
                  skip_existing: bool = False, quality: bool = True,
                  quality_variants: int = 1) -> Iterator[CaseOutcome]:
    """Segment every case of ``inputs`` into ``folder/<case><extension>``, yielding one outcome per case.

    All cases are listed and checked first (named by :func:`case_names`; two cases that cannot be
    told apart are refused); each model
    is loaded once. A case that fails is reported ("failed" with its one-line reason) and skipped.
    statistics: a file name; each case's goes to ``folder/<case>_<name>``.
    """
    from ..core.io import check_output_path, read_volume
    from .segmenter import check_modality

    check_extras(statistics, None, batch=True)
    cases = batch_cases(inputs)
    refuse_overwriting_inputs([folder], inputs)
    folder = Path(folder)
    if not folder.is_dir():
        if folder.name.lower().endswith(tuple(FORMAT_EXTENSIONS.values()) + CASE_EXTENSIONS):
            raise InputError(f"{folder}: names a file, but the input holds {len(cases)} case(s): name a folder "
                             f"for their outputs (e.g. {folder.parent / folder.name.split('.')[0]}/)")
        if not folder.parent.is_dir():
            raise InputError(f"{folder}: its parent folder {folder.parent} does not exist")
        folder.mkdir()
    extension = FORMAT_EXTENSIONS[output_format]
    check_output_path(folder / f"case{extension}")
    segmenters = SegmenterCache(options)
    for name, source in cases:
        output = folder / f"{name}{extension}"
        if skip_existing and output.exists():
            yield CaseOutcome(name, source, output, "skipped", f"{output} exists")
            continue
        started = time.perf_counter()
        try:
            volume = read_volume(source)
            card = segmenters.card_for(volume)
            segmenter = segmenters.get(card)
            check_modality(volume, card, strict=options.strict, name=name)
            _check_frames_fit(volume, output, options.frame, name)
            check_dicom_seg_source(output, volume, name)
            result = segmenter.segment(volume, frame=options.frame)
            verdict = result_quality(volume, result, card, segmenter, options.frame, quality_variants) \
                if quality else None
            write_result(output, volume, result, card)
            _write_extras(volume, result, card, options.frame,
                          folder / f"{name}_{Path(statistics).name}" if statistics else None, None, verdict)
        except DinsegError as error:
            yield CaseOutcome(name, source, output, "failed", str(error))
            continue
        yield CaseOutcome(name, source, output, "written", model=card.name, seconds=time.perf_counter() - started,
                          quality=verdict)
