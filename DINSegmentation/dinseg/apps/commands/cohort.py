"""``dinseg cohort``: a cohort on Dask (this machine or a cluster) into one results table; and its benchmark."""

from __future__ import annotations

import os
import sys
import time
from typing import Dict

from ...core.errors import InputError
from ...pipeline.files import FORMAT_EXTENSIONS
from ...pipeline.options import SegmentOptions
from .common import add_cleanup_options, add_device_options


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class CohortProgress:
    """Cases done, failed, rate and time left on stderr: a bar on a terminal, else a line per case."""

    def __init__(self, bar: bool, earlier: int = 0):
        self.bar = bar
        self.earlier = earlier  # rows known before the run: cases finished before, paths that do not exist
        self.started = time.monotonic()
        self.counts = None

    def __call__(self, row: Dict[str, object], counts) -> None:
        self.counts = counts
        segmented = max(0, counts.done - self.earlier)
        elapsed = time.monotonic() - self.started
        rate = segmented / elapsed if segmented and elapsed > 0 else 0.0
        left = counts.total - counts.done
        eta = time.strftime("%H:%M:%S", time.gmtime(left / rate)) if rate else "--:--:--"
        failed = counts.by_status["failed"]
        summary = f"{counts.done}/{counts.total} done, {failed} failed, {rate * 60:.1f} cases/min, {eta} left"
        if self.bar:
            filled = int(30 * counts.done / max(counts.total, 1))
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {summary}")
            if counts.done >= counts.total:
                sys.stderr.write("\n")
            sys.stderr.flush()
            if row["status"] == "failed":
                sys.stderr.write(f"\rdinseg: {row['case']}: failed: {row['error']}\n")
            return
        detail = {"failed": row.get("error"), "skipped": "finished before"}.get(
            str(row["status"]), f"{float(row.get('seconds') or 0):.1f} s on worker {row.get('worker')}")
        print(f"[{counts.done}/{counts.total}] {row['case']}: {row['status']}, {detail}; {summary}", file=sys.stderr,
              flush=True)


