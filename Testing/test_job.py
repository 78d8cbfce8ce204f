"""The background job without MRML (what the Slicer widget and other front ends drive)."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SAMPLE_CT
from dinseg.pipeline.job import JobState, SegmentationProcess
from dinseg.models import load_card
from dinseg.pipeline.options import SegmentOptions


def test_a_process_segments_like_the_cli_and_cleans_up(random_ct_model, tmp_path):
    card = load_card(random_ct_model)
    job = SegmentationProcess(card, SegmentOptions(device="cpu"), python=sys.executable, temp_root=str(tmp_path))
    shutil.copy(SAMPLE_CT, job.prepare(input_name="input.nii.gz"))
    job.start()
    assert job.wait(timeout=300) and job.state == JobState.SUCCEEDED, job.error
    assert job.fraction == 1.0 and any(line.startswith("$ ") for line in job.log_lines)
    labels = job.read_result()
    from dinseg.pipeline.segmenter import Segmenter
    from dinseg.core.io import read_volume

    assert np.array_equal(labels, Segmenter(card, device="cpu").segment(read_volume(SAMPLE_CT)).labels)
    job.remove_temp_dir()
    assert list(tmp_path.iterdir()) == []


def test_a_failing_input_is_reported_by_its_name(random_ct_model, tmp_path):
    job = SegmentationProcess(load_card(random_ct_model), SegmentOptions(device="cpu"), temp_root=str(tmp_path), input_name="CT 1")
    path = job.prepare(input_name="input.nii.gz")
    sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkInt16), str(path))
    job.start()
    assert job.wait(timeout=300) and job.state == JobState.FAILED
    assert job.error == "CT 1: the image is constant (every voxel is 0)"
    assert list(tmp_path.iterdir()) == []


def _start_slow_child(tmp_path, script: str) -> SegmentationProcess:
    """A SegmentationProcess whose child is ``script`` instead of the CLI: its stop path is the job's own."""
    job = SegmentationProcess(load_card(SAMPLE_MODEL), SegmentOptions(device="cpu"), temp_root=str(tmp_path))
    job.prepare()
    job.command = lambda: [sys.executable, "-c", script]
    return job.start()


SAMPLE_MODEL = Path(__file__).resolve().parents[1] / "DINSegmentation" / "dinseg" / "assets" / "models" / \
    "btcv-ct-light" / "btcv-ct-light.json"
#: a child that ignores SIGTERM and keeps computing, as PyTorch does inside a long operation
DEAF_CHILD = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\n"
              "time.sleep(120)\n")


def _wait_for_line(job, text, timeout=30):
    deadline = time.monotonic() + timeout
    while text not in job.log_lines:
        assert job.poll() and time.monotonic() < deadline, f"no {text!r} from the child"
        time.sleep(0.02)


@pytest.mark.skipif(os.name == "nt", reason="process groups and signals are POSIX")
def test_cancel_never_blocks_its_caller_and_the_reaper_kills_a_child_that_ignores_sigterm(tmp_path, monkeypatch):
    monkeypatch.setattr(SegmentationProcess, "GRACE_SECONDS", 1.0)
    job = _start_slow_child(tmp_path, DEAF_CHILD)
    _wait_for_line(job, "ready")
    started = time.monotonic()
    job.cancel()
    assert time.monotonic() - started < 0.2, "cancel waited for the child"
    assert job.state == JobState.CANCELLED and not job.poll()
    assert job.process.poll() is None, "the child ignores SIGTERM: it is still running right after cancel"
    assert job.ended(timeout=15), "the reaper did not kill the child after the grace period"
    assert job.process.returncode == -signal.SIGKILL
    assert list(tmp_path.iterdir()) == [], "the temporary folder outlived the child"


@pytest.mark.skipif(os.name == "nt", reason="process groups and signals are POSIX")
def test_a_second_cancel_kills_the_process_group_at_once(tmp_path):
    job = _start_slow_child(tmp_path, DEAF_CHILD)
    _wait_for_line(job, "ready")
    job.cancel()
    started = time.monotonic()
    job.cancel()  # a second Cancel, closing the scene, quitting
    assert time.monotonic() - started < 0.2
    assert job.ended(timeout=5), "a second cancel did not kill the child"
    assert time.monotonic() - started < job.GRACE_SECONDS, "the kill waited for the grace period"
    assert job.process.returncode == -signal.SIGKILL and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name == "nt", reason="process groups and signals are POSIX")
def test_cancel_stops_a_real_segmentation_that_unwinds_on_sigterm(random_ct_model, tmp_path):
    job = SegmentationProcess(load_card(random_ct_model), SegmentOptions(device="cpu", threads=1),
                              temp_root=str(tmp_path))
    shutil.copy(SAMPLE_CT, job.prepare(input_name="input.nii.gz"))
    job.start()
    deadline = time.monotonic() + 120
    while job.poll() and job.fraction == 0.0:
        assert time.monotonic() < deadline, "no progress reported"
        time.sleep(0.02)
    assert job.state == JobState.RUNNING, job.error
    job.cancel()
    assert job.ended(timeout=job.GRACE_SECONDS + 10)
    assert job.process.returncode == 130, "the CLI should unwind on SIGTERM (status 130), not be killed"
    assert list(tmp_path.iterdir()) == []
