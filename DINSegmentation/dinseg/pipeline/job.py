"""A segmentation in a child process (``python -m dinseg.apps.cli segment``): progress, log, Cancel.

No MRML and no Qt: the Slicer module (through :class:`dinseg.slicer.logic.SegmentationJob`, which writes
the input from the scene and imports the result) and any other front end drive the same object::

    job = SegmentationProcess(card, python=sys.executable)
    input_path = job.prepare()           # a temporary folder; write the image there
    job.start()
    while job.poll():                    # parse progress; True while the process runs
        show(job.fraction, job.stage, job.read_new_log_lines(), job.elapsed)
    labels = job.read_result()           # (z, y, x) or (t, z, y, x) uint8, if job.state == SUCCEEDED
    job.remove_temp_dir()

:meth:`cancel` returns at once: it sends SIGTERM to the process group (so the CLI removes its
temporary files) and a background reaper kills the group after a grace period and removes the
temporary folder; a second :meth:`cancel` (or :meth:`kill`) kills the group at once. A failed run's one-line reason is :attr:`error`.
"""

from __future__ import annotations

import abc
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .options import SegmentOptions

log = logging.getLogger("dinseg")

#: the folder holding the ``dinseg`` package: PYTHONPATH of the child process
PACKAGE_PARENT = Path(__file__).resolve().parents[2]


class JobState:
    """States of a segmentation job."""

    CREATED = "created"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    FINISHED = "finished"


