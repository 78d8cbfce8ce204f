"""``dinseg segment``: one image or a batch, into labelmaps, Slicer segmentations or DICOM SEG."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from ...core.errors import InputError
from ...core.samples import SAMPLES
from ...pipeline.files import FORMAT_EXTENSIONS, refuse_overwriting_inputs
from ...pipeline.options import ENHANCEMENT_METHODS, SegmentOptions
from .common import add_cleanup_options, add_device_options, frame_number

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
    """--frames: 'all' (None) or a frame number from 1."""
    if value == "all":
        return None
    if not value.lstrip("-").isdigit():
        raise argparse.ArgumentTypeError("--frames takes 'all' or a frame number (1 = first)")
    return frame_number(value)


def run_segment(args) -> int:
    from ...pipeline.files import is_batch

    if is_batch(args.inputs, args.output):
        return _segment_batch(args)
    return _segment_one(args)


def _segment_one(args) -> int:
    from ...core.io import check_output_path
    from ...pipeline.files import segment_file

    output = check_output_path(args.output)
    refuse_overwriting_inputs([args.output, args.preview, args.statistics, args.split], args.inputs)
    if args.format == "dicom-seg" and not output.name.lower().endswith(".dcm"):
        raise InputError(f"{output}: --format dicom-seg writes a .dcm file; name the output NAME.dcm")
    progress = ProgressReporter(args.progress or ("bar" if sys.stderr.isatty() else "none"))
    result = segment_file(args.inputs[0], output, SegmentOptions.from_args(args), preview=args.preview,
                          statistics=args.statistics, split=args.split, progress=progress,
                          quality_variants=_variants(args))
    import torch

    if result.quality is not None:  # before "done", which ends a reader's wait
        progress.event(event="quality", **result.quality.to_dict())
    progress.event(event="done", output=str(result.output), seconds=result.timer.seconds)
    print(f"dinseg: wrote {result.output} ({result.card.name} {result.card.version}, device {result.device}, "
          f"{torch.get_num_threads()} CPU threads)\n{result.timer.table()}", file=sys.stderr)
    return _report_quality(result.quality, args)


def _variants(args) -> int:
    variants = getattr(args, "quality_variants", 1)
    if variants is None:
        return 1
    if not 0 <= variants <= 3:
        raise InputError(f"--quality-variants takes 0 to 3, got {variants}")
    return variants


def _report_quality(verdict, args, prefix: str = "") -> int:
    """One ``dinseg: warning:`` line per problem; 3 with --strict-quality when the result needs review."""
    if verdict is None:
        return 0
    for line in verdict.warnings():
        print(f"dinseg: warning: {prefix}{line}", file=sys.stderr)
    for line in verdict.notes:
        print(f"dinseg: note: {prefix}{line}", file=sys.stderr)
    if verdict.needs_review:
        print(f"dinseg: {prefix}the result needs review (it was written)", file=sys.stderr)
        if getattr(args, "strict_quality", False):
            return 3
    return 0


def _segment_batch(args) -> int:
    """Several cases into one folder: the model loaded once, a line per case, failures reported and skipped."""
    from ...pipeline.files import batch_cases, segment_files

    if args.preview:
        raise InputError("--preview takes one input; in a batch, segment the case again with -o FILE --preview")
    total = len(batch_cases(args.inputs))
    counts = {"written": 0, "skipped": 0, "failed": 0}
    outcomes = segment_files(args.inputs, args.output, SegmentOptions.from_args(args),
                             output_format=args.format or "seg.nrrd", statistics=args.statistics,
                             skip_existing=args.skip_existing, quality_variants=_variants(args))
    review = 0
    for number, outcome in enumerate(outcomes, start=1):
        counts[outcome.status] += 1
        prefix = f"[{number}/{total}] {outcome.name}"
        if outcome.status == "written":
            print(f"{prefix}: wrote {outcome.output} ({outcome.model}, {outcome.seconds:.1f} s)", file=sys.stderr)
            review = max(review, _report_quality(outcome.quality, args, prefix=f"{outcome.name}: "))
        elif outcome.status == "skipped":
            print(f"{prefix}: skipped, {outcome.message}", file=sys.stderr)
        else:
            print(f"{prefix}: error: {outcome.message}", file=sys.stderr)
    print(f"dinseg: {counts['written']} of {total} case(s) segmented into {Path(args.output)}, "
          f"{counts['skipped']} skipped, {counts['failed']} failed", file=sys.stderr)
    return 2 if counts["failed"] else review


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
    segment.add_argument("--enhance", choices=ENHANCEMENT_METHODS,
                         help="override the model's enhancement (for experiments)")
    segment.add_argument("--enhance-strength", type=float, metavar="S",
                         help="override the model's enhancement strength, 0..1 (for experiments)")
    segment.add_argument("--preview", metavar="PNG", help="also write original | enhanced | overlay at three slices")
    segment.add_argument("--frames", type=_frame_argument, default=None, metavar="all|N",
                         help="for a 4D cine: all frames (default) or frame N, counting from 1")
    add_cleanup_options(segment)
    segment.add_argument("--batch-size", type=int, help="slices per forward pass (default: from free memory)")
    segment.add_argument("--strict", action="store_true", help="refuse an image whose modality does not match the model")
    segment.add_argument("--strict-quality", action="store_true",
                         help="exit with status 3 when the result needs review (after writing it); the checks "
                              "print one 'dinseg: warning:' line per problem either way (docs/quality.md)")
    segment.add_argument("--quality-variants", type=int, default=1, metavar="N",
                         help="test-time variants (0 to 3) for each structure's predicted Dice; each costs one "
                              "more pass of the network, 0 skips the predicted Dice (default: %(default)s)")
    segment.add_argument("--progress", choices=("bar", "json", "none"),
                         help="progress display (default: a bar when stderr is a terminal)")
    segment.set_defaults(handler=run_segment)
