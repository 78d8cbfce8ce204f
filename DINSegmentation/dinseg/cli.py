"""The ``dinseg`` command: segment, cardiac-function, models, train, evaluate, synth, ablation, benchmarks.

Every command is a thin layer over the engine; errors meant for the user are printed as one
line (``dinseg: error: ...``) with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from . import __version__
from .errors import DinsegError, InputError
from .samples import SAMPLES, resolve_input

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
    from .infer import model_for

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
        from .models import find_model

        self.args = args
        self.progress = progress
        self.named = find_model(args.model) if args.model else None
        self.made: Dict[str, object] = {}

    def card_for(self, volume):
        return self.named or _chosen_model(volume)

    def get(self, card):
        from .infer import Segmenter
        from .preprocess import override_enhancement

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
                                       fill_holes=args.fill_holes, progress=self.progress)
        return self.made[key]


def _check_frames_fit(volume, output: Path, frames, name: str) -> None:
    if volume.is_time_series and frames is None and output.name.endswith(".seg.nrrd"):
        raise InputError(f"{name} is a time series of {volume.frames} frames; .seg.nrrd holds one "
                         "frame: write .nrrd or .nii.gz for all frames, or choose one with --frames N")


def _refuse_overwriting_inputs(outputs, inputs) -> None:
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


def _check_extras(args, batch: bool) -> None:
    """Refuse --statistics / --split targets that cannot be written, before any work."""
    from .io import check_output_path, output_extension

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
    from .infer import guess_modality
    from .statistics import structure_statistics, write_masks, write_statistics

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
        from .dicomseg import source_datasets

        source_datasets(volume, name)


def _write_result(output: Path, volume, result, card) -> None:
    """The segmentation in the output's format: DICOM SEG (.dcm), Slicer .seg.nrrd or a labelmap."""
    if output.name.lower().endswith(".dcm"):
        from .dicomseg import write_dicom_seg

        write_dicom_seg(output, result.labels, volume, card.labels, card.name, card.version)
        return
    from .segfile import write_segmentation

    write_segmentation(output, result.labels, result.geometry, card.labels, result.frame_spacing)


def _segment_one(args) -> int:
    from .infer import StageTimer, check_modality
    from .io import check_output_path, read_volume

    output = check_output_path(args.output)
    _refuse_overwriting_inputs([args.output, args.preview, args.statistics, args.split], args.inputs)
    if args.format == "dicom-seg" and not output.name.lower().endswith(".dcm"):
        raise InputError(f"{output}: --format dicom-seg writes a .dcm file; name the output NAME.dcm")
    if args.preview:
        check_output_path(args.preview, extensions=(".png",))
    _check_extras(args, batch=False)
    source = resolve_input(args.inputs[0])
    if not source.exists():
        raise InputError(f"{source}: no such file or folder")
    progress = ProgressReporter(args.progress or ("bar" if sys.stderr.isatty() else "none"))
    segmenters = _Segmenters(args, progress)
    timer = StageTimer()
    with timer.stage("read"):
        volume = read_volume(source)
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
        from .preview import render_preview

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

    from .infer import check_modality
    from .io import check_output_path, read_volume

    if args.preview:
        raise InputError("--preview takes one input; in a batch, segment the case again with -o FILE --preview")
    _check_extras(args, batch=True)
    cases = _batch_cases(args.inputs)
    _refuse_overwriting_inputs([args.output], args.inputs)
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


