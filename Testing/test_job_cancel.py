"""Cancel, kill and the reaper of a background segmentation (``dinseg.pipeline.job``), with stand-in children
(a few lines of Python instead of the CLI) so that each stop path is seen in well under a second: the job's
state and frozen clock, ``ended`` waiting only as long as asked, a job never started or already over, a
grandchild left behind by its parent, and a signal for a child outside its own process group."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dinseg.models import load_card
from dinseg.pipeline.job import JobState, SegmentationProcess, _signal_group
from dinseg.pipeline.options import SegmentOptions

pytestmark = pytest.mark.skipif(os.name == "nt", reason="process groups and signals are POSIX")

CARD = Path(__file__).resolve().parents[1] / "DINSegmentation" / "dinseg" / "assets" / "models" / "btcv-ct-light" / \
    "btcv-ct-light.json"
#: stops at SIGTERM (the default action)
QUIET = "import time\nprint('ready', flush=True)\ntime.sleep(120)\n"
#: ignores SIGTERM, as PyTorch does inside a long operation
DEAF = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(120)\n"
#: leaves a grandchild that ignores SIGTERM in its process group, then stops at SIGTERM itself
PARENT = ("import subprocess, sys, time\n"
          "child = subprocess.Popen([sys.executable, '-c', " + repr(DEAF) + "], stdout=subprocess.PIPE, text=True)\n"
          "child.stdout.readline()\nprint('grandchild', child.pid, flush=True)\nprint('ready', flush=True)\n"
          "time.sleep(120)\n")


def _job(tmp_path, script: str) -> SegmentationProcess:
    job = SegmentationProcess(load_card(CARD), SegmentOptions(device="cpu"), temp_root=str(tmp_path))
    job.prepare()
    job.command = lambda: [sys.executable, "-c", script]
    return job


def _running(tmp_path, script: str) -> SegmentationProcess:
    job = _job(tmp_path, script).start()
    deadline = time.monotonic() + 30
    while "ready" not in job.log_lines:
        assert job.poll() and time.monotonic() < deadline, f"the child did not start: {job.log_lines}"
        time.sleep(0.02)
    return job


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_cancel_marks_the_job_and_freezes_its_clock(tmp_path):
    job = _running(tmp_path, QUIET)
    job.cancel()
    assert (job.state, job.stage) == (JobState.CANCELLED, "cancelled")
    frozen = job.elapsed
    time.sleep(0.05)
    assert job.elapsed == frozen > 0, "the clock of a cancelled job kept running"
    assert job._reaper.daemon, "the reaper would hold the interpreter at exit for the grace period"
    assert job.ended(timeout=10) and job.process.returncode == -signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_ended_waits_only_as_long_as_it_is_asked(tmp_path):
    job = _running(tmp_path, DEAF)   # the reaper waits GRACE_SECONDS (5 s) for it
    job.cancel()
    started = time.monotonic()
    assert job.ended(timeout=0.2) is False
    assert time.monotonic() - started < 2, "ended() waited past its timeout"
    job.kill()
    assert job.ended(timeout=10) and job.process.returncode == -signal.SIGKILL


def test_a_job_never_started_cancels_and_kills_without_a_process(tmp_path):
    job = _job(tmp_path, QUIET)
    job.kill()       # nothing to kill yet: no error
    job.cancel()
    assert job.state == JobState.CANCELLED and job.ended(timeout=0) and list(tmp_path.iterdir()) == []


def test_a_job_whose_child_already_ended_is_cleaned_up_at_once(tmp_path):
    job = _job(tmp_path, "print('over')").start()
    job.process.wait(timeout=30)
    assert job.ended(timeout=0) is False, "the temporary folder is still there: not ended"
    job.cancel()
    assert job._reaper is None and job.temp_dir is not None and not job.temp_dir.exists()
    assert job.ended(timeout=0)


def test_the_reaper_kills_a_grandchild_left_in_the_group_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(SegmentationProcess, "GRACE_SECONDS", 0.5)
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("dinseg")
    logger.addHandler(handler)
    try:
        job = _running(tmp_path, PARENT)
        grandchild = int(next(line for line in job.log_lines if line.startswith("grandchild")).split()[1])
        assert _alive(grandchild)
        job.cancel()
        assert job.ended(timeout=10) and job.process.returncode == -signal.SIGTERM  # the parent stopped at once
        deadline = time.monotonic() + 5
        while _alive(grandchild) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(grandchild), "a grandchild that ignores SIGTERM outlived the job"
    finally:
        logger.removeHandler(handler)
    assert not messages, "the parent stopped within the grace period: nothing to report"
    job = _running(tmp_path, DEAF)
    logger.addHandler(handler)
    try:
        job.cancel()
        assert job.ended(timeout=10)
    finally:
        logger.removeHandler(handler)
    assert messages == [f"segmentation process {job.process.pid} did not stop in 0.5 s: killed"]


def test_a_child_outside_its_own_process_group_still_gets_the_signal(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", QUIET], stdout=subprocess.PIPE, text=True)  # pytest's group
    try:
        child.stdout.readline()
        _signal_group(child, signal.SIGTERM)
        assert child.wait(timeout=10) == -signal.SIGTERM
        _signal_group(child, signal.SIGKILL)  # already gone: nothing happens
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        child.stdout.close()