class SegmentationRun(abc.ABC):
    """What every background segmentation shares, whoever runs it: a temporary folder for the input
    and the labels, state, progress, log, elapsed time, waiting and the result.

    Subclasses start the work (:meth:`start`) and handle its messages (:meth:`poll`).
    """

    ERROR_PREFIX = "dinseg: error: "

    def __init__(self, card, options: Optional[SegmentOptions], temp_root: Optional[str], input_name: str):
        self.card = card
        self.options = (options or SegmentOptions()).replace(model=str(card.path or card.name))
        self.temp_root = temp_root
        self.input_name = input_name
        self.state = JobState.CREATED
        self.fraction = 0.0
        self.stage = ""
        self.error: Optional[str] = None
        self.log_lines: List[str] = []
        self.temp_dir: Optional[Path] = None
        self.input_path: Optional[Path] = None
        self.output_path: Optional[Path] = None
        self._log_read = 0
        self._started: Optional[float] = None
        self._ended: Optional[float] = None

    @property
    def running(self) -> bool:
        return self.state == JobState.RUNNING

    @property
    def elapsed(self) -> float:
        """Seconds since start (frozen when the run ended)."""
        if self._started is None:
            return 0.0
        return (self._ended or time.monotonic()) - self._started

    def read_new_log_lines(self) -> List[str]:
        lines = self.log_lines[self._log_read:]
        self._log_read = len(self.log_lines)
        return lines

    def prepare(self, input_name: str = "input.nrrd", output_name: str = "output-labels.nrrd") -> Path:
        """Create the temporary folder; returns the path the caller writes the input image to."""
        if self.state != JobState.CREATED or self.temp_dir is not None:
            raise RuntimeError(f"the job was already prepared ({self.state})")
        self.temp_dir = Path(tempfile.mkdtemp(prefix="DINSegmentation-", dir=self.temp_root))
        self.input_path = self.temp_dir / input_name
        self.output_path = self.temp_dir / output_name
        return self.input_path

    @abc.abstractmethod
    def poll(self) -> bool:
        """Handle the run's messages so far; True while it runs. Call it often (GUI timer, loop)."""

    def _progress(self, event: Dict[str, Any]) -> None:
        """A {"stage", "done", "total"} progress event of ``dinseg segment --progress json``."""
        total = max(int(event.get("total", 1)), 1)
        self.fraction = min(max(int(event.get("done", 0)) / total, 0.0), 1.0)
        self.stage = f"{event.get('stage', '')} {event.get('done')}/{total}"

    def _user_message(self, message: str) -> str:
        """An error message naming the input as the user knows it, not by its temporary path."""
        return message.replace(str(self.input_path), self.input_name) if self.input_path is not None else message

    def wait(self, timeout: Optional[float] = None, interval: float = 0.02) -> bool:
        """Poll until the run ends (True) or ``timeout`` seconds pass (False); not for a GUI thread."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(interval)
        return True

    def read_result(self) -> np.ndarray:
        """The labels written: (z, y, x) or (t, z, y, x) uint8."""
        import SimpleITK as sitk

        if self.state != JobState.SUCCEEDED:
            raise RuntimeError(self.error or f"the segmentation was {self.state}")
        return sitk.GetArrayFromImage(sitk.ReadImage(str(self.output_path))).astype(np.uint8)

    def remove_temp_dir(self) -> None:
        if self.temp_dir is not None and self.temp_dir.exists():
            shutil.rmtree(self.temp_dir, ignore_errors=True)


class SegmentationProcess(SegmentationRun):
    """``dinseg segment`` of one input file in a child process, polled without blocking.

    card: the ModelCard to run (it replaces ``options.model``); options: the
    :class:`~dinseg.pipeline.options.SegmentOptions`, passed as ``dinseg segment``'s flags;
    input_name: how messages name the input (its temporary path is replaced by it).
    """

    #: seconds a cancelled child has to stop after SIGTERM before its process group is killed
    GRACE_SECONDS = 5.0

    def __init__(self, card, options: Optional[SegmentOptions] = None, python: Optional[str] = None,
                 temp_root: Optional[str] = None, extra_args: Sequence[str] = (), input_name: str = "input volume"):
        super().__init__(card, options, temp_root, input_name)
        self.python = python or sys.executable
        self.extra_args = list(extra_args)
        self.returncode: Optional[int] = None
        self.process: Optional[subprocess.Popen] = None
        self._queue: "queue.Queue" = queue.Queue()
        self._open_streams = 0
        self._reaper: Optional[threading.Thread] = None

    def command(self) -> List[str]:
        """The CLI command line (valid after :meth:`prepare`)."""
        args = [self.python, "-m", "dinseg.apps.cli", "segment", str(self.input_path), "-o", str(self.output_path),
                "--progress", "json", *self.options.to_cli_args()]
        return args + self.extra_args

    def _log(self, line: str) -> None:
        self.log_lines.append(line)

    # -- start -------------------------------------------------------------------------------
    def start(self) -> "SegmentationProcess":
        """Launch the CLI on the prepared input (removes the temporary folder if that fails)."""
        if self.state != JobState.CREATED or self.input_path is None:
            raise RuntimeError(f"the job cannot start ({self.state}; prepare() and write the input first)")
        try:
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_PARENT)] +
                                                ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
            env["PYTHONUNBUFFERED"] = "1"
            kwargs: Dict[str, Any] = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                          text=True, encoding="utf-8", errors="replace", bufsize=1, env=env,
                                          cwd=str(self.temp_dir))
            if os.name == "nt":
                kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | 0x08000000  # CREATE_NO_WINDOW
            else:
                kwargs["start_new_session"] = True  # own process group: cancel stops launcher and children
            command = self.command()
            self._log("$ " + " ".join(command))
            self._started = time.monotonic()
            self.process = subprocess.Popen(command, **kwargs)
        except Exception:
            self.remove_temp_dir()
            raise
        self.state = JobState.RUNNING
        self.stage = "starting"
        for stream, tag in ((self.process.stdout, "out"), (self.process.stderr, "err")):
            self._open_streams += 1
            threading.Thread(target=self._reader, args=(stream, tag), daemon=True).start()
        return self

    def _reader(self, stream, tag: str) -> None:
        try:
            for line in stream:
                self._queue.put((tag, line.rstrip("\r\n")))
        except (OSError, ValueError):
            pass
        finally:
            self._queue.put((tag, None))

    # -- poll --------------------------------------------------------------------------------
    def poll(self) -> bool:
        """Handle the child's output so far; True while it runs. Call it often (GUI timer, loop)."""
        if self.state != JobState.RUNNING:
            return False
        while True:
            try:
                tag, line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._open_streams -= 1
            elif tag == "out":
                self._handle_stdout(line)
            else:
                self._handle_stderr(line)
        if self._open_streams > 0 or self.process.poll() is None:
            return True
        self._ended = time.monotonic()
        self.returncode = self.process.wait()
        if self.returncode == 0 and self.output_path is not None and self.output_path.is_file():
            self.state = JobState.SUCCEEDED
            self.fraction = 1.0
            self.stage = "done"
        else:
            self.state = JobState.FAILED
            if not self.error:
                tail = [line for line in self.log_lines if line.strip()][-1:]
                self.error = (f"the segmentation process ended with status {self.returncode}"
                              + (f": {tail[0]}" if tail else ""))
            self.stage = "failed"
            self.remove_temp_dir()
        return False

    def _handle_stdout(self, line: str) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            self._log(line)
            return
        if not isinstance(event, dict):
            self._log(line)
        elif event.get("event") == "progress":
            self._progress(event)
        elif event.get("event") == "done":
            self.stage = "writing result"
            self._log(f"done in {sum((event.get('seconds') or {}).values()):.1f} s")
        else:
            self._log(line)

    def _handle_stderr(self, line: str) -> None:
        self._log(line)
        if line.startswith(self.ERROR_PREFIX):
            self.error = self._user_message(line[len(self.ERROR_PREFIX):])

    # -- cancel ------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop the run and return at once: the owner (a GUI thread) never waits for the child.

        The first call sends SIGTERM to the child's process group (the CLI unwinds and removes its
        temporary files) and leaves the rest to a background reaper: SIGKILL after
        :attr:`GRACE_SECONDS`, then the temporary folder is removed. A second call (a second
        Cancel, closing the scene, quitting) kills the group at once.
        """
        if self.state == JobState.CANCELLED:
            self.kill()
            return
        if self.state not in (JobState.RUNNING, JobState.SUCCEEDED, JobState.CREATED):
            return
        self.state = JobState.CANCELLED
        self.stage = "cancelled"
        self._ended = self._ended or (time.monotonic() if self._started else None)
        process = self.process
        if process is None or process.poll() is not None:
            self.remove_temp_dir()
            return
        _signal_group(process, signal.SIGTERM if os.name != "nt" else None)
        self._reaper = threading.Thread(target=self._reap, args=(process,), daemon=True)
        self._reaper.start()

    def kill(self) -> None:
        """Kill the child's process group now (no waiting); the reaper removes the temporary folder."""
        if self.process is not None and self.process.poll() is None:
            _signal_group(self.process, signal.SIGKILL if os.name != "nt" else None)
        if self.state == JobState.RUNNING:
            self.cancel()

    def _reap(self, process: subprocess.Popen) -> None:
        try:
            process.wait(timeout=self.GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            log.warning("segmentation process %d did not stop in %g s: killed", process.pid, self.GRACE_SECONDS)
            _signal_group(process, signal.SIGKILL if os.name != "nt" else None)
            process.wait()
        if os.name != "nt":
            try:  # children that outlived the leader (same process group)
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.remove_temp_dir()

    def ended(self, timeout: Optional[float] = None) -> bool:
        """Whether the child process is gone and its temporary folder removed (waits up to ``timeout``
        seconds for a cancelled run's reaper; for tests and shutdown, not for a GUI thread)."""
        if self._reaper is not None:
            self._reaper.join(timeout)
            if self._reaper.is_alive():
                return False
        return (self.process is None or self.process.poll() is not None) and \
            (self.temp_dir is None or not self.temp_dir.exists())

def _signal_group(process: subprocess.Popen, signal_number) -> None:
    """Send ``signal_number`` to the child's process group (Windows: end the process tree)."""
    if os.name == "nt":
        subprocess.Popen(["taskkill", "/F", "/T", "/PID", str(process.pid)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
        return
    try:
        os.killpg(process.pid, signal_number)
    except (ProcessLookupError, PermissionError):
        try:
            process.send_signal(signal_number)
        except ProcessLookupError:
            pass
