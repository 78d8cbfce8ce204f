"""A segmentation in a child process (``python -m dinseg.cli segment``): progress, log, Cancel.

No MRML and no Qt: the Slicer module (through :class:`dinseg.mrml.SegmentationJob`, which writes
the input from the scene and imports the result) and any other front end drive the same object::

    job = SegmentationProcess(card, python=sys.executable)
    input_path = job.prepare()           # a temporary folder; write the image there
    job.start()
    while job.poll():                    # parse progress; True while the process runs
        show(job.fraction, job.stage, job.read_new_log_lines(), job.elapsed)
    labels = job.read_result()           # (z, y, x) or (t, z, y, x) uint8, if job.state == SUCCEEDED
    job.remove_temp_dir()

:meth:`cancel` stops the process group (SIGTERM, so the CLI removes its temporary files, then
SIGKILL) and removes the temporary folder. A failed run's one-line reason is :attr:`error`.
"""

from __future__ import annotations

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

log = logging.getLogger("dinseg")

#: the folder holding the ``dinseg`` package: PYTHONPATH of the child process
PACKAGE_PARENT = Path(__file__).resolve().parent.parent


class JobState:
    """States of a segmentation job."""

    CREATED = "created"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    FINISHED = "finished"


class SegmentationProcess:
    """``dinseg segment`` of one input file in a child process, polled without blocking.

    card: the ModelCard to run; input_name: how messages name the input (its temporary path
    is replaced by it); the other options are those of ``dinseg segment``.
    """

    ERROR_PREFIX = "dinseg: error: "

    def __init__(self, card, device: str = "auto", enhancement_method: Optional[str] = None,
                 enhancement_strength: Optional[float] = None, largest_component: Optional[bool] = None,
                 fill_holes: Optional[bool] = None, python: Optional[str] = None, temp_root: Optional[str] = None,
                 extra_args: Sequence[str] = (), input_name: str = "input volume"):
        self.card = card
        self.device = device
        self.enhancement_method = enhancement_method
        self.enhancement_strength = enhancement_strength
        self.largest_component = largest_component
        self.fill_holes = fill_holes
        self.python = python or sys.executable
        self.temp_root = temp_root
        self.extra_args = list(extra_args)
        self.input_name = input_name
        self.state = JobState.CREATED
        self.fraction = 0.0
        self.stage = ""
        self.error: Optional[str] = None
        self.returncode: Optional[int] = None
        self.log_lines: List[str] = []
        self.temp_dir: Optional[Path] = None
        self.input_path: Optional[Path] = None
        self.output_path: Optional[Path] = None
        self.process: Optional[subprocess.Popen] = None
        self._log_read = 0
        self._queue: "queue.Queue" = queue.Queue()
        self._open_streams = 0
        self._started: Optional[float] = None
        self._ended: Optional[float] = None

    # -- state -------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.state == JobState.RUNNING

    @property
    def elapsed(self) -> float:
        """Seconds since start (frozen when the process ended)."""
        if self._started is None:
            return 0.0
        return (self._ended or time.monotonic()) - self._started

    def read_new_log_lines(self) -> List[str]:
        lines = self.log_lines[self._log_read:]
        self._log_read = len(self.log_lines)
        return lines

    def command(self) -> List[str]:
        """The CLI command line (valid after :meth:`prepare`)."""
        args = [self.python, "-m", "dinseg.cli", "segment", str(self.input_path), "-o", str(self.output_path),
                "--model", str(self.card.path or self.card.name), "--device", self.device, "--progress", "json"]
        if self.enhancement_method:
            args += ["--enhance", self.enhancement_method]
        if self.enhancement_strength is not None:
            args += ["--enhance-strength", f"{self.enhancement_strength:g}"]
        for flag, value in (("largest-component", self.largest_component), ("fill-holes", self.fill_holes)):
            if value is not None:  # None: the model card's clean-up
                args.append(f"--{flag}" if value else f"--no-{flag}")
        return args + self.extra_args

    def _log(self, line: str) -> None:
        self.log_lines.append(line)

    # -- start -------------------------------------------------------------------------------
    def prepare(self, input_name: str = "input.nrrd", output_name: str = "output-labels.nrrd") -> Path:
        """Create the temporary folder; returns the path the caller writes the input image to."""
        if self.state != JobState.CREATED or self.temp_dir is not None:
            raise RuntimeError(f"the job was already prepared ({self.state})")
        self.temp_dir = Path(tempfile.mkdtemp(prefix="DINSegmentation-", dir=self.temp_root))
        self.input_path = self.temp_dir / input_name
        self.output_path = self.temp_dir / output_name
        return self.input_path

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
            total = max(int(event.get("total", 1)), 1)
            self.fraction = min(max(int(event.get("done", 0)) / total, 0.0), 1.0)
            self.stage = f"{event.get('stage', '')} {event.get('done')}/{total}"
        elif event.get("event") == "done":
            self.stage = "writing result"
            self._log(f"done in {sum((event.get('seconds') or {}).values()):.1f} s")
        else:
            self._log(line)

    def _handle_stderr(self, line: str) -> None:
        self._log(line)
        if line.startswith(self.ERROR_PREFIX):
            message = line[len(self.ERROR_PREFIX):]
            if self.input_path is not None:
                message = message.replace(str(self.input_path), self.input_name)
            self.error = message

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05) -> bool:
        """Poll until the process ends (True) or ``timeout`` seconds pass (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(interval)
        return True

    # -- result and cancel -------------------------------------------------------------------
    def read_result(self) -> np.ndarray:
        """The labels the CLI wrote: (z, y, x) or (t, z, y, x) uint8."""
        import SimpleITK as sitk

        if self.state != JobState.SUCCEEDED:
            raise RuntimeError(self.error or f"the segmentation was {self.state}")
        return sitk.GetArrayFromImage(sitk.ReadImage(str(self.output_path))).astype(np.uint8)

    def cancel(self) -> None:
        """Stop the child process (and its children) and remove the temporary folder."""
        if self.state not in (JobState.RUNNING, JobState.SUCCEEDED, JobState.CREATED):
            return
        process = self.process
        if process is not None and process.poll() is None:
            _stop_process_tree(process)
        if process is not None:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log.warning("segmentation process %d did not stop", process.pid)
            if process.poll() is not None and os.name != "nt":
                try:  # children that outlived the leader (same process group)
                    os.killpg(process.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        self.state = JobState.CANCELLED
        self.stage = "cancelled"
        self._ended = self._ended or (time.monotonic() if self._started else None)
        self.remove_temp_dir()

    def remove_temp_dir(self) -> None:
        if self.temp_dir is not None and self.temp_dir.exists():
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def _stop_process_tree(process: subprocess.Popen) -> None:
    """SIGTERM to the process group (the CLI unwinds and removes its temporary files), SIGKILL after 5 s."""
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True)
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            process.kill()
