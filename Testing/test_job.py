"""The background job without MRML (what the Slicer widget and other front ends drive)."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import SimpleITK as sitk

from conftest import SAMPLE_CT
from dinseg.job import JobState, SegmentationProcess
from dinseg.models import load_card


def test_a_process_segments_like_the_cli_and_cleans_up(random_ct_model, tmp_path):
    card = load_card(random_ct_model)
    job = SegmentationProcess(card, device="cpu", python=sys.executable, temp_root=str(tmp_path))
    shutil.copy(SAMPLE_CT, job.prepare(input_name="input.nii.gz"))
    job.start()
    assert job.wait(timeout=300) and job.state == JobState.SUCCEEDED, job.error
    assert job.fraction == 1.0 and any(line.startswith("$ ") for line in job.log_lines)
    labels = job.read_result()
    from dinseg.infer import Segmenter
    from dinseg.io import read_volume

    assert np.array_equal(labels, Segmenter(card, device="cpu").segment(read_volume(SAMPLE_CT)).labels)
    job.remove_temp_dir()
    assert list(tmp_path.iterdir()) == []


def test_a_failing_input_is_reported_by_its_name(random_ct_model, tmp_path):
    job = SegmentationProcess(load_card(random_ct_model), device="cpu", temp_root=str(tmp_path), input_name="CT 1")
    path = job.prepare(input_name="input.nii.gz")
    sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkInt16), str(path))
    job.start()
    assert job.wait(timeout=300) and job.state == JobState.FAILED
    assert job.error == "CT 1: the image is constant (every voxel is 0)"
    assert list(tmp_path.iterdir()) == []
