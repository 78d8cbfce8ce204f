"""The warm engine: a long-lived child process that keeps models loaded between requests.

A front end (the Slicer module, the web page) starts one :class:`Worker` and sends it requests;
each request is a :class:`WorkerTask` polled without blocking, with the same state, progress,
error and result as :class:`~dinseg.pipeline.job.SegmentationProcess` (which starts a new
process for every run and pays Python's start, PyTorch's import and the model load each time)::

    worker = Worker()                                   # started on the first request
    task = worker.segment(card, options)                # a task with its own temporary folder
    write_image(task.prepare(), ...)                    # write the input there
    task.start()
    while task.poll():
        show(task.fraction, task.stage)
    labels = task.read_result()

Protocol: one JSON object per line. Requests on the child's stdin: ``{"id": N, "op":
"segment", "input": PATH, "output": PATH, "options": {...}}``; replies on its stdout:
``{"id": N, "event": "progress", "stage": ..., "done": ..., "total": ...}``, then ``{"id": N,
"event": "done", "seconds": {...}}`` or ``{"id": N, "event": "error", "message": ONE LINE}``.
The child has no MRML and no Qt. It ends when its owner closes stdin or dies (Linux: a
parent-death signal); :meth:`WorkerTask.cancel` ends a running request by stopping the whole
child (the next request starts a fresh one), as a Cancel must stop work at once.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from typing import Any, Dict, Optional

from .job import PACKAGE_PARENT, JobState, SegmentationRun
from .options import SegmentOptions

log = logging.getLogger("dinseg")


# --------------------------------------------------------------------------------------------
# the child
# --------------------------------------------------------------------------------------------
def serve(requests, replies) -> None:
    """Answer JSON-line requests from ``requests`` on ``replies`` until ``requests`` ends."""
    from ..core.errors import DinsegError
    from .files import SegmenterCache, segment_file

    caches: Dict[SegmentOptions, SegmenterCache] = {}

    def reply(**fields) -> None:
        replies.write(json.dumps(fields) + "\n")
        replies.flush()

    for line in requests:
        if not line.strip():
            continue
        request_id = None
        try:
            request = json.loads(line)
            request_id = request.get("id")
            if request.get("op") != "segment":
                raise ValueError(f"unknown request {request.get('op')!r}")
            options = SegmentOptions(**request.get("options", {}))
            key = options.replace(frame=None, strict=False)
            if key not in caches:
                caches.clear()  # one set of loaded models at a time: free the previous ones first
                caches[key] = SegmenterCache(options)
            # the quality checks without test-time variants: a GUI's Segment pays no second network pass
            result = segment_file(request["input"], request["output"], options, segmenters=caches[key],
                                  quality_variants=0,
                                  progress=lambda stage, done, total: reply(id=request_id, event="progress",
                                                                            stage=stage, done=done, total=total))
            reply(id=request_id, event="done", seconds=result.timer.seconds, model=result.card.name,
                  quality=result.quality.to_dict() if result.quality is not None else None)
        except DinsegError as error:
            reply(id=request_id, event="error", message=str(error))
        except Exception as error:  # a bug must not end the warm engine silently
            log.exception("request failed")
            reply(id=request_id, event="error", message=f"{type(error).__name__}: {error}")


def _end_with_parent() -> None:
    """Linux: SIGTERM when the owner dies, whatever the way (prctl PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def main() -> int:
    _end_with_parent()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    if len(sys.argv) > 1:
        import torch

        torch.set_num_threads(int(sys.argv[1]))
    serve(sys.stdin, sys.stdout)
    return 0


# --------------------------------------------------------------------------------------------
# the owner's side
# --------------------------------------------------------------------------------------------
class Worker:
    """The owner's handle on one warm child process (started on first use, restarted after a cancel).

    python: the interpreter (Slicer's PythonSlicer inside Slicer); threads: CPU threads for the
    child (None: PyTorch's default); temp_root: where tasks make their temporary folders.
    """

    def __init__(self, python: Optional[str] = None, threads: Optional[int] = None,
                 temp_root: Optional[str] = None):
        self.python = python or sys.executable
        self.threads = threads
        self.temp_root = temp_root
        self.process: Optional[subprocess.Popen] = None
        self._replies: "queue.Queue" = queue.Queue()
        self._next_id = 0
        self.busy: Optional["WorkerTask"] = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _ensure_started(self) -> None:
        if self.running:
            return
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_PARENT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                                                     else []))
        env["PYTHONUNBUFFERED"] = "1"
        command = [self.python, "-m", "dinseg.pipeline.worker"] + ([str(self.threads)] if self.threads else [])
        kwargs: Dict[str, Any] = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, encoding="utf-8", errors="replace", bufsize=1, env=env)
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | 0x08000000  # CREATE_NO_WINDOW
        else:
            kwargs["start_new_session"] = True
        self.process = subprocess.Popen(command, **kwargs)
        self._replies = queue.Queue()
        process, replies = self.process, self._replies
        threading.Thread(target=_read_lines, args=(process.stdout, replies, "out"), daemon=True).start()
        threading.Thread(target=_read_lines, args=(process.stderr, replies, "err"), daemon=True).start()

    def segment(self, card, options: Optional[SegmentOptions] = None, input_name: str = "input volume"
                ) -> "WorkerTask":
        """A segmentation task for ``card`` (which replaces ``options.model``), not started."""
        options = (options or SegmentOptions()).replace(model=str(card.path or card.name))
        return WorkerTask(self, card, options, input_name)

    def _send(self, task: "WorkerTask") -> int:
        if self.busy is not None and self.busy.state == JobState.RUNNING:
            raise RuntimeError("the worker is busy with another request")
        self._ensure_started()
        self._next_id += 1
        request = {"id": self._next_id, "op": "segment", "input": str(task.input_path),
                   "output": str(task.output_path), "options": asdict(task.options)}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        self.busy = task
        return self._next_id

    def stop(self) -> None:
        """End the child now (cancel, closing the scene, quitting): kills its process group, never waits."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        try:
            if os.name == "nt":
                process.kill()
            else:
                os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        threading.Thread(target=process.wait, daemon=True).start()  # reap it without blocking

    def close(self) -> None:
        """End the child politely (stdin closed: it finishes and exits), killing it if it is busy."""
        if self.busy is not None and self.busy.state == JobState.RUNNING:
            self.stop()
        elif self.running:
            self.process.stdin.close()


def _read_lines(stream, replies: "queue.Queue", tag: str) -> None:
    try:
        for line in stream:
            replies.put((tag, line.rstrip("\r\n")))
    except (OSError, ValueError):
        pass
    finally:
        replies.put((tag, None))


class WorkerTask(SegmentationRun):
    """One request to a :class:`Worker`, driven like :class:`~dinseg.pipeline.job.SegmentationProcess`:
    prepare, write the input, start, poll, read_result, remove_temp_dir; cancel never waits."""

    def __init__(self, worker: Worker, card, options: SegmentOptions, input_name: str):
        super().__init__(card, options, worker.temp_root, input_name)
        self.worker = worker
        self.seconds: Dict[str, float] = {}
        self.quality: Optional[Dict[str, Any]] = None  # the result's quality verdict (reports.quality), as a dict
        self._id: Optional[int] = None

    def start(self) -> "WorkerTask":
        if self.state != JobState.CREATED or self.input_path is None:
            raise RuntimeError(f"the task cannot start ({self.state}; prepare() and write the input first)")
        self._started = time.monotonic()
        try:
            self._id = self.worker._send(self)
        except Exception:
            self.remove_temp_dir()
            raise
        self.state = JobState.RUNNING
        self.stage = "starting"
        return self

    def poll(self) -> bool:
        """Handle the worker's replies so far; True while this request runs."""
        if self.state != JobState.RUNNING:
            return False
        replies = self.worker._replies
        while True:
            try:
                tag, line = replies.get_nowait()
            except queue.Empty:
                break
            if line is None:
                if tag == "out":
                    return self._fail("the worker process ended unexpectedly"
                                      + (f": {self.log_lines[-1]}" if self.log_lines else ""))
                continue
            if tag == "err":
                self.log_lines.append(line)
                continue
            try:
                reply = json.loads(line)
            except ValueError:
                self.log_lines.append(line)
                continue
            if reply.get("id") != self._id:
                continue
            if reply.get("event") == "progress":
                self._progress(reply)
            elif reply.get("event") == "done":
                self.seconds = reply.get("seconds") or {}
                self.quality = reply.get("quality")
                self.log_lines.append(f"done in {sum(self.seconds.values()):.2f} s (warm worker)")
                return self._end(JobState.SUCCEEDED, "done")
            elif reply.get("event") == "error":
                message = self._user_message(str(reply.get("message", "failed")))
                self.log_lines.append(self.ERROR_PREFIX + message)
                return self._fail(message)
        return True

    def _end(self, state: str, stage: str) -> bool:
        self.state, self.stage = state, stage
        self.fraction = 1.0 if state == JobState.SUCCEEDED else self.fraction
        self._ended = time.monotonic()
        self.worker.busy = None
        return False

    def _fail(self, message: str) -> bool:
        self.error = message
        self._end(JobState.FAILED, "failed")
        self.remove_temp_dir()
        return False

    def cancel(self) -> None:
        """Stop at once: a running request ends the worker process (the next request starts a new one)."""
        if self.state == JobState.RUNNING:
            self.worker.stop()
        if self.state in (JobState.RUNNING, JobState.SUCCEEDED, JobState.CREATED):
            self.state, self.stage = JobState.CANCELLED, "cancelled"
            self._ended = self._ended or (time.monotonic() if self._started else None)
            self.worker.busy = None
        self.remove_temp_dir()


if __name__ == "__main__":
    sys.exit(main())
