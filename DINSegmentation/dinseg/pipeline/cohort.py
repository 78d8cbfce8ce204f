"""Cohorts on Dask distributed: one task per case, the models kept on each worker, one results table.

:func:`plan_cohort` lists the cases (image files, folders of cases, DICOM series folders, CSV or
text lists of paths), names their outputs as ``dinseg segment``'s batch does
(:func:`files.case_names`), takes a ``--part`` share, and finds what an earlier run finished (its
row ok or skipped, its output verified and of the recorded SHA-256). :func:`open_cluster` starts a
``LocalCluster`` or connects to a running scheduler; :func:`run_cohort` sends one task per case
(:func:`segment_case`: :func:`files.segment_file` with a per-worker :class:`files.SegmenterCache`)
and appends each finished case's row to ``OUTDIR/cohort.csv`` at once (flushed and synced), so a
killed run loses nothing finished; ``OUTDIR/cohort.parquet`` is rewritten from it at intervals and
at the end. Needs the ``cohort`` extra (``dask[distributed]``, ``pyarrow``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from ..core.errors import DinsegError, InputError, in_plain_words
from ..core.samples import resolve_input
from ..models.card import sha256_of
from .files import FORMAT_EXTENSIONS, case_name, case_names, folder_cases, refuse_overwriting_inputs
from .options import SegmentOptions

log = logging.getLogger("dinseg")

#: list files: one path a line (.txt, .list), or a CSV with an "input" or "path" column (else the first)
LIST_EXTENSIONS = (".txt", ".list", ".csv")
#: statuses of a row: segmented by this run, failed, or finished by an earlier run (its figures kept)
OK, FAILED, SKIPPED = "ok", "failed", "skipped"
#: columns every table has, in order
BASE_COLUMNS = ("case", "input", "output", "status", "error", "model", "model_version", "seconds", "worker",
                "quality", "quality_reasons", "output_sha256")
#: columns --cardiac-function adds: the phase (ED, ES or cine), reports.cardiac's figures, their verdict
CARDIAC_COLUMNS = ("phase", "lv_edv_ml", "lv_esv_ml", "lv_sv_ml", "lv_ef_percent", "rv_edv_ml", "rv_esv_ml",
                   "rv_sv_ml", "rv_ef_percent", "lv_mass_g", "cardiac_quality")
#: columns that hold text in the parquet file (the rest are numbers)
TEXT_COLUMNS = set(BASE_COLUMNS) - {"seconds"} | {"phase", "cardiac_quality"}
#: seconds between rewrites of the parquet file during a run
PARQUET_INTERVAL_S = 60.0
#: the Dask config of an embedded cluster: a case whose worker dies twice fails; glibc keeps freed
#: memory for reuse as apps.cli does (twice the network's speed on a 2-core machine)
LOCAL_CLUSTER_CONFIG = {
    "distributed.scheduler.allowed-failures": 1,
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": str(1 << 30),
}


def volume_column(structure: str) -> str:
    """'left kidney' -> 'left_kidney_ml': a structure's volume column."""
    return "_".join(structure.lower().split()) + "_ml"


