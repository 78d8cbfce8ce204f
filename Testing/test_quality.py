"""The quality verdict (dinseg.reports.quality): checks that are measured, named, and never crash a run."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SAMPLE_CT, SAMPLE_CT_LABELS
from dinseg.core.geometry import Geometry
from dinseg.core.io import read_volume
from dinseg.models import find_model
from dinseg.reports.quality import (OK, REVIEW, cardiac_function_checks, quality_verdict)

LR = "left-right axis looks reversed"


@pytest.fixture(scope="module")
def sample():
    volume = read_volume(SAMPLE_CT)
    labels = read_volume(SAMPLE_CT_LABELS).array.astype(np.uint8)
    return volume, labels


@pytest.fixture(scope="module")
def ct_card():
    return find_model("btcv-ct-light")


def _reversed(geometry: Geometry, column: int) -> Geometry:
    matrix = geometry.direction_matrix.copy()
    matrix[:, column] *= -1
    return dataclasses.replace(geometry, direction=tuple(matrix.ravel()))


def _all_reasons(verdict):
    return verdict.warnings()


def test_left_right_swap_in_the_header_is_named(sample, ct_card):
    volume, labels = sample
    stored = quality_verdict(labels, volume.array, volume.geometry, ct_card, modality="CT")
    assert not any(LR in r for r in _all_reasons(stored))
    # the sample's x index axis runs along LPS x: negating its direction keeps the voxels, swaps sides
    swapped = quality_verdict(labels, volume.array, _reversed(volume.geometry, 0), ct_card, modality="CT")
    assert swapped.status == REVIEW
    assert any(LR in r and "check its orientation" in r for r in swapped.reasons)
    flipped_ap = quality_verdict(labels, volume.array, _reversed(volume.geometry, 1), ct_card, modality="CT")
    assert any("anterior-posterior axis looks reversed" in r for r in flipped_ap.reasons)
    assert not any("anterior-posterior" in r for r in stored.reasons)


def test_swapped_kidney_labels_are_named_on_the_kidneys(sample, ct_card):
    volume, labels = sample
    swapped = labels.copy()
    swapped[labels == 3], swapped[labels == 4] = 4, 3
    verdict = quality_verdict(swapped, volume.array, volume.geometry, ct_card, modality="CT")
    for kidney in ("left kidney", "right kidney"):
        assert verdict.structures[kidney].status == REVIEW
        assert any("swapped" in r for r in verdict.structures[kidney].reasons)
    assert not verdict.structures["liver"].reasons or all("swapped" not in r for r in verdict.structures["liver"].reasons)


def test_structure_touching_the_border_is_incomplete(sample, ct_card):
    volume, labels = sample
    verdict = quality_verdict(labels, volume.array, volume.geometry, ct_card, modality="CT")
    liver = verdict.structures["liver"]  # the sample stops inside the liver's dome
    assert liver.incomplete and liver.status == REVIEW
    assert any("incomplete" in r and "lower bound" in r for r in liver.reasons)
    # what the GUIs show: the structures' problems too, not the notes on checks that did not run
    problems = verdict.to_dict()["problems"]
    assert any(p.startswith("liver: ") and "incomplete" in p for p in problems)
    assert "no test-time variants were computed: no predicted Dice" in verdict.notes
    assert not set(verdict.notes) & set(problems)
    # cut through the left kidney in-plane: incomplete; whole kidney: not
    assert not verdict.structures["left kidney"].incomplete
    k, j, i = np.nonzero(labels == 3)
    cut = int(i.mean())
    keep = slice(0, cut) if volume.geometry.direction_matrix[0, 0] < 0 else slice(cut, None)
    geometry = dataclasses.replace(volume.geometry, size=(labels[..., keep].shape[2],) + volume.geometry.size[1:])
    cropped = quality_verdict(np.ascontiguousarray(labels[..., keep]), np.ascontiguousarray(volume.array[..., keep]),
                              geometry, ct_card, modality="CT")
    assert cropped.structures["left kidney"].incomplete or cropped.structures["right kidney"].incomplete


def test_volumes_outside_adult_ranges_are_flagged(sample, ct_card):
    volume, labels = sample
    g = volume.geometry
    big = dataclasses.replace(g, spacing=(g.spacing[0] * 2.2, g.spacing[1] * 2.2, g.spacing[2]))
    verdict = quality_verdict(labels, volume.array, big, ct_card, modality="CT")
    assert any("above the adult range" in r for r in verdict.structures["left kidney"].reasons)
    tiny = labels.copy()
    spleen = np.argwhere(labels == 7)
    tiny[labels == 7] = 0
    z, y, x = spleen[len(spleen) // 2]
    tiny[z, y:y + 2, x:x + 2] = 7  # a 4-voxel spleen (0.1 mL)
    verdict = quality_verdict(tiny, volume.array, g, ct_card, modality="CT")
    assert any("below the adult range" in r for r in verdict.structures["spleen"].reasons)


def test_slice_spacing_twice_too_large_is_named(sample, ct_card):
    volume, labels = sample
    g = volume.geometry
    tall = dataclasses.replace(g, spacing=(g.spacing[0], g.spacing[1], g.spacing[2] * 2))
    verdict = quality_verdict(labels, volume.array, tall, ct_card, modality="CT")
    assert any("slice spacing in the header looks too large" in r for r in verdict.reasons)


def test_missing_card_statistics_is_one_reason_and_no_crash(sample, ct_card):
    volume, labels = sample
    bare = dataclasses.replace(ct_card, training={})
    verdict = quality_verdict(labels, volume.array, volume.geometry, bare, modality="CT")
    mentions = [r for r in verdict.to_dict()["reasons"] if "training statistics" in r]
    assert len(mentions) == 1
    assert verdict.structures["liver"].incomplete  # the other checks still ran
    # a broken block: that check says so once, the others decide
    broken = quality_verdict(labels, volume.array, volume.geometry, ct_card, modality="CT",
                             statistics={"spacing_mm": {"in_plane": "nonsense"}})
    notes = [r for r in broken.to_dict()["reasons"] if "could not be computed" in r]
    assert len(notes) == 1 and "input" in notes[0]
    assert broken.structures["liver"].incomplete


def test_intensities_unlike_training_name_another_sequence(sample, ct_card):
    volume, labels = sample
    stored = quality_verdict(labels, volume.array, volume.geometry, ct_card, modality="CT")
    assert not any("contrast phase" in r for r in stored.reasons)
    shifted = quality_verdict(labels, volume.array.astype(np.float32) + 400.0, volume.geometry, ct_card,
                              modality="CT")
    assert any("contrast phase" in r for r in shifted.reasons)


def _heart(slices=10, lv_slices=range(2, 9), rv_dx=-18, size=64):
    """(z, y, x) short-axis stack: an LV cavity disc with a myocardium ring, an RV beside it."""
    labels = np.zeros((slices, size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    r_lv = np.hypot(yy - 32, xx - 36)
    r_rv = np.hypot(yy - 32, xx - 36 - rv_dx)
    for z in lv_slices:
        labels[z][r_rv < 8] = 1
        labels[z][(r_lv >= 7) & (r_lv < 10)] = 2
        labels[z][r_lv < 7] = 3
    image = np.where(labels == 2, 80.0, np.where(labels > 0, 300.0, 40.0)).astype(np.float32)
    geometry = Geometry(size=(size, size, slices), spacing=(1.5, 1.5, 8.0), origin=(0.0, 0.0, 0.0))
    return labels, image, geometry


def test_ukbb_short_axis_rules():
    card = find_model("acdc-light")
    labels, image, geometry = _heart()
    good = quality_verdict(labels, image, geometry, card, modality="MR")
    assert not any("ukbb" in r for r in good.warnings()), good.warnings()
    few, image, geometry = _heart(lv_slices=range(3, 7))
    assert any("fewer than 6" in r for r in quality_verdict(few, image, geometry, card).reasons)
    gap = labels.copy()
    gap[5][gap[5] == 3] = 0
    verdict = quality_verdict(gap, image, geometry, card)
    assert any("missing on slice(s) 6" in r for r in verdict.reasons)
    small = labels.copy()
    small[small == 1] = 0
    small[4, 30:32, 10:13] = 1  # a 6-pixel RV
    verdict = quality_verdict(small, image, geometry, card)
    assert any("fewer than 10 pixels" in r for r in verdict.structures["right ventricle"].reasons)


def test_right_ventricle_on_the_left_names_the_axis():
    card = find_model("acdc-light")
    labels, image, geometry = _heart(rv_dx=-18)  # RV at smaller LPS x: the patient's right
    assert not any(LR in r for r in quality_verdict(labels, image, geometry, card).reasons)
    labels, image, geometry = _heart(rv_dx=18)
    assert any(LR in r for r in quality_verdict(labels, image, geometry, card).reasons)


def test_cardiac_function_checks():
    problems = cardiac_function_checks({"lv_ef_percent": 92.0, "lv_mass_g": 20.0}, {"lv": [50.0, 80.0]}, 0, 1)
    assert any("not larger than at ES" in p for p in problems)
    assert any("lv_ef_percent" in p for p in problems) and any("lv_mass_g" in p for p in problems)
    assert cardiac_function_checks({"lv_ef_percent": 60.0, "lv_mass_g": 120.0}, {"lv": [150.0, 60.0]}, 0, 1) == []


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory):
    """The sample CT cut to 24 slices around the kidneys (fast to segment)."""
    image = sitk.ReadImage(str(SAMPLE_CT))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_CT_LABELS)))
    k = int(np.nonzero(labels == 3)[0].mean())
    path = tmp_path_factory.mktemp("quality") / "ct.nii.gz"
    sitk.WriteImage(image[:, :, k - 12:k + 12], str(path))
    return path


def test_cli_warns_exits_0_and_3_with_strict_quality_and_statistics_carry_quality(small_ct, tmp_path, capsys):
    from dinseg.apps.cli import main

    out, stats = tmp_path / "labels.nii.gz", tmp_path / "stats.json"
    code = main(["segment", str(small_ct), "-o", str(out), "--model", "btcv-ct-light", "--device", "cpu",
                 "--statistics", str(stats), "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 0 and out.exists()
    warnings = [line for line in err.splitlines() if line.startswith("dinseg: warning: ")]
    assert warnings, err
    assert any("spacing" in line for line in warnings)  # 3 mm in-plane, the model trained on 1.2-1.7 mm
    document = json.loads(stats.read_text())
    assert document["quality"]["status"] in (OK, REVIEW) and isinstance(document["quality"]["reasons"], list)
    assert document["quality"]["status"] == REVIEW
    for row in document["structures"]:
        assert set(row["quality"]) == {"status", "predicted_dice", "reasons"}
        assert "incomplete" in row
    assert any(row["quality"]["predicted_dice"] is not None for row in document["structures"])

    out2, stats_csv = tmp_path / "labels2.nii.gz", tmp_path / "stats.csv"
    code = main(["segment", str(small_ct), "-o", str(out2), "--model", "btcv-ct-light", "--device", "cpu",
                 "--statistics", str(stats_csv), "--strict-quality", "--quality-variants", "0", "--threads", "1"])
    capsys.readouterr()
    assert code == 3 and out2.exists()  # written, then refused
    with open(stats_csv, newline="") as stream:
        rows = list(csv.DictReader(stream))
    for column in ("quality_status", "predicted_dice", "quality_reasons", "incomplete", "result_quality_status"):
        assert column in rows[0]
    assert {row["result_quality_status"] for row in rows} == {REVIEW}


def test_cardiac_function_carries_the_verdict_per_phase(tmp_path, capsys):
    from conftest import acdc_patient
    from dinseg.apps.cli import main

    patient = acdc_patient(90)
    ed, es = patient / "patient090_frame04_gt.nii.gz", patient / "patient090_frame11_gt.nii.gz"
    report = tmp_path / "function.json"
    assert main(["cardiac-function", str(ed), str(es), "--labels", "--json", str(report)]) == 0
    quality = json.loads(report.read_text())["quality"]
    assert quality["status"] == OK and set(quality["phases"]) == {"ED", "ES"}
    assert "structures" in quality["phases"]["ED"]
    capsys.readouterr()
    # the phases given the wrong way round: ED smaller than ES is a problem, exit 3 with --strict-quality
    code = main(["cardiac-function", str(es), str(ed), "--labels", "--ed", "1", "--es", "2", "--strict-quality"])
    err = capsys.readouterr().err
    assert code == 3
    assert any(line.startswith("dinseg: warning: ") and "not larger than at ES" in line for line in err.splitlines())


def test_the_input_check_runs_on_an_image_outside_the_training_spacing():
    """A CT whose spacing is outside the card's range is named, and the intensity checks after it still run."""
    import SimpleITK as sitk

    from conftest import SAMPLE_CT, SAMPLE_CT_LABELS
    from dinseg.core.io import read_volume
    from dinseg.models import find_model
    from dinseg.reports.quality import quality_verdict

    volume = read_volume(SAMPLE_CT)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_CT_LABELS)))
    verdict = quality_verdict(labels, volume.array, volume.geometry, find_model("btcv-ct-light"), modality="CT")
    assert not [note for note in verdict.notes if "could not be computed" in note], verdict.notes