def _cardiac_labels(args):
    """(label frames, voxel spacing (x, y, z) mm, label infos, name) for ``cardiac-function``.

    INPUT is a 4D cine or an ED and an ES volume; images are segmented with the cardiac model
    (or --model), labelmaps (--labels) and .seg.nrrd files are read as they are.
    """
    from .infer import Segmenter
    from .io import read_volume
    from .models import choose_model, find_model
    from .segfile import read_labels

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
    for source in sources:
        if as_labels:
            labels, geometry, _, infos = read_labels(source, card.labels)
        else:
            volume = read_volume(source)
            segmenter = segmenter or Segmenter(card, device=args.device)
            labels, geometry = segmenter.segment(volume).labels, volume.geometry
        frames += list(labels) if labels.ndim == 4 else [labels]
        geometries.append(geometry)
    if len(sources) == 1 and len(frames) < 2:
        raise InputError(f"{sources[0]}: {'has one frame' if labels.ndim == 4 else 'is a 3D volume'}; cardiac "
                         "function needs a 4D cine, or an ED and an ES volume (two inputs)")
    if len(geometries) == 2 and not geometries[0].matches(geometries[1]):
        raise InputError(f"{sources[0]} and {sources[1]} lie on different grids (size, spacing, origin or "
                         "direction differ); ED and ES must be frames of one acquisition")
    name = " + ".join(Path(str(s)).name for s in sources)
    return frames, geometries[0].spacing, infos, name


def run_cardiac_function(args) -> int:
    from .cardiac import cardiac_function, plot_volume_curve, write_csv, write_json
    from .io import check_output_path

    outputs = {".csv": args.csv, ".json": args.json, ".png": args.plot}
    for extension, path in outputs.items():
        if path:
            check_output_path(path, extensions=(extension,))
    _refuse_overwriting_inputs(outputs.values(), args.inputs)
    frames, spacing, infos, name = _cardiac_labels(args)
    result = cardiac_function(frames, spacing, infos,
                              ed_frame=None if args.ed is None else args.ed - 1,
                              es_frame=None if args.es is None else args.es - 1,
                              height_cm=args.height, weight_kg=args.weight)
    print(f"{name}\n{result.table()}")
    if args.csv:
        write_csv(args.csv, result)
    if args.json:
        write_json(args.json, result)
    if args.plot:
        plot_volume_curve(args.plot, result, title=name)
    written = [str(path) for path in outputs.values() if path]
    if written:
        print(f"dinseg: wrote {', '.join(written)}", file=sys.stderr)
    return 0


#: the width `dinseg models` and `dinseg models show` keep to
TEXT_WIDTH = 100


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def format_model_list(cards) -> str:
    """One line per model, at most TEXT_WIDTH columns; classes shortened to fit."""
    header = ("name", "version", "modality", "size", "sha256", "classes")
    rows = [(c.name, c.version, f"{c.modality} {c.anatomy}".strip(), f"{c.weights.bytes / 1e6:.1f} MB",
             c.weights.sha256[:8], f"{len(c.labels)}: " + ", ".join(label.name for label in c.labels))
            for c in cards]
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header) - 1)]
    lines = []
    for row in [header] + rows:
        start = "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  "
        lines.append(start + _fit(row[-1], max(TEXT_WIDTH - len(start), 10)))
    lines.append("(no models installed)" if not cards else
                 "'dinseg models show NAME': the whole card (full SHA-256, training data, measured metrics)")
    return "\n".join(line.rstrip() for line in lines)


def format_model_card(card) -> str:
    """The whole card for a person, wrapped at TEXT_WIDTH columns."""
    import textwrap

    from .models import user_models_dir

    def field(name: str, text: str) -> List[str]:
        return textwrap.wrap(f"{name}: {text}", TEXT_WIDTH, subsequent_indent="    ",
                             break_on_hyphens=False) or [f"{name}:"]

    preprocessing = card.preprocessing
    normalization = preprocessing.normalization
    training = card.training
    lines = [f"{card.name} {card.version}", *textwrap.wrap(card.description, TEXT_WIDTH, break_on_hyphens=False)]
    lines += field("task", card.task)
    lines += field("modality", f"{card.modality}" + (f", {card.anatomy}" if card.anatomy else ""))
    lines += field("classes", "; ".join(f"{label.value} {label.name} ({label.type.scheme} {label.type.value})"
                                        for label in card.labels))
    lines += field("input", f"{preprocessing.spacing[0]} x {preprocessing.spacing[1]} mm in-plane, "
                            f"{preprocessing.orientation} ({preprocessing.orientation_mode}), "
                            f"{normalization.kind} {normalization.low:g}..{normalization.high:g}, "
                            f"enhancement {preprocessing.enhancement.method}")
    cleanup = [name.replace("_", " ") for name, on in card.postprocessing.items() if on]
    lines += field("post-processing", ", ".join(cleanup) or "none")
    lines += field("training data", str(training.get("data", "not recorded")))
    if training.get("command"):
        lines += field("trained with", f"{training['command']} ({training.get('wall_time_s', '?')} s, "
                                       f"{training.get('machine', 'machine not recorded')})")
    lines += field("measured", str(card.metrics.get("summary", "no measured metrics")))
    for key, value in card.metrics.items():
        if isinstance(value, dict) and value.get("command"):
            lines += field(f"  {key} measured with", str(value["command"]))
    lines += field("limitations", card.limitations or "none stated")
    lines += field("weights", f"{card.weights_path} ({card.weights.bytes / 1e6:.1f} MB, {card.weights.dtype})")
    lines += [f"sha256: {card.weights.sha256}"]
    lines += field("card", str(card.path))
    lines += field("imported models go to", f"{user_models_dir()} (set DINSEG_HOME to change)")
    return "\n".join(lines)