def read_list_file(path: Path) -> List[str]:
    """The paths a list file names, relative ones taken from the list's folder. A ``.csv`` gives its
    "input" or "path" column (else its first); a text file one path a line ("#" comments, blanks skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read this list of cases ({error})") from None
    if path.name.lower().endswith(".csv"):
        rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
        if not rows:
            return []
        header = [cell.strip().lower() for cell in rows[0]]
        column = next((header.index(name) for name in ("input", "path") if name in header), None)
        entries = [row[column or 0].strip() for row in (rows[1:] if column is not None else rows) if row]
    else:
        entries = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [str(Path(entry) if Path(entry).is_absolute() else path.parent / entry) for entry in entries if entry]


def is_list_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(LIST_EXTENSIONS)


def list_cases(inputs: Sequence[str]) -> Tuple[List[Path], List[str]]:
    """(case paths, paths a list file names that do not exist), each once, in the order given.

    An input is an image file, a DICOM series folder, a folder of cases or a list file; one on the
    command line that does not exist is an InputError (before any work)."""
    cases: List[Path] = []
    missing: List[str] = []
    seen = set()

    def add(source: Path) -> None:
        if source.is_dir() and not any(not entry.name.startswith(".") for entry in source.iterdir()):
            return  # an empty folder holds no case
        for path in (folder_cases(source) if source.is_dir() else []) or [source]:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                cases.append(path)

    for name in inputs:
        source = resolve_input(name)
        if not source.exists():
            raise InputError(f"{source}: no such file or folder")
        if not is_list_file(source):
            add(source)
            continue
        for entry in read_list_file(source):
            path = Path(entry)
            if path.exists():
                add(path)
            elif entry not in missing:
                missing.append(entry)
    return cases, missing


def parse_part(text: str) -> Tuple[int, int]:
    """'2/8' -> (2, 8): the K-th of N shares, K from 1."""
    share, _, count = text.partition("/")
    if not (share.strip().isdigit() and count.strip().isdigit()) or not 1 <= int(share) <= int(count):
        raise InputError(f"--part takes K/N with 1 <= K <= N (the K-th of N shares), got {text!r}")
    return int(share), int(count)


def part_of(items: Sequence, part: Tuple[int, int]) -> list:
    """The ``part`` = (K, N) share of ``items``: every N-th item from the K-th (the N shares cover each once)."""
    share, count = part
    return [item for index, item in enumerate(items) if index % count == share - 1]


def output_verifies(path: Path, sha256: str) -> bool:
    """Whether ``path`` is whole (core.io.verify_written) and is the file a row recorded (its SHA-256)."""
    from ..core.io import IncompleteFile, OUTPUT_EXTENSIONS, verify_written

    try:
        extension = next(e for e in OUTPUT_EXTENSIONS if path.name.lower().endswith(e))
        verify_written(path, extension)
        return bool(sha256) and sha256_of(path) == sha256
    except (OSError, StopIteration, IncompleteFile):
        return False


@dataclass(frozen=True)
class CaseTask:
    """What a worker needs for one case: segment ``source`` into ``output`` with ``options``."""

    name: str
    source: str
    output: str
    options: SegmentOptions
    quality_variants: int = 1
    cardiac: bool = False  # a cine's cardiac function on the worker (pairs are read back by the client)


#: per worker process: one SegmenterCache per options, so each model loads once and stays
_WORKER_MODELS: Dict[SegmentOptions, object] = {}
_WORKER_LOCK = threading.Lock()


def _worker_models(options: SegmentOptions):
    from .files import SegmenterCache

    with _WORKER_LOCK:
        if options not in _WORKER_MODELS:
            if options.threads:
                import torch

                torch.set_num_threads(options.threads)
            _WORKER_MODELS[options] = SegmenterCache(options)
        return _WORKER_MODELS[options]


def _worker_name() -> str:
    try:
        from distributed import get_worker

        worker = get_worker()
        return str(worker.name if worker.name != worker.address else worker.address)
    except (ImportError, ValueError):
        return "this process"


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def segment_case(task: CaseTask) -> Dict[str, object]:
    """Run on a worker: :func:`files.segment_file` for one case with this worker's models; the row of
    the table (status "failed" with the one-line reason for a DinsegError; other errors raise, so
    Dask retries the case)."""
    from ..reports.cardiac import cardiac_function, frame_volumes
    from .files import segment_file

    started = time.perf_counter()
    row: Dict[str, object] = {"case": task.name, "input": task.source, "output": task.output,
                              "worker": _worker_name()}
    try:
        result = segment_file(task.source, task.output, task.options, segmenters=_worker_models(task.options),
                              quality_variants=task.quality_variants)
    except DinsegError as error:
        return {**row, "status": FAILED, "error": one_line(in_plain_words(str(error))),
                "seconds": time.perf_counter() - started}
    card = result.card
    row.update(status=OK, model=card.name, model_version=card.version, output_sha256=sha256_of(result.output))
    if result.quality is not None:
        verdict = result.quality.to_dict()  # the case's and each structure's problems, then the checks not run
        row.update(quality=result.quality.status, quality_reasons=" | ".join(verdict["problems"] + verdict["notes"]))
    if result.labels.ndim == 3:
        volumes = frame_volumes([result.labels], {info.name: info.value for info in card.labels},
                                result.geometry.voxel_ml)
        row.update({volume_column(name): values[0] for name, values in volumes.items()})
    elif task.cardiac:
        try:
            function = cardiac_function(list(result.labels), result.geometry.spacing, card.labels)
            row.update(cardiac_row(function, "cine", [row.get("quality")]))
        except DinsegError as error:
            row["error"] = f"cardiac function: {one_line(error)}"
    row["seconds"] = time.perf_counter() - started
    return row


def cardiac_row(function, phase: str, verdicts: Sequence[Optional[str]]) -> Dict[str, object]:
    """The --cardiac-function columns of a reports.cardiac.CardiacFunction; its quality is "review"
    when a phase's verdict or the function's own checks (reports.quality) say so."""
    from ..reports.quality import REVIEW, OK as QUALITY_OK, cardiac_function_checks

    reasons = cardiac_function_checks(function.figures, function.volumes_ml, function.ed_frame, function.es_frame)
    review = bool(reasons) or REVIEW in verdicts
    return {"phase": phase, **{key: function.figures.get(key) for key in CARDIAC_COLUMNS[1:-1]},
            "cardiac_quality": REVIEW if review else QUALITY_OK}


def pair_function_rows(rows: Sequence[Dict[str, object]]) -> List[Dict[str, object]]:
    """Two ok rows of one folder (an ED/ES pair): both with the cardiac function read from their outputs
    (reports.cardiac, ED and ES the frames of largest and smallest LV volume), phases named; on an error
    the rows unchanged but for the reason."""
    from ..models import find_model
    from ..reports.cardiac import cardiac_function
    from ..reports.segfile import read_labels

    try:
        frames, grids = [], []
        for row in rows:
            labels, geometry, _, infos = read_labels(row["output"], find_model(str(row["model"])).labels)
            frames.append(labels)
            grids.append(geometry)
        if not grids[0].matches(grids[1]):
            raise InputError("ED and ES lie on different grids")
        function = cardiac_function(frames, grids[0].spacing, infos)
    except Exception as error:  # e.g. a DICOM SEG output, a model no longer installed: the cohort goes on
        return [{**row, "error": f"cardiac function: {one_line(error)}"} for row in rows]
    verdicts = [row.get("quality") for row in rows]
    return [{**row, **cardiac_row(function, "ED" if index == function.ed_frame else "ES", verdicts)}
            for index, row in enumerate(rows)]


def format_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e6 else f"{value:.1f}"
    return str(value)


class CohortTable:
    """``OUTDIR/<name>.csv``, a row appended (flushed and synced) per finished case, and ``<name>.parquet``
    rewritten from it. A later row for the same input replaces an earlier one (:meth:`finish` keeps the last)."""

    def __init__(self, folder: Path, columns: Sequence[str], name: str = "cohort"):
        self.csv = Path(folder) / f"{name}.csv"
        self.parquet = Path(folder) / f"{name}.parquet"
        self.columns = list(columns)
        self.parquet_written = time.monotonic()

    def start(self, rows: Sequence[Dict[str, object]]) -> None:
        """Write the header and ``rows`` (the rows kept from an earlier run), replacing any old table."""
        self._rewrite(rows)

    def append(self, row: Dict[str, object]) -> None:
        buffer = io.StringIO()
        csv.DictWriter(buffer, fieldnames=self.columns, extrasaction="ignore").writerow(
            {key: format_cell(value) for key, value in row.items()})
        with open(self.csv, "a", encoding="utf-8", newline="") as stream:
            stream.write(buffer.getvalue())
            stream.flush()
            os.fsync(stream.fileno())
        if time.monotonic() - self.parquet_written > PARQUET_INTERVAL_S:
            self.write_parquet()

    def rows(self) -> List[Dict[str, str]]:
        """The table's rows, the last one per input."""
        return list(read_rows(self.csv).values())

    def finish(self) -> None:
        """One row per input in the CSV, and the parquet file from it."""
        self._rewrite(self.rows())
        self.write_parquet()

    def _rewrite(self, rows) -> None:
        from ..core.io import atomic_output

        with atomic_output(self.csv) as temporary:
            with open(temporary, "w", encoding="utf-8", newline="") as stream:
                writer = csv.DictWriter(stream, fieldnames=self.columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows({key: format_cell(value) for key, value in row.items()} for row in rows)

    def write_parquet(self) -> None:
        """The CSV's rows (the last per input) as parquet, text columns as strings and the rest as numbers."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ..core.io import atomic_output

        rows = self.rows()
        arrays = []
        for column in self.columns:
            values = [row.get(column, "") for row in rows]
            if column in TEXT_COLUMNS:
                arrays.append(pa.array(values, pa.string()))
            else:
                arrays.append(pa.array([float(value) if value else None for value in values], pa.float64()))
        with atomic_output(self.parquet) as temporary:
            pq.write_table(pa.Table.from_arrays(arrays, names=self.columns), temporary)
            pq.read_metadata(temporary)  # whole: its footer reads back
        self.parquet_written = time.monotonic()


def read_rows(path: Path) -> Dict[str, Dict[str, str]]:
    """input -> the last row for it in a table's CSV ({} when there is none); a last line cut short by a
    killed run is left out."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    if not text.endswith("\n"):
        text = text[:text.rfind("\n") + 1]
    return {row["input"]: row for row in csv.DictReader(io.StringIO(text)) if row.get("input")}


@dataclass
class CohortPlan:
    """What a run will do: ``tasks`` to send, ``kept`` rows of cases an earlier run finished (status
    skipped), ``failed`` rows of paths a list names that do not exist; ``pairs``: folder -> the cases
    of an ED/ES pair (with --cardiac-function)."""

    folder: Path
    table_name: str
    columns: List[str]
    tasks: List[CaseTask]
    kept: List[Dict[str, object]]
    failed: List[Dict[str, object]]
    pairs: Dict[str, List[str]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.tasks) + len(self.kept) + len(self.failed)


def _check_output_folder(folder: Path, inputs: Sequence[str], cases: Sequence[Path]) -> None:
    """Before any work: the output folder is not an input or inside one, holds no case, and is writable."""
    from ..core.io import check_output_path

    lists = [resolve_input(name) for name in inputs if is_list_file(resolve_input(name))]
    refuse_overwriting_inputs([folder], [name for name in inputs if resolve_input(name) not in lists])
    target = folder.resolve()
    for listed in lists:
        if listed.resolve().parent == target and listed.name.lower().startswith("cohort"):
            raise InputError(f"{listed}: the list of cases lies where the table goes ({folder}/cohort*); "
                             "move it or choose another output folder")
    for case in cases:
        if case.resolve().parent == target:
            raise InputError(f"{folder}: is the folder of the input {case}; choose an output folder of its own")
    if folder.is_dir():
        check_output_path(folder / "cohort.csv", extensions=(".csv",))
    elif folder.exists():
        raise InputError(f"{folder}: is a file, not a folder")
    else:
        check_output_path(folder.parent / "cohort.csv", extensions=(".csv",))


def plan_cohort(inputs: Sequence[str], folder, options: SegmentOptions = SegmentOptions(), *,
                output_format: str = "seg.nrrd", quality_variants: int = 1, cardiac: bool = False,
                part: Optional[Tuple[int, int]] = None) -> CohortPlan:
    """List and check everything before any work (InputError otherwise): the cases, their output names,
    the ``part`` = (K, N) share, the output folder, the model, and what an earlier run finished."""
    from ..models import find_model, list_models

    if not inputs:
        raise InputError("no inputs: give image files, folders of cases, DICOM folders or a list file")
    if output_format not in FORMAT_EXTENSIONS:
        raise InputError(f"--format must be one of {', '.join(FORMAT_EXTENSIONS)}, got {output_format!r}")
    folder = Path(folder)
    cases, missing = list_cases(inputs)
    names = case_names(cases)
    _check_output_folder(folder, inputs, cases)
    everything = [("case", path, name) for path, name in zip(cases, names)] + [("missing", entry, None)
                                                                                 for entry in missing]
    chosen = part_of(everything, part) if part else everything
    if not chosen:
        raise InputError("no cases to segment: the inputs hold no images" if not everything else
                         f"no cases in share {part[0]}/{part[1]} of {len(everything)}")
    cards = [find_model(options.model)] if options.model else list_models()
    structures = list(dict.fromkeys(volume_column(info.name) for card in cards for info in card.labels))
    columns = list(BASE_COLUMNS) + (list(CARDIAC_COLUMNS) if cardiac else []) + structures
    table_name = "cohort" if not part else f"cohort-part-{part[0]}-of-{part[1]}"
    earlier: Dict[str, Dict[str, str]] = {}
    for path in sorted(folder.glob("cohort*.csv")) if folder.is_dir() else []:
        earlier.update(read_rows(path))
    extension = FORMAT_EXTENSIONS[output_format]
    tasks, kept, failed = [], [], []
    pairs: Dict[str, List[str]] = {}
    for kind, path, name in chosen:
        source = os.path.abspath(path)
        if kind == "missing":
            failed.append({"case": case_name(Path(path)), "input": source, "status": FAILED,
                           "error": f"{path}: no such file or folder (named in a list of cases)"})
            continue
        output = Path(os.path.abspath(folder / f"{name}{extension}"))
        if cardiac and path.is_file():
            pairs.setdefault(os.path.dirname(source), []).append(source)
        row = earlier.get(source)
        if row and row.get("status") in (OK, SKIPPED) and row.get("output") == str(output) \
                and output_verifies(output, row.get("output_sha256", "")):
            kept.append({**row, "status": SKIPPED, "error": ""})
        else:
            tasks.append(CaseTask(name, source, str(output), options, quality_variants, cardiac))
    pairs = {key: members for key, members in pairs.items() if len(members) == 2}
    return CohortPlan(folder, table_name, columns, tasks, kept, failed, pairs)


def dask_missing() -> Optional[str]:
    """None when the cohort extra is installed, else the one-line reason and the command that installs it."""
    from ..core.dependencies import requirement, unmet_for

    missing = unmet_for("cohort")
    if not missing:
        return None
    return (f"dinseg cohort needs {', '.join(requirement(name) for name, _ in missing)}: "
            "pip install 'dinseg[cohort]' (or pip install -e \".[cohort]\" in a clone)")


@contextlib.contextmanager
def _workers_ignore_ctrl_c() -> Iterator[None]:
    """Processes started inside ignore SIGINT (they inherit it), so Ctrl-C reaches this process alone,
    which then cancels the cases left and closes the cluster cleanly."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def open_cluster(scheduler: Optional[str] = None, workers: int = 1, timeout_s: float = 10.0) -> Iterator[object]:
    """A dask.distributed Client: of the scheduler at ``scheduler`` (InputError, before any work, when it
    cannot be reached in ``timeout_s``), or of a LocalCluster of ``workers`` processes, one case at a
    time each (PyTorch's threads per worker: SegmentOptions.threads, set by :func:`segment_case`)."""
    reason = dask_missing()
    if reason:
        raise InputError(reason)
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout=f"{timeout_s}s")
        except (OSError, TimeoutError, ValueError) as error:
            raise InputError(f"cannot reach the Dask scheduler at {scheduler} ({one_line(error) or 'timed out'}); "
                             "start one with 'dask scheduler', or leave out --scheduler for a cluster on this "
                             "machine") from None
        try:
            yield client
        finally:
            client.close()
        return
    with dask.config.set(LOCAL_CLUSTER_CONFIG), _workers_ignore_ctrl_c():  # its web server on a free port
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit=0,
                               dashboard_address=":0", silence_logs=logging.ERROR)
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@dataclass
class CohortCounts:
    """Cases finished so far by status (ok, failed, skipped), of ``total``, and when the run began."""

    total: int
    by_status: Dict[str, int] = field(default_factory=lambda: {OK: 0, FAILED: 0, SKIPPED: 0})
    started: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> int:
        return sum(self.by_status.values())


