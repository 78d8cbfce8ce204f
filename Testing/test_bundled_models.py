"""The bundled models: honest cards, checked weights, and guards against regressions in accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from dinseg.apps.bench import robustness_rows
from dinseg.pipeline.segmenter import Segmenter
from dinseg.core.io import read_volume
from dinseg.core.metrics import dice_and_hd95
from dinseg.models import BUNDLED_MODELS, list_models, load_card, load_network, sha256_of
from conftest import SAMPLE_CT, SAMPLE_CT_LABELS, SAMPLE_MR, acdc_patient, shared_case

BUNDLED = ("btcv-ct-light", "chaos-mr-light", "acdc-light")

# Floors sit below what the shipped weights measured (README "Results"), leaving room for
# CPU-to-CPU float differences but not for a broken pipeline.
#: a BTCV patient as BTCV stores them: held out until 1.3.0 (measured mean Dice 0.894 then); 1.4.0
#: trained on all 18 patients, so this now guards the pipeline on BTCV's storage, not generalisation
CT_BTCV_PATIENT, CT_BTCV_MEAN_DICE_FLOOR = "btcv_0031", 0.85
#: the bundled CT, another hospital and scanner (labels by TotalSegmentator): measured mean
#: Dice 0.771, liver 0.879 (1.4.0); stored at 0.7 mm and 1.0 mm on 512 x 512 grids, 0.787 and 0.781
CT_SAMPLE_MEAN_DICE_FLOOR, CT_SAMPLE_LIVER_DICE_FLOOR = 0.72, 0.85
#: the bundled CT cut tightly around its liver: measured liver Dice 0.906 (1.4.0)
CT_CROP_LIVER_DICE_FLOOR = 0.85
ROBUSTNESS_MARGIN = 0.05
#: an unseen CHAOS patient (validation split): measured mean Dice 0.915
MR_CHAOS_PATIENT, MR_MEAN_DICE_FLOOR = "chaos_t2_34", 0.85
#: three ACDC patients of the validation split (ED and ES): held out until 1.5.0 (measured mean Dice
#: 0.924 then); 1.6.0 trained on all 100 (0.927 here), so this guards the pipeline on ACDC's
#: storage, not generalisation (README gives the recipe's held-out figures)
CARDIAC_TEST_PATIENTS = (4, 11, 17)
CARDIAC_MEAN_DICE_FLOOR = 0.87
#: patient090's whole cine (held out until 1.5.0, trained on since 1.6.0): LV EF 46.70 % from the
#: model (1.5.0 and 1.6.0) against 44.86 % from the expert's ED/ES labels, an error of +1.84 points
#: (measured by this test, 2026-12-05; 1.4.0 gave +2.6, 1.3.0 +8.5, 1.2.0 +7.5). The bound is that
#: measurement plus a margin of 1.16 points for CPU-to-CPU float differences (a few boundary voxels
#: move this EF by tenths of a point), so a model as far off as 1.2.0 or 1.3.0 fails it. The
#: issue's 4-point target is for the mean over patients (the recipe: 4.8 on the 20 held-out ones,
#: `dinseg evaluate`)
CARDIAC_EF_TOLERANCE = 3.0


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_card_is_complete_and_its_weights_check(name):
    card = load_card(BUNDLED_MODELS / name / f"{name}.json")
    assert card.name == name and card.network.widths == (24, 48, 96, 192)  # the CPU-light preset
    assert sha256_of(card.weights_path) == card.weights.sha256
    assert card.weights.bytes == card.weights_path.stat().st_size < 8_000_000
    assert card.training["command"].startswith("dinseg train configs/")
    assert card.training["wall_time_s"] > 0 and card.training["data"] and card.limitations
    assert all(label.type.scheme == "SCT" for label in card.labels)
    load_network(card)
    assert name in {c.name for c in list_models()}


def test_cards_say_what_they_were_trained_on():
    ct = load_card(BUNDLED_MODELS / "btcv-ct-light" / "btcv-ct-light.json")
    assert "BTCV" in ct.training["data"] and "Landman" in ct.description and ct.modality == "CT"
    mr = load_card(BUNDLED_MODELS / "chaos-mr-light" / "chaos-mr-light.json")
    assert "NON-COMMERCIAL" in mr.description and "CC BY-NC-SA" in mr.limitations and mr.modality == "MR"
    assert "T1" in mr.limitations and mr.anatomy == "abdomen"
    cardiac = load_card(BUNDLED_MODELS / "acdc-light" / "acdc-light.json")
    assert "ACDC" in cardiac.training["data"] and "Bernard" in cardiac.description
    assert "not a clinical" in cardiac.limitations.lower() and cardiac.anatomy == "heart"


def _organ_dice(card, prediction, truth, spacing_zyx):
    scores = dice_and_hd95(prediction, truth, spacing_zyx, card.num_classes)
    return {card.labels[value - 1].name: score["dice"] for value, score in scores.items()}


def _dice_on_shared_case(model: str, dataset: str, case_id: str):
    """{structure: Dice} of a bundled model on a case of ../shared/data (skips where absent)."""
    image, labels = shared_case(dataset, case_id)
    card = load_card(BUNDLED_MODELS / model / f"{model}.json")
    volume = read_volume(image)
    prediction = Segmenter(card, device="cpu").segment(volume).labels
    return _organ_dice(card, prediction, sitk.GetArrayFromImage(sitk.ReadImage(str(labels))),
                       volume.geometry.spacing[::-1])


def test_ct_model_on_a_btcv_patient():
    """A BTCV patient (half resolution, HU clipped to -125..275), expert labels of the 8 organs."""
    dice = _dice_on_shared_case("btcv-ct-light", "btcv_synapse", CT_BTCV_PATIENT)
    assert np.nanmean(list(dice.values())) > CT_BTCV_MEAN_DICE_FLOOR, dice


def test_ct_model_on_another_hospitals_ct():
    """The bundled CT: another patient, hospital and scanner than BTCV; reference labels by TotalSegmentator."""
    card = load_card(BUNDLED_MODELS / "btcv-ct-light" / "btcv-ct-light.json")
    volume = read_volume(SAMPLE_CT)
    prediction = Segmenter(card, device="cpu").segment(volume).labels
    dice = _organ_dice(card, prediction, sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_CT_LABELS))),
                       volume.geometry.spacing[::-1])
    assert np.mean(list(dice.values())) > CT_SAMPLE_MEAN_DICE_FLOOR, dice
    assert dice["liver"] > CT_SAMPLE_LIVER_DICE_FLOOR, dice


def test_ct_model_holds_up_on_other_storage_of_the_same_anatomy():
    """Flipped axes give the same labels; 512 x 512 grids as wide as 512 mm keep the Dice."""
    wide = ("0.7 mm, 512 x 512 in-plane", "1.0 mm, 512 x 512 in-plane")
    rows = {row["variant"]: row for row in robustness_rows(
        "btcv-ct-light", names=("as stored (3 mm, direction -1,-1,1)", "axes flipped (identity direction)") + wide)}
    stored = rows["as stored (3 mm, direction -1,-1,1)"]["mean_dice"]
    assert rows["axes flipped (identity direction)"]["mean_dice"] == pytest.approx(stored, abs=1e-9)
    for variant in wide:
        assert rows[variant]["mean_dice"] > stored - ROBUSTNESS_MARGIN, rows[variant]


def test_ct_model_finds_the_liver_in_a_tight_crop():
    """The bundled CT (an unseen patient) cut to the liver's bounding box plus 15 mm, as a liver study might be."""
    from dinseg.apps.bench import ct_variants
    from dinseg.core.geometry import Geometry
    from dinseg.core.io import ImageVolume

    card = load_card(BUNDLED_MODELS / "btcv-ct-light" / "btcv-ct-light.json")
    (crop, truth), = ct_variants(sitk.ReadImage(str(SAMPLE_CT)), sitk.ReadImage(str(SAMPLE_CT_LABELS)),
                                 names=("tight crop around the liver (+15 mm)",)).values()
    prediction = Segmenter(card, device="cpu").segment(
        ImageVolume(array=sitk.GetArrayFromImage(crop), geometry=Geometry.from_sitk(crop))).labels
    dice = _organ_dice(card, prediction, sitk.GetArrayFromImage(truth), crop.GetSpacing()[::-1])
    assert dice["liver"] > CT_CROP_LIVER_DICE_FLOOR, dice


