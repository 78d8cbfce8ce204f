"""The Windows branches of a background segmentation's cancel, kill and reaper (``dinseg.pipeline.job``),
run on POSIX in an emulation of what they meet on Windows: ``os.name`` is ``"nt"`` and ``os`` has no process
groups (no ``killpg``), ``signal`` has no ``SIGKILL``, and ``taskkill`` is a stand-in on PATH that behaves as
the real one for these calls (options in any case, ``/PID n``; ``/T`` ends the tree, here the child's process
group; without ``/F`` a windowless process is not ended; an unknown option or PID is an error; it reports
on stdout and stderr). The children are started the POSIX way, before the emulation begins.

What this shows: the Windows paths touch nothing POSIX-only, end the tree with the right taskkill command,
keep its output off the console and still remove the temporary folder. What it cannot: that Windows itself
behaves as the stand-in does (a run of test_job.py on Windows does that)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import types

import pytest

from dinseg.pipeline import job as job_module
from dinseg.pipeline.job import SegmentationProcess
from test_job_cancel import DEAF, PARENT, _alive, _running

pytestmark = pytest.mark.skipif(os.name == "nt", reason="on Windows the real taskkill runs (test_job.py)")

TASKKILL = r'''#!{python}
import json, os, signal, sys, time
calls = os.environ["TASKKILL_CALLS"]
with open(calls, "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\n")
count = sum(1 for _ in open(calls))
if count == 1:
    time.sleep(float(os.environ.get("TASKKILL_FIRST_DELAY", "0")))
force = tree = False
pid = None
args = iter(sys.argv[1:])
for arg in args:
    option = arg.upper()
    if option == "/F":
        force = True
    elif option == "/T":
        tree = True
    elif option == "/PID":
        pid = next(args, "")
    else:
        sys.exit(print("ERROR: Invalid argument/option - '%s'." % arg, file=sys.stderr) or 1)
if not pid or not pid.isdigit():
    sys.exit(print("ERROR: Invalid syntax. Value expected for '/PID'.", file=sys.stderr) or 1)
if not force:
    sys.exit(print("ERROR: The process with PID %s could not be terminated.\nReason: This process can only be "
                   "terminated forcefully (with /F option)." % pid, file=sys.stderr) or 1)
try:
    (os.killpg if tree else os.kill)(int(pid), signal.SIGKILL)
except ProcessLookupError:
    sys.exit(print('ERROR: The process "%s" not found.' % pid, file=sys.stderr) or 128)
print("SUCCESS: The process with PID %s has been terminated." % pid)
'''

#: the names Windows' signal module has
WINDOWS_SIGNALS = {"SIGABRT", "SIGFPE", "SIGILL", "SIGINT", "SIGSEGV", "SIGTERM", "SIGBREAK", "CTRL_C_EVENT",
                   "CTRL_BREAK_EVENT"}


class _WindowsModule(types.ModuleType):
    """A module as Windows' Python has it: the real one's attributes less those ``missing`` says."""

    def __init__(self, real, missing, **overrides):
        super().__init__(real.__name__)
        self._real, self._missing = real, missing
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        if self._missing(name):
            raise AttributeError(f"module {self._real.__name__!r} has no attribute {name!r} (on Windows)")
        return getattr(self._real, name)


@pytest.fixture
def windows(tmp_path, monkeypatch):
    """Emulate Windows in job.py (after the child starts); yields the taskkill calls' arguments, read later."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in ("taskkill", "TASKKILL"):  # Windows finds a program whatever the case of its name
        (folder / name).write_text(TASKKILL.replace("{python}", sys.executable))
        (folder / name).chmod(0o755)
    calls = tmp_path / "taskkill-calls.jsonl"
    calls.touch()
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("TASKKILL_CALLS", str(calls))
    monkeypatch.setattr(SegmentationProcess, "GRACE_SECONDS", 0.3)

    started = []

    def popen(*args, **kwargs):  # the real Popen; the taskkill processes it starts are waited for at the end
        process = subprocess.Popen(*args, **kwargs)
        started.append(process)
        return process

    def begin():
        monkeypatch.setattr(job_module, "os", _WindowsModule(os, lambda name: name in ("killpg", "getpgid",
                                                                                       "setsid"), name="nt"))
        monkeypatch.setattr(job_module, "subprocess", _WindowsModule(subprocess, lambda name: False, Popen=popen))
        monkeypatch.setattr(job_module, "signal", _WindowsModule(
            signal, lambda name: name.startswith(("SIG", "CTRL_")) and name not in WINDOWS_SIGNALS))

    def taskkill_calls(count: int):
        deadline = time.monotonic() + 10
        while len(calls.read_text().splitlines()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # the last call's own output, if it was let through, reaches the console
        return [[arg.upper() for arg in json.loads(line)] for line in calls.read_text().splitlines()]

    def wait():  # every taskkill started has ended (and so said what it had to say)
        for process in started:
            process.wait(timeout=30)

    yield types.SimpleNamespace(begin=begin, calls=taskkill_calls, wait=wait)
    wait()  # reaped here, not by whoever waits for any child next (mutmut's runner does)


def _stop_all(job):
    try:
        os.killpg(job.process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    job.process.wait()


def test_cancel_ends_the_process_tree_with_taskkill_quietly(tmp_path, windows, capfd):
    job = _running(tmp_path, PARENT)
    grandchild = int(next(line for line in job.log_lines if line.startswith("grandchild")).split()[1])
    try:
        windows.begin()
        job.cancel()
        assert job.ended(timeout=5), "the tree was not ended or the temporary folder not removed"
        assert windows.calls(1) == [["/F", "/T", "/PID", str(job.process.pid)]]
        deadline = time.monotonic() + 5
        while _alive(grandchild) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(grandchild), "taskkill without /T: a grandchild outlived the job"
    finally:
        _stop_all(job)
    captured = capfd.readouterr()
    assert "SUCCESS" not in captured.out + captured.err and "ERROR" not in captured.out + captured.err, captured


def test_kill_uses_taskkill_and_no_posix_signal(tmp_path, windows, capfd):
    job = _running(tmp_path, DEAF)
    try:
        windows.begin()
        job.kill()   # a running job: killed now, then cancelled (its reaper removes the temporary folder)
        assert job.ended(timeout=5)
        assert windows.calls(1)[0] == ["/F", "/T", "/PID", str(job.process.pid)]
        job.kill()   # again, the child gone: nothing to do
    finally:
        _stop_all(job)
    captured = capfd.readouterr()
    assert "SUCCESS" not in captured.out + captured.err, captured


def test_the_reaper_of_a_child_outliving_the_grace_period_stays_off_posix_calls(tmp_path, windows, monkeypatch,
                                                                                  capfd):
    """The first taskkill is slower than the grace period (0.3 s): the reaper says so, ends the tree again,
    and removes the temporary folder (no killpg for leftovers: taskkill /T took the tree). The first one
    then finds the process gone and says so on stderr, which must not reach the console."""
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("dinseg").addHandler(handler)
    monkeypatch.setenv("TASKKILL_FIRST_DELAY", "1.0")
    job = _running(tmp_path, DEAF)
    try:
        windows.begin()
        job.cancel()
        assert job.ended(timeout=5), "the reaper did not finish"
        assert windows.calls(2) == [["/F", "/T", "/PID", str(job.process.pid)]] * 2
        windows.wait()
    finally:
        logging.getLogger("dinseg").removeHandler(handler)
        _stop_all(job)
    assert messages == [f"segmentation process {job.process.pid} did not stop in 0.3 s: killed"]
    captured = capfd.readouterr()
    assert "SUCCESS" not in captured.out + captured.err and "ERROR" not in captured.out + captured.err, captured
