"""Cardiac function: volumes, ejection fraction and mass from labels, the CLI, bad input, the model choice.

Real data: ACDC patient090 (../shared/data; skipped where absent), its expert ED/ES labels and
its whole 4D cine.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SAMPLE_CT, acdc_patient
from dinseg.reports.cardiac import body_surface_area, cardiac_function
from dinseg.apps.cli import main
from dinseg.core.errors import InputError
from dinseg.core.terminology import ACDC_STRUCTURES, label_infos_for

LABELS = label_infos_for(ACDC_STRUCTURES)  # 1 right ventricle, 2 myocardium, 3 left ventricle


def expert_frames(patient: int = 90):
    """(ED labels, ES labels, spacing (x, y, z) mm, Info.cfg dict) of an ACDC patient."""
    folder = acdc_patient(patient)
    info = dict(line.split(": ") for line in (folder / "Info.cfg").read_text().splitlines() if line.strip())
    frames = []
    for key in ("ED", "ES"):
        image = sitk.ReadImage(str(folder / f"patient{patient:03d}_frame{int(info[key]):02d}_gt.nii.gz"))
        frames.append(sitk.GetArrayFromImage(image))
    return frames[0], frames[1], image.GetSpacing(), info


def test_volumes_are_voxel_counts_times_voxel_volume_exactly():
    ed, es, spacing, info = expert_frames()
    voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000
    result = cardiac_function([es, ed], spacing, LABELS, height_cm=float(info["Height"]),
                              weight_kg=float(info["Weight"]))
    assert (result.ed_frame, result.es_frame) == (1, 0)  # the larger LV is ED, whatever the order given
    lv_edv, lv_esv = np.count_nonzero(ed == 3) * voxel_ml, np.count_nonzero(es == 3) * voxel_ml
    rv_edv, rv_esv = np.count_nonzero(ed == 1) * voxel_ml, np.count_nonzero(es == 1) * voxel_ml
    assert result.figures["lv_edv_ml"] == lv_edv and result.figures["lv_esv_ml"] == lv_esv
    assert result.figures["rv_edv_ml"] == rv_edv and result.figures["rv_esv_ml"] == rv_esv
    assert result.figures["lv_ef_percent"] == pytest.approx(100 * (lv_edv - lv_esv) / lv_edv)
    assert result.figures["rv_sv_ml"] == pytest.approx(rv_edv - rv_esv)
    assert result.figures["lv_mass_g"] == pytest.approx(1.05 * np.count_nonzero(ed == 2) * voxel_ml)
    bsa = math.sqrt(float(info["Height"]) * float(info["Weight"]) / 3600)
    assert result.bsa_m2 == pytest.approx(bsa)
    assert result.indexed("lv_edv_ml") == pytest.approx(lv_edv / bsa)
    assert result.indexed("lv_ef_percent") is None


def test_given_frames_override_the_lv_rule():
    ed, es, spacing, _ = expert_frames()
    result = cardiac_function([ed, es, ed], spacing, LABELS, ed_frame=2, es_frame=1)
    assert (result.ed_frame, result.es_frame) == (2, 1)
    with pytest.raises(InputError, match="outside frames 1..3"):
        cardiac_function([ed, es, ed], spacing, LABELS, es_frame=3)


@pytest.mark.parametrize("frames, labels, message", [
    (lambda ed, es: [ed], LABELS, "at least two frames"),
    (lambda ed, es: [ed, es[1:]], LABELS, "one grid"),
    (lambda ed, es: [ed, es], label_infos_for(["liver", "spleen"]), "no left ventricle"),
    (lambda ed, es: [np.where(ed == 3, 0, ed), np.where(es == 3, 0, es)], LABELS, "zero volume at ED"),
])
def test_what_cannot_be_measured_is_refused(frames, labels, message):
    ed, es, spacing, _ = expert_frames()
    with pytest.raises(InputError, match=message):
        cardiac_function(frames(ed, es), spacing, labels)


def test_body_surface_area_needs_positive_measures():
    assert body_surface_area(180, 80) == pytest.approx(math.sqrt(180 * 80 / 3600))
    with pytest.raises(InputError):
        body_surface_area(0, 80)


def test_cli_on_expert_labels_writes_table_csv_json_and_plot(tmp_path, capsys):
    folder = acdc_patient(90)
    ed, es, spacing, _ = expert_frames()
    outputs = {"csv": tmp_path / "f.csv", "json": tmp_path / "f.json", "plot": tmp_path / "f.png"}
    code = main(["cardiac-function", str(folder / "patient090_frame04_gt.nii.gz"),
                 str(folder / "patient090_frame11_gt.nii.gz"), "--labels", "--height", "150", "--weight", "66",
                 *[item for key, path in outputs.items() for item in (f"--{key}", str(path))]])
    assert code == 0
    table = capsys.readouterr().out
    assert "LV ejection fraction" in table and "ED frame 1, ES frame 2" in table
    report = json.loads(outputs["json"].read_text())
    expected = cardiac_function([ed, es], spacing, LABELS, height_cm=150, weight_kg=66)
    assert report["lv_ef_percent"] == pytest.approx(expected.figures["lv_ef_percent"])
    assert report["lv_edv_per_m2"] == pytest.approx(expected.indexed("lv_edv_ml"))
    assert "LV ejection fraction" in outputs["csv"].read_text()
    assert outputs["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.csv", "f.json", "f.png"]


def _frame_file(tmp_path, name, array, spacing=(1.5, 1.5, 8.0)):
    image = sitk.GetImageFromArray(array, isVector=False)
    image.SetSpacing(tuple(spacing) + (1.0,) * (array.ndim - 3))
    sitk.WriteImage(image, str(tmp_path / name))
    return str(tmp_path / name)


@pytest.mark.parametrize("case, message", [
    ("3d", "is a 3D volume; cardiac function needs a 4D cine"),
    ("one-frame", "needs a 4D cine"),  # NIfTI stores a one-frame cine as 3D
    ("grids", "lie on different grids"),
    ("no-lv", "zero volume at ED"),
    ("three", "at most two inputs"),
])
def test_cli_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, case, message):
    ed, es, _, _ = expert_frames()
    inputs = {"3d": lambda: [_frame_file(tmp_path, "ed.nii.gz", ed)],
              "one-frame": lambda: [_frame_file(tmp_path, "one.nii.gz", ed[np.newaxis])],
              "grids": lambda: [_frame_file(tmp_path, "ed.nii.gz", ed),
                                _frame_file(tmp_path, "es.nii.gz", es, spacing=(1.4, 1.5, 8.0))],
              "no-lv": lambda: [_frame_file(tmp_path, "ed.nii.gz", np.where(ed == 3, 0, ed)),
                                _frame_file(tmp_path, "es.nii.gz", np.where(es == 3, 0, es))],
              "three": lambda: [_frame_file(tmp_path, "ed.nii.gz", ed)] * 3}[case]()
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["cardiac-function", *inputs, "--labels", "--json", str(tmp_path / "out.json"),
                 "--plot", str(tmp_path / "out.png")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and error[0].startswith("dinseg: error:") and message in error[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_acdc_headers_raise_no_wall_of_itk_warnings(capfd):
    from dinseg.core.io import read_volume

    volume = read_volume(acdc_patient(90) / "patient090_4d.nii.gz")
    assert volume.frames == 12
    assert "sform" not in capfd.readouterr().err


def test_the_model_is_chosen_by_modality_and_anatomy():
    from dinseg.pipeline.segmenter import model_for
    from dinseg.core.io import read_volume

    card, reason = model_for(read_volume(SAMPLE_CT))
    assert card.modality == "CT" and card.anatomy == "abdomen", reason
    card, reason = model_for(read_volume(acdc_patient(90) / "patient090_4d.nii.gz"))
    assert card.modality == "MR" and card.anatomy == "heart" and "short-axis" in reason
    card, _ = model_for(read_volume(acdc_patient(90) / "patient090_frame04.nii.gz"))
    assert card.anatomy == "heart"


def test_an_abdominal_mr_never_gets_the_heart_model():
    from conftest import SAMPLE_MR
    from dinseg.pipeline.segmenter import model_for
    from dinseg.core.io import read_volume

    card, reason = model_for(read_volume(SAMPLE_MR))
    assert card.anatomy != "heart", reason


def test_a_ct_clipped_to_a_soft_tissue_window_still_reads_as_ct():
    """Synapse stores its CT clipped to HU -125..275: no air below -500, yet CT."""
    from conftest import SAMPLE_MR
    from dinseg.pipeline.segmenter import guess_modality
    from dinseg.core.io import read_volume

    windowed = np.clip(read_volume(SAMPLE_CT).array, -125, 275)
    assert guess_modality(windowed) == "CT"
    assert guess_modality(read_volume(SAMPLE_MR).array) == "MR"
    assert guess_modality(read_volume(acdc_patient(90) / "patient090_frame04.nii.gz").array) == "MR"


def _cine_labels(tmp_path, lv_sides=(6, 10, 8, 4, 7)):
    """A small 4D labelmap (t, z, y, x): a square LV (3) of the given side per frame inside a myocardium
    (2), an RV (1) beside it; voxels of 1.5 x 1.5 x 8 mm."""
    frames = np.zeros((len(lv_sides), 3, 24, 32), np.uint8)
    for t, side in enumerate(lv_sides):
        frames[t, :, 1:23, 1:23] = 2
        frames[t, :, 11 - side // 2:11 - side // 2 + side, 11 - side // 2:11 - side // 2 + side] = 3
        frames[t, :, 4:20, 24:30] = 1
    return _frame_file(tmp_path, "cine_labels.nii.gz", frames), frames


def test_cli_ed_and_es_choose_the_frames_counted_from_1(tmp_path, capsys):
    """--ed/--es override the largest/smallest LV rule and count from 1: frames 3 and 5 of 5 here, where
    the rule would take 2 and 4."""
    path, frames = _cine_labels(tmp_path)
    voxel_ml = 1.5 * 1.5 * 8.0 / 1000
    lv = [np.count_nonzero(frame == 3) * voxel_ml for frame in frames]
    assert main(["cardiac-function", path, "--labels", "--json", str(tmp_path / "rule.json")]) == 0
    rule = json.loads((tmp_path / "rule.json").read_text())
    assert (rule["ed_frame"], rule["es_frame"]) == (2, 4)
    capsys.readouterr()
    assert main(["cardiac-function", path, "--labels", "--ed", "3", "--es", "5", "--json",
                 str(tmp_path / "given.json")]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("ED frame 3, ES frame 5 (of 5; 1 = first)")
    given = json.loads((tmp_path / "given.json").read_text())
    assert (given["ed_frame"], given["es_frame"]) == (3, 5)
    assert given["lv_edv_ml"] == pytest.approx(lv[2]) and given["lv_esv_ml"] == pytest.approx(lv[4])
    assert given["lv_ef_percent"] == pytest.approx(100 * (lv[2] - lv[4]) / lv[2])
    assert given["lv_mass_g"] == pytest.approx(1.05 * np.count_nonzero(frames[2] == 2) * voxel_ml)


@pytest.mark.parametrize("flags, message", [(["--es", "6"], "ES frame 6 is outside frames 1..5"),
                                            (["--ed", "0"], "ED frame 0 is outside frames 1..5"),
                                            (["--ed", "4", "--es", "4"], None)])
def test_cli_frames_outside_the_cine_are_one_line_exit_2(tmp_path, capsys, flags, message):
    path, _ = _cine_labels(tmp_path)
    code = main(["cardiac-function", path, "--labels", *flags, "--json", str(tmp_path / "out.json")])
    captured = capsys.readouterr()
    if message is None:  # the same frame as ED and ES is measurable: no ejection at all
        assert code == 0 and json.loads((tmp_path / "out.json").read_text())["lv_ef_percent"] == 0.0
        return
    assert code == 2 and captured.err.strip().splitlines() == [f"dinseg: error: {message}"], captured.err
    assert not (tmp_path / "out.json").exists()