def has_dashboard() -> bool:
    """Whether Dask's dashboard can run here (it needs bokeh)."""
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


def dashboard_link(client) -> Optional[str]:
    """The cluster's dashboard, where bokeh is installed (Dask names a link even when it serves none)."""
    return client.dashboard_link if has_dashboard() else None


RowCallback = Callable[[Dict[str, object], CohortCounts], None]


def _failed_task_row(task: CaseTask, error: BaseException) -> Dict[str, object]:
    """The row of a task that raised twice or whose workers died twice."""
    from distributed import KilledWorker

    if isinstance(error, KilledWorker):
        reason = "its worker died twice while segmenting it (out of memory?)"
    else:
        reason = f"{type(error).__name__}: {one_line(error)}"
    return {"case": task.name, "input": task.source, "output": task.output, "status": FAILED, "error": reason}


def run_cohort(plan: CohortPlan, client=None, on_row: Optional[RowCallback] = None) -> CohortCounts:
    """Run ``plan`` on ``client`` (None: nothing is left to segment), writing the table as cases finish.

    Tasks that raise are retried once; a case whose worker dies is sent to another. On an interrupt
    the tasks left are cancelled and the table keeps every finished case. Returns the counts.
    """
    plan.folder.mkdir(exist_ok=True)
    table = CohortTable(plan.folder, plan.columns, plan.table_name)
    table.start(plan.kept + plan.failed)
    counts = CohortCounts(plan.total)
    finished: Dict[str, Dict[str, object]] = {}
    pair_of = {member: members for members in plan.pairs.values() for member in members}

    def record(row: Dict[str, object], written: bool = False) -> None:
        if not written:
            table.append(row)
        counts.by_status[str(row["status"])] += 1
        finished[str(row["input"])] = row
        if on_row:
            on_row(row, counts)
        members = pair_of.get(str(row["input"]), [])
        rows = [finished.get(member, {}) for member in members]
        if rows and all(r.get("status") in (OK, SKIPPED) for r in rows) and not all(r.get("phase") for r in rows):
            for updated in pair_function_rows(rows):
                table.append(updated)
                finished[str(updated["input"])] = updated

    futures = {}
    try:
        for row in plan.kept + plan.failed:
            record(row, written=True)
        if plan.tasks:
            from distributed import as_completed

            futures = {client.submit(segment_case, task, retries=1, pure=False): task for task in plan.tasks}
            for future in as_completed(futures):
                try:
                    row = future.result()
                except Exception as error:  # raised twice, or killed two workers: the case fails, the rest go on
                    row = _failed_task_row(futures[future], error)
                record(row)
                future.release()
    finally:
        if futures and client is not None:
            client.cancel([future for future in futures if not future.done()])
        table.finish()
    return counts
