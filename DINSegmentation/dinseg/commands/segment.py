"""``dinseg segment``: one image or a batch, into labelmaps, Slicer segmentations or DICOM SEG."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from ..errors import DinsegError, InputError
from ..samples import SAMPLES, resolve_input
from .common import add_cleanup_options, add_device_options, refuse_overwriting_inputs

log = logging.getLogger("dinseg")


class ProgressReporter:
    """Progress on stderr as a bar (terminals), as JSON lines on stdout (the Slicer module), or not at all."""

    def __init__(self, mode: str):
        self.mode = mode
        self.started = time.perf_counter()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.mode == "json":
            print(json.dumps({"event": "progress", "stage": stage, "done": done, "total": total}), flush=True)
        elif self.mode == "bar":
            filled = int(30 * done / max(total, 1))
            elapsed = time.perf_counter() - self.started
            sys.stderr.write(f"\r{stage:<10} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} {elapsed:6.1f} s")
            if done >= total:
                sys.stderr.write("\n")
            sys.stderr.flush()

    def event(self, **fields) -> None:
        if self.mode == "json":
            print(json.dumps(fields), flush=True)


def _frame_argument(value: str):
    if value == "all":
        return None
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("--frames takes 'all' or a frame number (1 = first)") from None
    if number < 1:
        raise argparse.ArgumentTypeError("frame numbers start at 1")
    return number - 1


def _chosen_model(volume):
    """The installed model that fits the image (logged with the reason)."""
    from ..infer import model_for

    card, reason = model_for(volume)
    log.info("model %s %s chosen for this image: %s (--model overrides)", card.name, card.version, reason)
    return card


#: --format value -> output extension
FORMAT_EXTENSIONS = {"seg.nrrd": ".seg.nrrd", "nii.gz": ".nii.gz", "nrrd": ".nrrd", "nii": ".nii", "mha": ".mha",
                     "dicom-seg": ".dcm"}
#: image file types a folder of cases may hold (each file one case; subfolders are DICOM series)
CASE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def _case_name(path: Path) -> str:
    """A case's name for its output file: the file name without its image extension."""
    name = path.name
    for extension in CASE_EXTENSIONS + (".dcm",):
        if name.lower().endswith(extension):
            return name[:-len(extension)]
    return name


def _folder_cases(folder: Path) -> List[Path]:
    """The cases of a folder of cases (image files, or DICOM series in subfolders); [] for a series folder."""
    entries = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")]
    images = [p for p in entries if p.is_file() and p.name.lower().endswith(CASE_EXTENSIONS)]
    if images:
        return images
    if entries and all(p.is_dir() for p in entries):
        return entries
    return []


def _is_batch(args) -> bool:
    if len(args.inputs) > 1 or args.output.endswith(("/", os.sep)) or Path(args.output).is_dir():
        return True
    source = resolve_input(args.inputs[0])
    return source.is_dir() and bool(_folder_cases(source))


def run_segment(args) -> int:
    if _is_batch(args):
        return _segment_batch(args)
    return _segment_one(args)


class _Segmenters:
    """One Segmenter per model card, made on first use (a batch loads each model once)."""

    def __init__(self, args, progress=None):
        from ..models import find_model

        self.args = args
        self.progress = progress
        self.named = find_model(args.model) if args.model else None
        self.made: Dict[str, object] = {}

    def card_for(self, volume):
        return self.named or _chosen_model(volume)

    def get(self, card):
        from ..infer import Segmenter
        from ..preprocess import override_enhancement

        key = str(card.path or card.name)
        if key not in self.made:
            args = self.args
            trained = card.preprocessing.enhancement
            enhancement = override_enhancement(trained, args.enhance, args.enhance_strength)
            if enhancement is not None:
                log.warning("enhancing with %s at strength %g instead of the model's %s at %g; the model was "
                            "trained with the latter", enhancement.method, enhancement.strength, trained.method,
                            trained.strength)
            self.made[key] = Segmenter(card, device=args.device, enhancement=enhancement,
                                       batch_size=args.batch_size, largest_component=args.largest_component,
                                       fill_holes=args.fill_holes, rotations=args.rotations,
                                       precision=args.precision, progress=self.progress)
        return self.made[key]


def _check_frames_fit(volume, output: Path, frames, name: str) -> None:
    if volume.is_time_series and frames is None and output.name.endswith(".seg.nrrd"):
        raise InputError(f"{name} is a time series of {volume.frames} frames; .seg.nrrd holds one "
                         "frame: write .nrrd or .nii.gz for all frames, or choose one with --frames N")


