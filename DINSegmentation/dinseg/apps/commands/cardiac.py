"""``dinseg cardiac-function``: ventricular volumes, ejection fraction and mass from a cine or an ED/ES pair."""

from __future__ import annotations

import sys
from pathlib import Path

from ...core.errors import InputError
from ...core.samples import resolve_input
from ...pipeline.files import refuse_overwriting_inputs
from .common import add_device_options


def _cardiac_labels(args):
    """(label frames, voxel spacing (x, y, z) mm, label infos, name) for ``cardiac-function``.

    INPUT is a 4D cine or an ED and an ES volume; images are segmented with the cardiac model
    (or --model), labelmaps (--labels) and .seg.nrrd files are read as they are.
    """
    from ...pipeline.segmenter import Segmenter
    from ...core.io import read_volume
    from ...models import choose_model, find_model
    from ...reports.segfile import read_labels

    sources = [resolve_input(name) for name in args.inputs]
    if len(sources) > 2:
        raise InputError("give one 4D cine, or one ED and one ES volume (at most two inputs)")
    for source in sources:
        if not source.exists():
            raise InputError(f"{source}: no such file or folder")
    card = find_model(args.model) if args.model else choose_model("MR", "heart")
    as_labels = args.labels or all(s.name.lower().endswith(".seg.nrrd") for s in sources)
    frames, geometries, infos = [], [], card.labels
    segmenter = None
    images = []  # per frame: (volume, frame index or None) of a segmented image, None for labels read
    for source in sources:
        if as_labels:
            labels, geometry, _, infos = read_labels(source, card.labels)
            images += [None] * (labels.shape[0] if labels.ndim == 4 else 1)
        else:
            volume = read_volume(source)
            segmenter = segmenter or Segmenter(card, device=args.device, precision=args.precision)
            labels, geometry = segmenter.segment(volume).labels, volume.geometry
            images += [(volume, t) for t in range(labels.shape[0])] if labels.ndim == 4 else [(volume, None)]
        frames += list(labels) if labels.ndim == 4 else [labels]
        geometries.append(geometry)
    if len(sources) == 1 and len(frames) < 2:
        raise InputError(f"{sources[0]}: {'has one frame' if labels.ndim == 4 else 'is a 3D volume'}; cardiac "
                         "function needs a 4D cine, or an ED and an ES volume (two inputs)")
    if len(geometries) == 2 and not geometries[0].matches(geometries[1]):
        raise InputError(f"{sources[0]} and {sources[1]} lie on different grids (size, spacing, origin or "
                         "direction differ); ED and ES must be frames of one acquisition")
    name = " + ".join(Path(str(s)).name for s in sources)
    args._quality_context = (card, segmenter, images, geometries[0])
    return frames, geometries[0].spacing, infos, name


def _phase_quality(args, frames, result) -> None:
    """The verdict per phase (ED, ES) on the report, with test-time variants where the images were segmented."""
    from ...pipeline.files import variant_labels
    from ...reports.cardiac import function_quality
    from ...reports.quality import QualityVerdict, quality_verdict

    card, segmenter, images, geometry = args._quality_context
    phases = {}
    for phase, index in (("ED", result.ed_frame), ("ES", result.es_frame)):
        try:
            source = images[index] if index < len(images) else None
            image, variants = None, None
            if source is not None:
                volume, t = source
                image = volume.array if t is None else volume.array[t]
                if getattr(args, "quality_variants", 1):
                    variants = variant_labels(segmenter, volume, frame=t)
            phases[phase] = quality_verdict(frames[index], image, geometry, card, variants=variants, modality="MR")
        except Exception as error:  # the checks never crash a run
            phases[phase] = QualityVerdict(notes=[f"the quality checks could not run ({type(error).__name__}: {error})"])
    function_quality(result, phases)


def run_cardiac_function(args) -> int:
    from ...reports.cardiac import cardiac_function, plot_volume_curve, write_csv, write_json
    from ...core.io import check_output_path

    outputs = {".csv": args.csv, ".json": args.json, ".png": args.plot}
    for extension, path in outputs.items():
        if path:
            check_output_path(path, extensions=(extension,))
    refuse_overwriting_inputs(outputs.values(), args.inputs)
    frames, spacing, infos, name = _cardiac_labels(args)
    result = cardiac_function(frames, spacing, infos,
                              ed_frame=None if args.ed is None else args.ed - 1,
                              es_frame=None if args.es is None else args.es - 1,
                              height_cm=args.height, weight_kg=args.weight)
    _phase_quality(args, frames, result)
    print(f"{name}\n{result.table()}")
    for line in result.quality_warnings():
        print(f"dinseg: warning: {line}", file=sys.stderr)
    for line in result.quality_warnings(notes=True):
        print(f"dinseg: note: {line}", file=sys.stderr)
    if args.csv:
        write_csv(args.csv, result)
    if args.json:
        write_json(args.json, result)
    if args.plot:
        plot_volume_curve(args.plot, result, title=name)
    written = [str(path) for path in outputs.values() if path]
    if written:
        print(f"dinseg: wrote {', '.join(written)}", file=sys.stderr)
    if result.quality["status"] == "review" and args.strict_quality:
        return 3
    return 0


def add_parsers(commands) -> None:
    """This module's subcommands on the ``dinseg`` parser."""
    cardiac = commands.add_parser(
        "cardiac-function", help="LV and RV volumes, ejection fraction and myocardial mass from a cine",
        description="Cardiac function from a 4D short-axis cine, or an ED and an ES volume (segmented with the "
                    "cardiac model), or from labels already made (--labels; .seg.nrrd files are recognised). "
                    "Volumes are voxel counts x voxel volume; ED and ES are the frames of largest and smallest "
                    "LV volume unless given; myocardial mass at ED, 1.05 g/mL. Frames count from 1.")
    cardiac.add_argument("inputs", nargs="+", metavar="INPUT", help="a 4D cine, or ED and ES volumes")
    cardiac.add_argument("--labels", action="store_true",
                         help="the inputs are labelmaps (values as the model's labels: 1 RV, 2 myocardium, 3 LV)")
    cardiac.add_argument("--model", help="cardiac model name or card path (default: the installed short-axis model)")
    cardiac.add_argument("--ed", type=int, metavar="N", help="end-diastolic frame number (1 = first)")
    cardiac.add_argument("--es", type=int, metavar="N", help="end-systolic frame number (1 = first)")
    cardiac.add_argument("--height", type=float, metavar="CM", help="height in cm (with --weight: indexed values)")
    cardiac.add_argument("--weight", type=float, metavar="KG", help="weight in kg (with --height: indexed values)")
    cardiac.add_argument("--csv", metavar="FILE", help="write the figures as CSV")
    cardiac.add_argument("--json", metavar="FILE", help="write the figures and per-frame volumes as JSON")
    cardiac.add_argument("--plot", metavar="PNG", help="write LV and RV volume over the cardiac cycle")
    cardiac.add_argument("--strict-quality", action="store_true",
                         help="exit with status 3 when the report needs review (after writing it)")
    cardiac.add_argument("--quality-variants", type=int, default=1, choices=(0, 1),
                         help="1: a test-time variant per phase for the predicted Dice (one more pass of the "
                              "network each); 0: none (default: %(default)s)")
    add_device_options(cardiac)
    cardiac.set_defaults(handler=run_cardiac_function)
