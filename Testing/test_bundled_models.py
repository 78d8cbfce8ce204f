"""The bundled models: honest cards, checked weights, and guards against regressions in accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from dinseg.bench import robustness_rows
from dinseg.infer import Segmenter
from dinseg.io import read_volume
from dinseg.metrics import dice_and_hd95
from dinseg.models import BUNDLED_MODELS, list_models, load_card, load_network, sha256_of
from conftest import SAMPLES, acdc_patient

BUNDLED = ("abdomen-ct-light", "acdc-light")

# Floors sit below what the shipped weights measured (README "Results"), leaving room for
# CPU-to-CPU float differences but not for a broken pipeline: CT training patient mean Dice 0.948,
# weakest organ 0.826 (pancreas); 0.925 at 0.7 mm 512 x 512. Cardiac: see the constants below.
CT_MEAN_DICE_FLOOR = 0.92
CT_ORGAN_DICE_FLOOR = 0.78
ROBUSTNESS_MARGIN = 0.05
#: three unseen ACDC patients of the validation split (ED and ES): measured mean Dice 0.902
CARDIAC_TEST_PATIENTS = (4, 11, 17)
CARDIAC_MEAN_DICE_FLOOR = 0.87
#: patient090's whole cine (unseen): LV EF 45.4 % from the model against 44.9 % from the expert's
#: ED/ES labels (measured error 0.5 points); the issue's target for the mean error is 4 points
CARDIAC_EF_TOLERANCE = 4.0


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
    ct = load_card(BUNDLED_MODELS / "abdomen-ct-light" / "abdomen-ct-light.json")
    assert "ONE patient" in ct.training["data"] and "TotalSegmentator" in ct.training["data"]
    cardiac = load_card(BUNDLED_MODELS / "acdc-light" / "acdc-light.json")
    assert "ACDC" in cardiac.training["data"] and "Bernard" in cardiac.description
    assert "not a clinical" in cardiac.limitations.lower() and cardiac.anatomy == "heart"


def test_ct_model_agrees_with_totalsegmentator_on_its_training_patient():
    """A regression guard (this is the training scan: it measures fit, not generalisation)."""
    card = load_card(BUNDLED_MODELS / "abdomen-ct-light" / "abdomen-ct-light.json")
    volume = read_volume(SAMPLES / "abdomen_ct.nii.gz")
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLES / "abdomen_ct_totalsegmentator_labels.nii.gz")))
    prediction = Segmenter(card, device="cpu").segment(volume).labels
    scores = dice_and_hd95(prediction, truth, volume.geometry.spacing[::-1], card.num_classes)
    dice = {card.labels[value - 1].name: score["dice"] for value, score in scores.items()}
    assert np.mean(list(dice.values())) > CT_MEAN_DICE_FLOOR, dice
    assert min(dice.values()) > CT_ORGAN_DICE_FLOOR, dice


def test_ct_model_holds_up_on_other_storage_of_the_same_anatomy():
    rows = {row["variant"]: row for row in robustness_rows(
        "abdomen-ct-light", names=("as stored (3 mm, direction -1,-1,1)", "axes flipped (identity direction)",
                                   "0.7 mm, 512 x 512 in-plane"))}
    stored = rows["as stored (3 mm, direction -1,-1,1)"]["mean_dice"]
    assert rows["axes flipped (identity direction)"]["mean_dice"] == pytest.approx(stored, abs=1e-9)
    assert rows["0.7 mm, 512 x 512 in-plane"]["mean_dice"] > stored - ROBUSTNESS_MARGIN


def test_cardiac_model_on_unseen_acdc_patients():
    """Patients of the held-out split (never trained on), ED and ES frames, expert labels."""
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


def test_cardiac_function_of_an_unseen_cine_agrees_with_the_expert():
    """patient090's whole 4D cine: ED and ES found, LV EF close to the expert labels' EF."""
    from dinseg.cardiac import cardiac_function

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
