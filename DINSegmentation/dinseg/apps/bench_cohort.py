"""``dinseg bench-cohort``: a cohort of real cine frames on Dask against segmenting them in one process.

The first N ACDC ED and ES frames of ``../shared/data`` are segmented four ways, each into a fresh
folder, all with one PyTorch thread per process: one after another in this process (one model
load; the sum of the per-case times is the reference), ``dinseg cohort``'s LocalCluster of 1 and
of 2 workers, and a real multi-process cluster on loopback (``dask scheduler`` and two
``dask worker`` processes started here). Overhead = wall time / (reference / workers) - 1: all
that a cohort adds (cluster start, the workers' imports and model loads, scheduling, the table)
against a perfect division of the in-process work over the workers. On a machine others share, the
cases themselves run slower when the load is higher: the load average (sampled as each case ends)
and the overhead against the workers' own case times (what Dask and the table add, whatever the
load) are printed beside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

from ..core.errors import InputError
from ..pipeline.cohort import LOCAL_CLUSTER_CONFIG, open_cluster, plan_cohort, read_rows, run_cohort
from ..pipeline.files import SegmenterCache, case_names, segment_file
from ..pipeline.options import SegmentOptions
from ..training.evaluate import markdown_table

def acdc_frames(data, count: int) -> List[Path]:
    """The first ``count`` ACDC ED and ES frames (patient001 frame01, patient001 frame12, ...)."""
    frames = sorted(Path(data, "acdc", "training").glob("patient*/patient*_frame??.nii.gz"))
    if len(frames) < count:
        raise InputError(f"{data}: {len(frames)} ACDC frames under acdc/training, {count} asked for")
    return frames[:count]


def in_process_row(cases: List[Path], folder: Path, variants: int, options: SegmentOptions) -> Dict[str, object]:
    """The cases one after another here, as ``dinseg segment``'s batch runs them (one model load)."""
    import torch

    torch.set_num_threads(1)
    folder.mkdir(parents=True)
    models = SegmenterCache(options)
    started = time.perf_counter()
    seconds, loads = [], []
    for name, case in zip(case_names(cases), cases):
        begun = time.perf_counter()
        segment_file(case, folder / f"{name}.seg.nrrd", options, segmenters=models, quality_variants=variants)
        seconds.append(time.perf_counter() - begun)
        loads.append(os.getloadavg()[0])
    return {"run": "in this process, one case after another (segment_file, one model load)", "workers": 1,
            "cases": len(cases), "failed": 0, "wall_s": time.perf_counter() - started, "case_s": sum(seconds),
            "load": sum(loads) / len(loads)}


def cohort_row(run: str, cases: List[Path], folder: Path, variants: int, options: SegmentOptions, workers: int,
               scheduler: Optional[str] = None, started: Optional[float] = None) -> Dict[str, object]:
    """One ``dinseg cohort`` run: from the cluster's start (``started``, else now) to the table's last write."""
    plan = plan_cohort([str(case) for case in cases], folder, options, quality_variants=variants)
    started = started or time.perf_counter()
    loads = []
    with open_cluster(scheduler, workers, timeout_s=60) as client:
        ready = time.perf_counter() - started
        counts = run_cohort(plan, client, lambda row, counts: loads.append(os.getloadavg()[0]))
    wall = time.perf_counter() - started
    rows = read_rows(folder / "cohort.csv").values()
    return {"run": run, "workers": workers, "cases": counts.total, "failed": counts.by_status["failed"],
            "wall_s": wall, "start_s": ready, "case_s": sum(float(row["seconds"] or 0) for row in rows),
            "load": sum(loads) / len(loads)}


