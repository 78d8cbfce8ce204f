"""The warm engine: one child process keeps the model loaded between requests, ends with its owner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SAMPLE_CT
from dinseg.core.io import read_volume
from dinseg.models import load_card
from dinseg.pipeline.job import JobState
from dinseg.pipeline.options import SegmentOptions
from dinseg.pipeline.segmenter import Segmenter
from dinseg.pipeline.worker import Worker


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory):
    path = tmp_path_factory.mktemp("worker") / "small_ct.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(SAMPLE_CT))[:, :, 80:88], str(path))
    return path


def run(worker, card, source, options=SegmentOptions(device="cpu")):
    task = worker.segment(card, options, input_name="CT 1")
    shutil.copy(source, task.prepare(input_name="input.nii.gz"))
    task.start()
    assert task.wait(timeout=180), "the worker did not answer"
    return task


def test_the_worker_keeps_the_model_loaded_and_gives_the_one_shot_labels(random_ct_model, small_ct, tmp_path):
    card = load_card(random_ct_model)
    worker = Worker(temp_root=str(tmp_path))
    try:
        first = run(worker, card, small_ct)
        assert first.state == JobState.SUCCEEDED, first.error
        pid = worker.process.pid
        second = run(worker, card, small_ct)
        assert second.state == JobState.SUCCEEDED and worker.process.pid == pid, "the worker was restarted"
        assert first.seconds["load model"] > 0 and second.seconds["load model"] < first.seconds["load model"] / 10
        expected = Segmenter(card, device="cpu").segment(read_volume(small_ct)).labels
        assert np.array_equal(second.read_result(), expected)
        for task in (first, second):
            task.remove_temp_dir()
        other = run(worker, card, small_ct, SegmentOptions(device="cpu", largest_component=True))
        assert other.state == JobState.SUCCEEDED and other.seconds["load model"] > 0, "new options, new model"
        other.remove_temp_dir()
        assert list(tmp_path.iterdir()) == []
    finally:
        worker.close()


def test_a_bad_input_is_one_line_with_its_name_and_the_worker_goes_on(random_ct_model, small_ct, tmp_path):
    card = load_card(random_ct_model)
    worker = Worker(temp_root=str(tmp_path))
    try:
        constant = tmp_path / "constant.nii.gz"
        sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkInt16), str(constant))
        failed = run(worker, card, constant)
        assert failed.state == JobState.FAILED
        assert failed.error == "CT 1: the image is constant (every voxel is 0)"
        constant.unlink()
        assert list(tmp_path.iterdir()) == [], "a failed task left its folder"
        pid = worker.process.pid
        assert run(worker, card, small_ct).state == JobState.SUCCEEDED and worker.process.pid == pid
    finally:
        worker.close()


def test_cancel_stops_the_request_at_once_and_the_next_one_starts_a_fresh_worker(random_ct_model, small_ct,
                                                                                  tmp_path):
    card = load_card(random_ct_model)
    worker = Worker(temp_root=str(tmp_path))
    try:
        task = worker.segment(card, SegmentOptions(device="cpu"))
        shutil.copy(small_ct, task.prepare(input_name="input.nii.gz"))
        task.start()
        process = worker.process
        started = time.monotonic()
        task.cancel()
        assert time.monotonic() - started < 0.2, "cancel waited"
        assert task.state == JobState.CANCELLED and not task.poll()
        process.wait(timeout=10)
        assert list(tmp_path.iterdir()) == []
        assert run(worker, card, small_ct).state == JobState.SUCCEEDED
        assert worker.process is not process
    finally:
        worker.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_the_worker_ends_with_its_owner_whatever_the_way(tmp_path):
    owner = textwrap.dedent("""
        import sys, time
        from dinseg.pipeline.worker import Worker
        worker = Worker()
        worker._ensure_started()
        print(worker.process.pid, flush=True)
        time.sleep(600)
    """)
    process = subprocess.Popen([sys.executable, "-c", owner], stdout=subprocess.PIPE, text=True)
    worker_pid = int(process.stdout.readline())
    process.kill()  # no clean-up code runs in the owner
    process.wait(timeout=10)
    deadline = time.monotonic() + 20
    while _alive(worker_pid):
        assert time.monotonic() < deadline, "the worker outlived its owner"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead: it waits for a parent that is gone
        return stat.read().split(")")[-1].split()[0] != "Z"