def test_mr_model_on_an_unseen_chaos_patient():
    dice = _dice_on_shared_case("chaos-mr-light", "chaos_mr_t2", MR_CHAOS_PATIENT)
    assert np.mean(list(dice.values())) > MR_MEAN_DICE_FLOOR, dice


def test_each_abdominal_image_gets_the_model_of_its_modality():
    from dinseg.pipeline.segmenter import model_for

    assert model_for(read_volume(SAMPLE_CT))[0].name == "btcv-ct-light"
    assert model_for(read_volume(SAMPLE_MR))[0].name == "chaos-mr-light"


def test_cardiac_model_on_acdc_patients():
    """Patients of the recipe's held-out split, ED and ES frames as ACDC stores them, expert labels."""
    card = load_card(BUNDLED_MODELS / "acdc-light" / "acdc-light.json")
    segmenter = Segmenter(card, device="cpu")
    means = []
    for number in CARDIAC_TEST_PATIENTS:
        for image in sorted(acdc_patient(number).glob("patient*_frame??.nii.gz")):
            truth = sitk.GetArrayFromImage(sitk.ReadImage(str(image).replace(".nii.gz", "_gt.nii.gz")))
            volume = read_volume(image)
            scores = dice_and_hd95(segmenter.segment(volume).labels, truth, volume.geometry.spacing[::-1], 4)
            means.append(np.nanmean([s["dice"] for s in scores.values()]))
    assert np.mean(means) > CARDIAC_MEAN_DICE_FLOOR, means


def test_cardiac_function_of_a_cine_agrees_with_the_expert():
    """patient090's whole 4D cine: ED and ES found, LV EF close to the expert labels' EF."""
    from dinseg.reports.cardiac import cardiac_function

    folder = acdc_patient(90)
    card = load_card(BUNDLED_MODELS / "acdc-light" / "acdc-light.json")
    cine = read_volume(folder / "patient090_4d.nii.gz")
    labels = Segmenter(card, device="cpu").segment(cine).labels
    result = cardiac_function(list(labels), cine.geometry.spacing, card.labels)
    # Info.cfg: ED frame 4, ES frame 11 (1-based); the LV curve is flat near end-systole
    assert abs(result.ed_frame - 3) <= 1 and abs(result.es_frame - 10) <= 2, (result.ed_frame, result.es_frame)
    truth = [sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"patient090_frame{f:02d}_gt.nii.gz"))) for f in (4, 11)]
    expert = cardiac_function(truth, cine.geometry.spacing, card.labels, ed_frame=0, es_frame=1)
    error = result.figures["lv_ef_percent"] - expert.figures["lv_ef_percent"]
    assert abs(error) < CARDIAC_EF_TOLERANCE, (result.figures, expert.figures)