@contextlib.contextmanager
def loopback_cluster(workers: int, timeout_s: float = 120.0) -> Iterator[str]:
    """``dask scheduler`` and ``workers`` one-thread ``dask worker`` processes on 127.0.0.1, started here
    with the environment an embedded cluster gives its workers; yields the scheduler's address and
    ends the processes after."""
    folder = Path(tempfile.mkdtemp(prefix="dinseg-loopback-"))
    scheduler_file = folder / "scheduler.json"
    prefix = "distributed.nanny.pre-spawn-environ."
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1",
                   **{key[len(prefix):]: value for key, value in LOCAL_CLUSTER_CONFIG.items() if key.startswith(prefix)}}
    command = [sys.executable, "-m", "dask"]
    quiet = {"env": environment, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    processes = [subprocess.Popen(command + ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                             "--scheduler-file", str(scheduler_file)], **quiet)]
    try:
        deadline = time.monotonic() + timeout_s
        address = None
        while address is None:
            if time.monotonic() > deadline or processes[0].poll() is not None:
                raise RuntimeError("the loopback dask scheduler did not start")
            try:
                address = json.loads(scheduler_file.read_text())["address"]
            except (OSError, ValueError, KeyError):
                time.sleep(0.2)
        processes += [subprocess.Popen(command + ["worker", address, "--host", "127.0.0.1", "--nthreads", "1",
                                                  "--nworkers", "1", "--memory-limit", "0", "--no-dashboard"],
                                       **quiet) for _ in range(workers)]
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def cohort_rows(data, count: int, variants: int, device: str = "cpu", work: Optional[str] = None,
                progress: Callable[[str], None] = lambda line: None) -> List[Dict[str, object]]:
    """The four runs' rows (see the module's docstring) on ``device``, each into a fresh folder of ``work``."""
    options = SegmentOptions(device=device, threads=1)
    cases = acdc_frames(data, count)
    root = Path(work) if work else Path(tempfile.mkdtemp(prefix="dinseg-bench-cohort-"))
    root.mkdir(exist_ok=True)
    folders = [root / f"run-{number}-{time.strftime('%H%M%S')}" for number in range(4)]
    try:
        progress(f"{count} cases, in this process")
        rows = [in_process_row(cases, folders[0], variants, options)]
        for number, workers in ((1, 1), (2, 2)):
            progress(f"LocalCluster, {workers} worker(s)")
            rows.append(cohort_row("dinseg cohort, LocalCluster", cases, folders[number], variants, options, workers))
        progress("loopback dask scheduler + 2 dask worker processes")
        started = time.perf_counter()
        with loopback_cluster(2) as address:
            rows.append(cohort_row("dinseg cohort --scheduler: dask scheduler + 2 dask worker on loopback", cases,
                                   folders[3], variants, options, 2, scheduler=address, started=started))
    finally:
        if not work:
            shutil.rmtree(root, ignore_errors=True)
    return rows


def format_cohort_table(rows: List[Dict[str, object]], count: int, variants: int, device: str = "cpu") -> str:
    reference = rows[0]["case_s"]
    header = ["run", "workers x threads", "cases (failed)", "wall (s)", "of which cluster start (s)",
              "cases/min", "sum of case times (s)", "load average", "overhead vs in-process / workers",
              "overhead vs own case times / workers"]
    table = []
    for row in rows:
        workers = row["workers"]
        table.append([row["run"], f"{workers} x 1", f"{row['cases']} ({row['failed']})",
                      f"{row['wall_s']:.1f}", f"{row['start_s']:.1f}" if "start_s" in row else "-",
                      f"{60 * row['cases'] / row['wall_s']:.1f}", f"{row['case_s']:.1f}", f"{row['load']:.1f}",
                      f"{100 * (row['wall_s'] / (reference / workers) - 1):+.1f} %",
                      f"{100 * (row['wall_s'] / (row['case_s'] / workers) - 1):+.1f} %"])
    return (f"{count} ACDC cine frames (ED and ES of the first patients), acdc-light, .seg.nrrd outputs, quality "
            f"verdict with {variants} test-time variant(s), device {device}, 1 PyTorch thread per process, "
            f"{os.cpu_count()} CPU core(s); reference: the in-process sum of case times, {reference:.1f} s\n\n"
            + markdown_table(header, table))
