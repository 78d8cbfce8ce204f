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
