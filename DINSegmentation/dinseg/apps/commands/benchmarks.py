"""The benchmark commands: tables of speed, memory and robustness (never timed tests)."""

from __future__ import annotations

from .common import DEVICE_HELP, add_precision_option


def run_bench_model(args) -> int:
    import torch

    from ..bench import format_model_table, model_rows

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.cpu_only else [])
    rows = model_rows(args.size, args.threads, devices, args.presets, args.repeats)
    print(format_model_table(rows, devices, args.threads, args.size))
    return 0


def run_bench_segment(args) -> int:
    from ..bench import format_segment_table, segment_rows

    rows = segment_rows(args.slices, args.model, args.device, args.threads, args.precision)
    print(format_segment_table(rows, args.model, args.device, args.threads, args.precision))
    return 0


def run_bench_robustness(args) -> int:
    from ..bench import dataset_robustness_rows, format_dataset_robustness_table, format_robustness_table, robustness_rows

    if args.data:
        rows = dataset_robustness_rows(args.model, args.data, args.split_file, args.split, args.patients, args.device)
        print(format_dataset_robustness_table(rows, args.model, f"{args.data}, split {args.split}, first "
                                              f"{args.patients} patients stored as other scanners do"))
        return 0
    print(format_robustness_table(robustness_rows(args.model, args.device), args.model))
    return 0


def run_bench_dicom_seg(args) -> int:
    from ..bench import dicom_seg_rows, format_dicom_seg_table

    print(format_dicom_seg_table(dicom_seg_rows(args.slices, args.model, args.device), args.slices, args.model))
    return 0


def run_bench_quality(args) -> int:
    import json
    import sys

    from .. import bench

    if args.fit_statistics:
        folder, split_file, split = bench.STATISTICS_SOURCES.get(args.fit_statistics, (None, None, "train"))
        data = args.data if args.data != "../shared/data" or folder is None else f"{args.data}/{folder}"
        block = bench.training_statistics(args.fit_statistics, data, args.split_file or split_file,
                                          args.split or split, args.max_cases)
        print(json.dumps(block, indent=2))
        return 0
    say = (lambda line: print(line, file=sys.stderr, flush=True))
    rows = bench.quality_rows(args.data, args.acdc_patients, args.abdomen_cases, args.mnms_patients, args.threads,
                              corrupt=not args.no_corruptions, calibration=args.calibrate, progress=say)
    if args.rows:
        with open(args.rows, "w", encoding="utf-8") as stream:
            json.dump(rows, stream, indent=1)
    if args.calibrate:
        print(json.dumps(bench.fit_calibration(rows), indent=2))
        return 0
    print(bench.format_quality_table(rows))
    return 0


def add_parsers(commands) -> None:
    """This module's subcommands on the ``dinseg`` parser."""
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
    bench_segment.add_argument("--model", default="btcv-ct-light", help="model name or card path")
    bench_segment.add_argument("--device", default="cpu", help=DEVICE_HELP)
    bench_segment.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    add_precision_option(bench_segment)
    bench_segment.set_defaults(handler=run_bench_segment)

    bench_dicom_seg = commands.add_parser("bench-dicom-seg",
                                          help="benchmark: the time DICOM SEG writing adds, against .seg.nrrd and .nii.gz")
    bench_dicom_seg.add_argument("--slices", type=int, default=150, help="slices of the 512x512 series (default: 150)")
    bench_dicom_seg.add_argument("--model", default="btcv-ct-light", help="model name or card path")
    bench_dicom_seg.add_argument("--device", default="cpu", help=DEVICE_HELP)
    bench_dicom_seg.set_defaults(handler=run_bench_dicom_seg)

    bench_robustness = commands.add_parser(
        "bench-robustness", help="benchmark: the bundled CT stored in other orientations and resolutions")
    bench_robustness.add_argument("--model", default="btcv-ct-light", help="model name or card path")
    bench_robustness.add_argument("--device", default="cpu", help=DEVICE_HELP)
    bench_robustness.add_argument("--data", help="instead: labelled cine short-axis cases (e.g. an ACDC folder), "
                                                 "stored as other scanners do")
    bench_robustness.add_argument("--split-file", help="with --data: the split file")
    bench_robustness.add_argument("--split", default="val", help="with --data: the split (default: %(default)s)")
    bench_robustness.add_argument("--patients", type=int, default=8, help="with --data: patients (default: 8)")
    bench_robustness.set_defaults(handler=run_bench_robustness)

    bench_quality = commands.add_parser(
        "bench-quality", help="benchmark: does the quality verdict flag the results that fail (validation patients, "
                              "as stored and corrupted)?")
    bench_quality.add_argument("--data", default="../shared/data", help="the shared data folder (default: %(default)s)")
    bench_quality.add_argument("--acdc-patients", type=int, default=2, help="ACDC val patients, ED and ES (default: 2)")
    bench_quality.add_argument("--abdomen-cases", type=int, default=2,
                               help="BTCV and CHAOS val cases each (default: 2)")
    bench_quality.add_argument("--mnms-patients", type=int, default=2,
                               help="M&Ms patients (other vendors), ED and ES (default: 2)")
    bench_quality.add_argument("--threads", type=int, default=1, help="CPU threads (default: 1)")
    bench_quality.add_argument("--no-corruptions", action="store_true", help="the stored images only")
    bench_quality.add_argument("--rows", metavar="JSON", help="also write every scored structure as JSON")
    bench_quality.add_argument("--calibrate", action="store_true",
                               help="instead: fit each model's agreement -> Dice line on the validation patients "
                                    "NOT in the table (ACDC, BTCV and CHAOS val; never M&Ms) and print it")
    bench_quality.add_argument("--fit-statistics", metavar="MODEL",
                               help="instead: print MODEL's training-statistics block (for its card) from its "
                                    "training split")
    bench_quality.add_argument("--split-file", help="with --fit-statistics: the split file")
    bench_quality.add_argument("--split", help="with --fit-statistics: the split (default: train)")
    bench_quality.add_argument("--max-cases", type=int, default=40, help="with --fit-statistics: volumes (default: 40)")
    bench_quality.set_defaults(handler=run_bench_quality)