def run_models(args) -> int:
    from .models import find_model, import_models, list_models

    if args.models_command == "import":
        for card in import_models(args.source):
            print(f"installed {card.name} {card.version} in {card.path.parent}")
        return 0
    if args.models_command == "show":
        print(format_model_card(find_model(args.name)))
        return 0
    print(format_model_list(list_models()))
    return 0


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (--batch-size 4, --spacing 1.5 1.5, --enhancement '{"method": "gamma"}')."""
    import dataclasses

    from .train import TrainConfig

    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        if isinstance(default, bool):
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None)
        elif isinstance(default, tuple):
            parser.add_argument(flag, dest=field.name, nargs=len(default), type=type(default[0]), default=None,
                                metavar=field.name.upper())
        elif isinstance(default, dict):
            parser.add_argument(flag, dest=field.name, type=json.loads, default=None, metavar="JSON")
        else:
            parser.add_argument(flag, dest=field.name, type=type(default), default=None,
                                metavar=field.name.upper(), help=f"(default: {default})" if default != "" else None)


def training_config(args):
    """The config file (if any) with every flag given on the command line applied on top."""
    import dataclasses

    from .train import TrainConfig

    data = {}
    if args.config:
        data = TrainConfig.from_file(args.config).to_dict()
    for field in dataclasses.fields(TrainConfig):
        value = getattr(args, field.name)
        if value is not None:
            data[field.name] = value
    return TrainConfig.from_dict(data)


class EpochProgressBar:
    """A progress bar per epoch on stderr (terminals only; the log carries a line per epoch)."""

    def __init__(self):
        self.enabled = sys.stderr.isatty()
        self.line_open = False

    def __call__(self, report) -> None:
        if not self.enabled:
            return
        if report.step == 1 and self.line_open:
            sys.stderr.write("\n")
        filled = int(30 * report.step / max(report.steps_per_epoch, 1))
        sys.stderr.write(f"\repoch {report.epoch}/{report.epochs} [{'#' * filled}{'.' * (30 - filled)}] "
                         f"{report.step}/{report.steps_per_epoch} loss {report.loss:.4f}")
        self.line_open = True
        if report.val_dice is not None:
            sys.stderr.write(f" validation Dice {report.val_dice:.4f}\n")
            self.line_open = False
        sys.stderr.flush()


def run_train(args) -> int:
    from .train import DINTrainingLogic

    config = training_config(args)
    logic = DINTrainingLogic(config, progress=EpochProgressBar(), resume=args.resume)
    result = logic.run()
    if logic.distributed.is_main:
        print(f"dinseg: training finished after {result['epochs']} epoch(s); best model card: {result['best_card']}",
              file=sys.stderr)
    return 0


def run_evaluate(args) -> int:
    from .data import open_dataset, split_cases, load_split_file
    from .evaluate import CardiacAgreement, evaluate_cases, write_report
    from .infer import Segmenter
    from .models import find_model

    card = find_model(args.model)
    dataset = open_dataset(args.data, layout=args.layout)
    if args.split == "all":
        cases = dataset.cases
    else:
        splits = split_cases(dataset, load_split_file(args.split_file) if args.split_file else None,
                             val_fraction=args.val_fraction, seed=args.seed)
        cases = splits.get(args.split, [])
        if not cases:
            raise InputError(f"{args.data}: the {args.split!r} split is empty (splits: "
                             f"{', '.join(f'{k} {len(v)}' for k, v in splits.items())}); use --split all or --split-file")
    if [label.name for label in card.labels] != list(dataset.class_names):
        log.warning("model classes %s differ from the dataset's %s; scoring by label value",
                    [label.name for label in card.labels], dataset.class_names)
    phases = {case.case_id: case.phase for case in cases}
    cardiac = CardiacAgreement(card.labels) if any(phases.values()) and any(
        label.name == "left ventricle" for label in card.labels) else None
    segmenter = Segmenter(card, device=args.device, largest_component=args.largest_component,
                          fill_holes=args.fill_holes)
    per_case = evaluate_cases(card, cases, segmenter=segmenter, on_case=cardiac.add if cardiac else None)
    if not per_case:
        raise InputError("no labelled case to evaluate")
    report = write_report(per_case, [label.name for label in card.labels], args.output, phases=phases,
                          cardiac=cardiac)
    print(report.read_text(encoding="utf-8"))
    import torch

    print(f"dinseg: wrote {report} and {report.with_suffix('.csv')} ({card.name} {card.version}, device "
          f"{segmenter.device}, {torch.get_num_threads()} CPU threads)", file=sys.stderr)
    return 0


def run_synth(args) -> int:
    from .synth import DEGRADATION_LEVELS, write_acdc_phantom

    level = DEGRADATION_LEVELS.get(args.degradation)
    if level is None:
        try:
            level = float(args.degradation)
        except ValueError:
            raise InputError(f"--degradation takes {', '.join(DEGRADATION_LEVELS)} or a number in [0, 1]") from None
    folders = write_acdc_phantom(args.output, args.cases, level, args.seed, first_id=args.first_id)
    print(f"dinseg: wrote {len(folders)} synthetic phantom case(s) (degradation {level}) in ACDC layout to "
          f"{args.output}", file=sys.stderr)
    return 0


def run_ablation(args) -> int:
    from .ablation import plan_from_args, run_ablation

    plan = plan_from_args(args)
    run_ablation(plan)
    print((Path(plan.output) / "ablation.md").read_text(encoding="utf-8"))
    return 0


def run_bench_model(args) -> int:
    import torch

    from .bench import format_model_table, model_rows

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.cpu_only else [])
    rows = model_rows(args.size, args.threads, devices, args.presets, args.repeats)
    print(format_model_table(rows, devices, args.threads, args.size))
    return 0


def run_bench_segment(args) -> int:
    from .bench import format_segment_table, segment_rows

    rows = segment_rows(args.slices, args.model, args.device, args.threads)
    print(format_segment_table(rows, args.model, args.device, args.threads))
    return 0


def run_bench_robustness(args) -> int:
    from .bench import cine_robustness_rows, format_cine_robustness_table, format_robustness_table, robustness_rows

    if args.data:
        rows = cine_robustness_rows(args.model, args.data, args.split_file, args.split, args.patients, args.device)
        print(format_cine_robustness_table(rows, args.model, f"{args.data}, split {args.split}, first "
                                           f"{args.patients} patients (ED and ES) stored as other scanners do"))
        return 0
    print(format_robustness_table(robustness_rows(args.model, args.device), args.model))
    return 0


DEVICE_HELP = "auto (GPU if any), cpu, cuda, cuda:N (the N-th GPU) or mps (default: %(default)s)"


def _add_device_options(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    parser.add_argument("--device", default=default, help=DEVICE_HELP)
    parser.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: PyTorch's, all cores)")


def _add_cleanup_options(parser: argparse.ArgumentParser) -> None:
    default = "(default: as the model card says)"
    parser.add_argument("--largest-component", action=argparse.BooleanOptionalAction, default=None,
                        help=f"keep each structure's largest 3D component {default}")
    parser.add_argument("--fill-holes", action=argparse.BooleanOptionalAction, default=None,
                        help=f"fill holes enclosed by a structure {default}")


def run_bench_dicom_seg(args) -> int:
    from .bench import dicom_seg_rows, format_dicom_seg_table

    print(format_dicom_seg_table(dicom_seg_rows(args.slices, args.model, args.device), args.slices, args.model))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dinseg", description="Dual Interaction Network organ segmentation.")
    parser.add_argument("--version", action="version", version=f"dinseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    _add_device_options(segment)
    segment.add_argument("--enhance", choices=("none", "clahe", "gamma", "unsharp"),
                         help="override the model's enhancement (for experiments)")
    segment.add_argument("--enhance-strength", type=float, metavar="S",
                         help="override the model's enhancement strength, 0..1 (for experiments)")
    segment.add_argument("--preview", metavar="PNG", help="also write original | enhanced | overlay at three slices")
    segment.add_argument("--frames", type=_frame_argument, default=None, metavar="all|N",
                         help="for a 4D cine: all frames (default) or frame N, counting from 1")
    _add_cleanup_options(segment)
    segment.add_argument("--batch-size", type=int, help="slices per forward pass (default: from free memory)")
    segment.add_argument("--strict", action="store_true", help="refuse an image whose modality does not match the model")
    segment.add_argument("--progress", choices=("bar", "json", "none"),
                         help="progress display (default: a bar when stderr is a terminal)")
    segment.set_defaults(handler=run_segment)

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
    _add_device_options(cardiac)
    cardiac.set_defaults(handler=run_cardiac_function)

    models = commands.add_parser("models", help="list or import model cards")
    models_commands = models.add_subparsers(dest="models_command", metavar="list|show|import")
    models_commands.add_parser("list", help="list installed models (the default)")
    models_show = models_commands.add_parser("show", help="the whole card of a model, for a person")
    models_show.add_argument("name", metavar="NAME", help="installed model name or card path")
    models_import = models_commands.add_parser("import", help="install models from a ZIP archive or folder")
    models_import.add_argument("source", metavar="ZIP|DIR")
    models.set_defaults(handler=run_models)

    train = commands.add_parser("train", help="train a DIN model (CPU, GPU, or torchrun for several)",
                                description="Train on an ACDC, Synapse, BTCV or MSD/nnU-Net folder. CONFIG (YAML or "
                                            "JSON) sets any option; flags override it. Under torchrun, trains with "
                                            "DistributedDataParallel.")
    train.add_argument("config", nargs="?", metavar="CONFIG")
    train.add_argument("--resume", action="store_true", help="continue the run in --output from its checkpoint")
    train.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: PyTorch's, all cores)")
    _add_train_options(train)
    train.set_defaults(handler=run_train)

    evaluate = commands.add_parser("evaluate", help="per-case, per-class Dice and HD95 of a model on a dataset")
    evaluate.add_argument("--model", required=True, help="model name or card path")
    evaluate.add_argument("--data", required=True, help="dataset folder (ACDC, Synapse, BTCV, MSD/nnU-Net)")
    evaluate.add_argument("--split", default="test", help="train, val, test or all (default: %(default)s)")
    evaluate.add_argument("--split-file", help="JSON/YAML with the case lists of each split")
    evaluate.add_argument("--layout", default="auto")
    evaluate.add_argument("--val-fraction", type=float, default=0.2)
    evaluate.add_argument("--seed", type=int, default=0)
    _add_device_options(evaluate)
    evaluate.add_argument("-o", "--output", default="evaluation", help="folder for evaluation.csv and .md")
    _add_cleanup_options(evaluate)
    evaluate.set_defaults(handler=run_evaluate)

    synth = commands.add_parser("synth", help="write a synthetic cardiac short-axis PHANTOM in the ACDC layout")
    synth.add_argument("output", metavar="OUT")
    synth.add_argument("--cases", type=int, default=20)
    synth.add_argument("--degradation", default="moderate", help="mild, moderate, severe or a number in [0, 1]")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--first-id", type=int, default=1, help="first patient number")
    synth.set_defaults(handler=run_synth)

    ablation = commands.add_parser("ablation", help="single vs concat vs difm, trained and scored alike",
                                   description="Train the single, concat and difm variants from one training "
                                               "configuration (data, split, preprocessing, preset) with the same "
                                               "budget and seeds; score each on its validation patients; print a "
                                               "table (also ablation.md and ablation.csv in --output).")
    ablation.add_argument("config", metavar="CONFIG", help="training configuration, e.g. configs/acdc-light.yaml")
    ablation.add_argument("--output", help="work folder (default: runs/ablation)")
    ablation.add_argument("--variants", nargs="+", choices=("single", "concat", "difm"))
    ablation.add_argument("--seeds", nargs="+", type=int, help="training seeds (default: 0 1)")
    ablation.add_argument("--epochs", type=int, help="epochs per run (default: the configuration's)")
    ablation.add_argument("--iterations-per-epoch", type=int, help="(default: the configuration's)")
    ablation.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"))
    ablation.set_defaults(handler=run_ablation)

    bench_model = commands.add_parser("bench-model", help="benchmark: parameters, GMACs, latency of every network")
    bench_model.add_argument("--size", type=int, default=224, help="input height and width (default: 224)")
    bench_model.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    bench_model.add_argument("--presets", nargs="+", default=["light", "medium", "paper"],
                             help="presets to time (default: light medium paper)")
    bench_model.add_argument("--repeats", type=int, default=20,
                             help="timed passes per network; a fifth of them for paper on CPU (default: 20)")
    bench_model.add_argument("--cpu-only", action="store_true", help="skip the GPU even if there is one")
    bench_model.set_defaults(handler=run_bench_model)

    bench_segment = commands.add_parser("bench-segment",
                                        help="benchmark: per-stage time and peak memory of dinseg segment")
    bench_segment.add_argument("--slices", nargs="+", type=int, default=[150, 300],
                               help="slice counts of the 512x512 test volumes (default: 150 300)")
    bench_segment.add_argument("--model", default="abdomen-ct-light", help="model name or card path")
    bench_segment.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda", "mps"))
    bench_segment.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    bench_segment.set_defaults(handler=run_bench_segment)

    bench_dicom_seg = commands.add_parser("bench-dicom-seg",
                                          help="benchmark: the time DICOM SEG writing adds, against .seg.nrrd and .nii.gz")
    bench_dicom_seg.add_argument("--slices", type=int, default=150, help="slices of the 512x512 series (default: 150)")
    bench_dicom_seg.add_argument("--model", default="abdomen-ct-light", help="model name or card path")
    bench_dicom_seg.add_argument("--device", default="cpu", help=DEVICE_HELP)
    bench_dicom_seg.set_defaults(handler=run_bench_dicom_seg)

    bench_robustness = commands.add_parser(
        "bench-robustness", help="benchmark: the bundled CT stored in other orientations and resolutions")
    bench_robustness.add_argument("--model", default="abdomen-ct-light", help="model name or card path")
    bench_robustness.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda", "mps"))
    bench_robustness.add_argument("--data", help="instead: labelled cine short-axis cases (e.g. an ACDC folder), "
                                                 "stored as other scanners do")
    bench_robustness.add_argument("--split-file", help="with --data: the split file")
    bench_robustness.add_argument("--split", default="val", help="with --data: the split (default: %(default)s)")
    bench_robustness.add_argument("--patients", type=int, default=8, help="with --data: patients (default: 8)")
    bench_robustness.set_defaults(handler=run_bench_robustness)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Logs to whatever sys.stderr is at the time of each message."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _configure_logging(verbose: bool) -> None:
    if not any(isinstance(handler, _StderrHandler) for handler in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("dinseg: %(levelname)s: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.DEBUG if verbose else logging.INFO)


def _set_threads(threads) -> None:
    if threads is None:
        return
    if threads < 1:
        raise InputError(f"--threads must be at least 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def _interrupt_on_sigterm() -> None:
    """SIGTERM (a killed job, Cancel in Slicer) unwinds like Ctrl-C, so no temporary file stays behind."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def main(argv=None) -> int:
    _interrupt_on_sigterm()
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        _set_threads(getattr(args, "threads", None))
        return args.handler(args)
    except DinsegError as error:
        print(f"dinseg: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dinseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