def _check_extras(args, batch: bool) -> None:
    """Refuse --statistics / --split targets that cannot be written, before any work."""
    from ..io import check_output_path, output_extension

    if args.statistics:
        output_extension(args.statistics, (".json", ".csv"))
        if not batch:
            check_output_path(args.statistics, extensions=(".json", ".csv"))
    if args.split:
        if batch:
            raise InputError("--split takes one input (per-structure files of one case)")
        parent = Path(args.split).parent
        if not parent.is_dir():
            raise InputError(f"{args.split}: its parent folder {parent} does not exist")


def _write_extras(args, volume, result, card, statistics_path) -> None:
    """The statistics file and per-structure masks asked for, from the same labels as the output."""
    from ..infer import guess_modality
    from ..statistics import structure_statistics, write_masks, write_statistics

    if statistics_path:
        array = volume.array if args.frames is None else volume.array[args.frames]
        rows = structure_statistics(result.labels, array, result.geometry, card.labels)
        modality = volume.modality or guess_modality(volume.array)
        write_statistics(statistics_path, rows, units="HU" if modality == "CT" else "image units")
    if args.split:
        write_masks(args.split, result.labels, result.geometry, card.labels, result.frame_spacing)


def _check_dicom_seg_source(output: Path, volume, name: str) -> None:
    """Before any work: a DICOM SEG output needs a DICOM series input with the UIDs it references."""
    if output.name.lower().endswith(".dcm"):
        from ..dicomseg import source_datasets

        source_datasets(volume, name)


def _write_result(output: Path, volume, result, card) -> None:
    """The segmentation in the output's format: DICOM SEG (.dcm), Slicer .seg.nrrd or a labelmap."""
    if output.name.lower().endswith(".dcm"):
        from ..dicomseg import write_dicom_seg

        write_dicom_seg(output, result.labels, volume, card.labels, card.name, card.version)
        return
    from ..segfile import write_segmentation

    write_segmentation(output, result.labels, result.geometry, card.labels, result.frame_spacing)


def _segment_one(args) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from ..io import check_output_path, read_volume

    output = check_output_path(args.output)
    refuse_overwriting_inputs([args.output, args.preview, args.statistics, args.split], args.inputs)
    if args.format == "dicom-seg" and not output.name.lower().endswith(".dcm"):
        raise InputError(f"{output}: --format dicom-seg writes a .dcm file; name the output NAME.dcm")
    if args.preview:
        check_output_path(args.preview, extensions=(".png",))
    _check_extras(args, batch=False)
    source = resolve_input(args.inputs[0])
    if not source.exists():
        raise InputError(f"{source}: no such file or folder")
    with ThreadPoolExecutor(max_workers=1) as reader:
        reading = reader.submit(read_volume, source)  # while PyTorch is imported, which takes longer
        from ..infer import StageTimer, check_modality

        progress = ProgressReporter(args.progress or ("bar" if sys.stderr.isatty() else "none"))
        segmenters = _Segmenters(args, progress)
        timer = StageTimer()
        with timer.stage("read"):  # the wait that is left
            volume = reading.result()
    card = segmenters.card_for(volume)
    with timer.stage("load model"):
        segmenter = segmenters.get(card)
    check_modality(volume, card, strict=args.strict)
    _check_frames_fit(volume, output, args.frames, args.inputs[0])
    _check_dicom_seg_source(output, volume, args.inputs[0])
    result = segmenter.segment(volume, frame=args.frames, timer=timer)
    with timer.stage("write"):
        _write_result(output, volume, result, card)
        _write_extras(args, volume, result, card, args.statistics)
    if args.preview:
        from ..preview import render_preview

        frame_image = volume.array if not volume.is_time_series else volume.array[args.frames or 0]
        frame_labels = result.labels if result.labels.ndim == 3 else result.labels[0]
        with timer.stage("preview"):
            render_preview(args.preview, frame_image, frame_labels, volume.geometry, card.preprocessing,
                           card.labels, title=f"{Path(args.inputs[0]).name} - {card.name} {card.version}",
                           enhancement=segmenter.enhancement)
    import torch

    progress.event(event="done", output=str(output), seconds=timer.seconds)
    print(f"dinseg: wrote {output} ({card.name} {card.version}, device {result.device}, "
          f"{torch.get_num_threads()} CPU threads)\n{timer.table()}", file=sys.stderr)
    return 0


def _batch_cases(inputs: Sequence[str]) -> List[Tuple[str, Path]]:
    """(name, path) of every case: each input a file or series folder, or a folder of cases."""
    cases = []
    for name in inputs:
        source = resolve_input(name)
        if not source.exists():
            raise InputError(f"{source}: no such file or folder")
        found = _folder_cases(source) if source.is_dir() else []
        cases += [(_case_name(path), path) for path in (found or [source])]
    seen: Dict[str, Path] = {}
    for case, path in cases:
        if case in seen:
            raise InputError(f"two cases would write the same output {case!r}: {seen[case]} and {path}")
        seen[case] = path
    return cases