def cohort_options(args, local: bool) -> SegmentOptions:
    """The segment options of ``dinseg cohort``'s arguments; a LocalCluster's workers share the cores."""
    threads = args.threads
    if threads is None and local:
        threads = max(1, available_cores() // args.workers)
    return SegmentOptions.from_args(args).replace(threads=threads)


def run_cohort_command(args) -> int:
    from ...pipeline.cohort import dashboard_link, dask_missing, open_cluster, parse_part, plan_cohort, run_cohort

    reason = dask_missing()
    if reason:
        raise InputError(reason)
    if args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    if not 0 <= args.quality_variants <= 3:
        raise InputError(f"--quality-variants takes 0 to 3, got {args.quality_variants}")
    part = parse_part(args.part) if args.part else None
    plan = plan_cohort(args.inputs, args.output, cohort_options(args, local=not args.scheduler),
                       output_format=args.format, quality_variants=args.quality_variants,
                       cardiac=args.cardiac_function, part=part)
    progress = CohortProgress(bar=args.progress == "bar" or (args.progress is None and sys.stderr.isatty()),
                              earlier=len(plan.kept) + len(plan.failed))
    table = plan.folder / f"{plan.table_name}.csv"
    planned = (f"dinseg: {plan.total} case(s): {len(plan.tasks)} to segment, {len(plan.kept)} finished before, "
               f"{len(plan.failed)} missing")
    try:
        if plan.tasks:
            where = args.scheduler or f"a LocalCluster of {args.workers} worker(s)"
            with open_cluster(args.scheduler, args.workers, args.connect_timeout) as client:
                link = dashboard_link(client)
                print(f"{planned}; on {where}" + (f"; dashboard {link}" if link else ""), file=sys.stderr)
                counts = run_cohort(plan, client, progress)
        else:
            print(planned, file=sys.stderr)
            counts = run_cohort(plan, None, progress)
    except KeyboardInterrupt:
        done = progress.counts.done if progress.counts else 0
        print(f"\ndinseg: interrupted; the {done} case(s) finished are in {table}; run the same command again "
              "to go on", file=sys.stderr)
        return 130
    statuses = counts.by_status
    print(f"dinseg: {statuses['ok']} segmented, {statuses['skipped']} skipped (finished before), "
          f"{statuses['failed']} failed, of {counts.total}; table {table} and .parquet", file=sys.stderr)
    return 2 if statuses["failed"] else 0


def run_bench_cohort(args) -> int:
    from ..bench_cohort import cohort_rows, format_cohort_table

    rows = cohort_rows(args.data, args.cases, args.quality_variants, args.device, args.work,
                       progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(format_cohort_table(rows, args.cases, args.quality_variants, args.device))
    return 0


def add_parsers(commands) -> None:
    """This module's subcommands on the ``dinseg`` parser."""
    cohort = commands.add_parser(
        "cohort", help="segment a cohort on Dask (this machine or a cluster) into one results table",
        description="Segment every case on a Dask cluster (a LocalCluster here, or --scheduler), one output per "
                    "case as 'dinseg segment' writes it, and one table OUTDIR/cohort.csv and .parquet with a "
                    "row per case, written as cases finish. A rerun skips the cases finished before. Needs "
                    "pip install 'dinseg[cohort]'. See docs/cohort.md.")
    cohort.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, DICOM series folders, folders of cases, or lists of paths (.txt: one "
                             "a line; .csv: an 'input' or 'path' column)")
    cohort.add_argument("-o", "--output", required=True, metavar="OUTDIR",
                        help="output folder: <case><format> per case, cohort.csv and cohort.parquet")
    cohort.add_argument("--format", choices=tuple(FORMAT_EXTENSIONS), default="seg.nrrd",
                        help="each case's output type (default: %(default)s; nii.gz or nrrd for 4D cines)")
    cohort.add_argument("--workers", type=int, default=max(1, available_cores() // 2),
                        help="worker processes of the LocalCluster, each with cores/workers PyTorch threads "
                             "(default: half the cores, %(default)s)")
    cohort.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                        help="a running Dask scheduler to use instead of a LocalCluster")
    cohort.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                        help="seconds to reach --scheduler (default: %(default)s)")
    cohort.add_argument("--part", metavar="K/N",
                        help="only the K-th of N shares of the cases (every N-th from the K-th; for job arrays); "
                             "its table is cohort-part-K-of-N.csv")
    cohort.add_argument("--cardiac-function", action="store_true",
                        help="add EDV, ESV, SV, EF and LV mass: of each 4D cine, and of each ED/ES pair (a folder "
                             "holding two cases)")
    cohort.add_argument("--model", help="installed model name or card path (default: the model for each image)")
    add_device_options(cohort)
    add_cleanup_options(cohort)
    cohort.add_argument("--batch-size", type=int, help="slices per forward pass (default: from free memory)")
    cohort.add_argument("--strict", action="store_true", help="fail a case whose modality does not match the model")
    cohort.add_argument("--quality-variants", type=int, default=1, metavar="N",
                        help="test-time variants (0 to 3) for the quality verdict's predicted Dice "
                             "(default: %(default)s)")
    cohort.add_argument("--progress", choices=("bar", "lines"),
                        help="a bar, or a line per case (default: a bar when stderr is a terminal)")
    cohort.set_defaults(handler=run_cohort_command)

    bench = commands.add_parser(
        "bench-cohort", help="benchmark: dinseg cohort on 1 and 2 workers and a loopback cluster against "
                             "in-process segmentation")
    bench.add_argument("--data", default="../shared/data", help="the shared data folder (default: %(default)s)")
    bench.add_argument("--cases", type=int, default=40, help="ACDC ED and ES frames (default: %(default)s)")
    bench.add_argument("--quality-variants", type=int, default=1, help="as for cohort (default: %(default)s)")
    bench.add_argument("--device", default="cpu", help="cpu, or cuda to time the same on a GPU (default: %(default)s)")
    bench.add_argument("--work", metavar="DIR", help="folder for the outputs (default: a temporary one)")
    bench.set_defaults(handler=run_bench_cohort)
