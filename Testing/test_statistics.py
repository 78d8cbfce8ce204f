"""Organ statistics for reports: exact volumes, the input's own intensities, positions in LPS."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SAMPLE_CT, SAMPLE_CT_LABELS
from dinseg.apps.cli import main
from dinseg.core.geometry import Geometry
from dinseg.reports.statistics import structure_statistics, write_statistics
from dinseg.core.terminology import SYNAPSE_ORGANS, label_infos_for

ORGANS = label_infos_for(SYNAPSE_ORGANS)


@pytest.fixture(scope="module")
def sample():
    image, labels = sitk.ReadImage(str(SAMPLE_CT)), sitk.ReadImage(str(SAMPLE_CT_LABELS))
    return image, sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(labels)


def test_statistics_equal_numpy_on_the_input_grid(sample):
    image, array, labels = sample
    rows = structure_statistics(labels, array, Geometry.from_sitk(image), ORGANS)
    voxel_ml = np.prod(image.GetSpacing()) / 1000
    for row, info in zip(rows, ORGANS):
        mask = labels == info.value
        inside = array[mask].astype(np.float64)
        assert row["structure"] == info.name and row["voxels"] == np.count_nonzero(mask) > 0
        assert row["volume_ml"] == row["voxels"] * voxel_ml
        assert row["mean"] == pytest.approx(inside.mean()) and row["std"] == pytest.approx(inside.std())
        assert [row["p5"], row["median"], row["p95"]] == pytest.approx(np.percentile(inside, [5, 50, 95]))
        k, j, i = np.nonzero(mask)
        centroid = image.TransformContinuousIndexToPhysicalPoint((i.mean(), j.mean(), k.mean()))
        assert [row[f"centroid_lps_{axis}_mm"] for axis in "xyz"] == pytest.approx(centroid)
        assert (row["bbox_min_i"], row["bbox_max_k"]) == (i.min(), k.max())
    left, right = rows[2], rows[3]
    assert left["centroid_lps_x_mm"] > right["centroid_lps_x_mm"]  # LPS: +x is the patient's left


def test_absent_structure_and_time_series(sample):
    image, array, labels = sample
    emptied = np.where(labels == 2, 0, labels)
    frames = np.stack([labels, emptied]), np.stack([array, array])
    rows = structure_statistics(*frames, Geometry.from_sitk(image), ORGANS)
    assert [row["frame"] for row in rows] == [0] * 8 + [1] * 8
    gallbladder = rows[8 + 1]
    assert gallbladder["voxels"] == 0 and gallbladder["volume_ml"] == 0 and gallbladder["mean"] is None
    assert rows[1]["voxels"] > 0


def test_files_and_the_segment_option(tmp_path, sample, random_ct_model):
    image, array, labels = sample
    rows = structure_statistics(labels, array, Geometry.from_sitk(image), ORGANS)
    write_statistics(tmp_path / "s.json", rows, units="HU")
    document = json.loads((tmp_path / "s.json").read_text())
    assert document["intensity_units"] == "HU" and "LPS" in document["coordinates"]
    assert document["structures"][4]["volume_ml"] == rows[4]["volume_ml"]
    write_statistics(tmp_path / "s.csv", rows)
    assert [r["structure"] for r in csv.DictReader(open(tmp_path / "s.csv"))] == list(SYNAPSE_ORGANS)

    out, table, masks = tmp_path / "l.nii.gz", tmp_path / "stats.csv", tmp_path / "masks"
    assert main(["segment", str(SAMPLE_CT), "-o", str(out), "--model", str(random_ct_model), "--device", "cpu",
                 "--statistics", str(table), "--split", str(masks)]) == 0
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    written = {r["structure"]: int(r["voxels"]) for r in csv.DictReader(open(table))}
    assert written == {info.name: int(np.count_nonzero(predicted == info.value)) for info in ORGANS}
    liver = sitk.GetArrayFromImage(sitk.ReadImage(str(masks / "liver.nii.gz")))
    assert np.array_equal(liver, (predicted == 5).astype(np.uint8))
    assert sorted(p.name for p in masks.iterdir())[:2] == ["aorta.nii.gz", "gallbladder.nii.gz"]


def test_statistics_of_another_type_is_refused_before_work(tmp_path, random_ct_model, capsys):
    assert main(["segment", str(SAMPLE_CT), "-o", str(tmp_path / "l.nii.gz"), "--model", str(random_ct_model),
                 "--statistics", str(tmp_path / "s.xlsx")]) == 2
    assert "use one of .json, .csv" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