def _segment_batch(args) -> int:
    """Several cases into one folder: the model loaded once, a line per case, failures reported and skipped."""
    import time as clock

    from ..infer import check_modality
    from ..io import check_output_path, read_volume

    if args.preview:
        raise InputError("--preview takes one input; in a batch, segment the case again with -o FILE --preview")
    _check_extras(args, batch=True)
    cases = _batch_cases(args.inputs)
    refuse_overwriting_inputs([args.output], args.inputs)
    folder = Path(args.output)
    if not folder.is_dir():
        if not folder.parent.is_dir():
            raise InputError(f"{folder}: its parent folder {folder.parent} does not exist")
        folder.mkdir()
    extension = FORMAT_EXTENSIONS[args.format or "seg.nrrd"]
    check_output_path(folder / f"case{extension}")
    segmenters = _Segmenters(args)
    done = skipped = failed = 0
    for number, (name, source) in enumerate(cases, start=1):
        output = folder / f"{name}{extension}"
        prefix = f"[{number}/{len(cases)}] {name}"
        if args.skip_existing and output.exists():
            skipped += 1
            print(f"{prefix}: skipped, {output} exists", file=sys.stderr)
            continue
        started = clock.perf_counter()
        try:
            volume = read_volume(source)
            card = segmenters.card_for(volume)
            segmenter = segmenters.get(card)
            check_modality(volume, card, strict=args.strict, name=name)
            _check_frames_fit(volume, output, args.frames, name)
            _check_dicom_seg_source(output, volume, name)
            result = segmenter.segment(volume, frame=args.frames)
            _write_result(output, volume, result, card)
            _write_extras(args, volume, result, card,
                          folder / f"{name}_{Path(args.statistics).name}" if args.statistics else None)
        except DinsegError as error:
            failed += 1
            print(f"{prefix}: error: {error}", file=sys.stderr)
            continue
        done += 1
        print(f"{prefix}: wrote {output} ({card.name}, {clock.perf_counter() - started:.1f} s)", file=sys.stderr)
    print(f"dinseg: {done} of {len(cases)} case(s) segmented into {folder}, {skipped} skipped, {failed} failed",
          file=sys.stderr)
    return 2 if failed else 0


def add_parsers(commands) -> None:
    """This module's subcommands on the ``dinseg`` parser."""
    segment = commands.add_parser("segment", help="segment a volume into organs",
                                  description="Segment a NIfTI, NRRD, MHA or DICOM-folder volume (3D or 4D cine). "
                                              f"INPUT may be sample:NAME for a bundled sample ({', '.join(SAMPLES)}).")
    segment.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="image file, DICOM folder, or (batch) several of them or a folder of cases")
    segment.add_argument("-o", "--output", required=True,
                         help="output .seg.nrrd (Slicer segmentation with names, colours, terminology), "
                              ".nrrd, .nii.gz, .nii or .mha (labelmap), .dcm (DICOM SEG, for a DICOM series "
                              "input); for several inputs a folder "
                              "(one output per case, named after it)")
    segment.add_argument("--format", choices=tuple(FORMAT_EXTENSIONS),
                         help="output type of each case in a batch (default: seg.nrrd); dicom-seg: a DICOM "
                              "Segmentation (.dcm) referencing a DICOM series input")
    segment.add_argument("--skip-existing", action="store_true", help="in a batch, skip cases already written")
    segment.add_argument("--statistics", metavar="FILE",
                         help="per structure (and frame): voxels, volume (mL), mean, sd, median, 5th and 95th "
                              "percentile of the input's intensities (HU for CT), centroid (LPS mm), bounding "
                              "box; .json or .csv (in a batch: OUTDIR/<case>_FILE)")
    segment.add_argument("--split", metavar="DIR", help="also write one mask per structure (NIfTI) into DIR")
    segment.add_argument("--model", help="installed model name or model card path (default: the installed model "
                                         "for the image's modality and anatomy; see 'dinseg models')")
    add_device_options(segment)
    segment.add_argument("--enhance", choices=("none", "clahe", "gamma", "unsharp"),
                         help="override the model's enhancement (for experiments)")
    segment.add_argument("--enhance-strength", type=float, metavar="S",
                         help="override the model's enhancement strength, 0..1 (for experiments)")
    segment.add_argument("--preview", metavar="PNG", help="also write original | enhanced | overlay at three slices")
    segment.add_argument("--frames", type=_frame_argument, default=None, metavar="all|N",
                         help="for a 4D cine: all frames (default) or frame N, counting from 1")
    add_cleanup_options(segment)
    segment.add_argument("--batch-size", type=int, help="slices per forward pass (default: from free memory)")
    segment.add_argument("--strict", action="store_true", help="refuse an image whose modality does not match the model")
    segment.add_argument("--progress", choices=("bar", "json", "none"),
                         help="progress display (default: a bar when stderr is a terminal)")
    segment.set_defaults(handler=run_segment)
