"""Class weights: the Segmenter applies them, ``dinseg calibrate`` fits them on training cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import SAMPLE_CT, acdc_patient
from dinseg.apps.cli import main
from dinseg.core.errors import InputError
from dinseg.pipeline.segmenter import Segmenter
from dinseg.core.io import read_volume
from dinseg.models import find_model, load_card, sha256_of


@pytest.fixture(scope="module")
def ct_volume(tmp_path_factory):
    """The real CT cut to 16 slices through the upper abdomen."""
    import SimpleITK as sitk

    path = tmp_path_factory.mktemp("ct") / "ct_crop.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(SAMPLE_CT))[:, :, 80:96], str(path))
    return read_volume(path)


def test_class_weights_move_the_arg_max_and_ones_change_nothing(random_ct_model, ct_volume):
    card = load_card(random_ct_model)
    plain = Segmenter(card, device="cpu", largest_component=False).segment(ct_volume).labels
    ones = Segmenter(card, device="cpu", largest_component=False,
                     class_weights=[1.0] * card.num_classes).segment(ct_volume).labels
    assert np.array_equal(plain, ones)
    favoured = int(np.bincount(plain.ravel(), minlength=card.num_classes)[1:].argmin()) + 1  # its rarest organ
    heavy = [1.0] * card.num_classes
    heavy[favoured] = 50.0
    weighted = Segmenter(card, device="cpu", largest_component=False, class_weights=heavy).segment(ct_volume).labels
    assert (weighted == favoured).sum() > (plain == favoured).sum()
    assert np.all(weighted[plain == favoured] == favoured)        # a favoured class only gains voxels


@pytest.mark.parametrize("weights", [[1.0, 2.0], [0.0] + [1.0] * 8, [-1.0] + [1.0] * 8, ["x"] * 9,
                                     [float("nan")] + [1.0] * 8])
def test_bad_class_weights_are_refused(random_ct_model, weights):
    with pytest.raises(InputError, match="class weights"):
        Segmenter(load_card(random_ct_model), device="cpu", class_weights=weights)


def test_the_card_s_class_weights_apply_by_default(random_ct_model, ct_volume, tmp_path):
    card = load_card(random_ct_model)
    card.postprocessing = dict(card.postprocessing, class_weights=[1.0] + [0.01] * 8)
    card.path = random_ct_model
    from_card = Segmenter(card, device="cpu").segment(ct_volume).labels
    given = Segmenter(load_card(random_ct_model), device="cpu",
                      class_weights=[1.0] + [0.01] * 8).segment(ct_volume).labels
    assert np.array_equal(from_card, given)
    assert not np.array_equal(from_card, Segmenter(load_card(random_ct_model), device="cpu").segment(ct_volume).labels)


def test_calibrate_corrects_the_cardiac_model_s_thick_myocardium_on_training_patients(tmp_path, capsys):
    """Two ACDC training patients (ED and ES): the fitted weights raise the mean Dice there and the
    written card segments with them; evaluating it on the same cases gives the Dice the fit reported."""
    data = acdc_patient(1).parents[1]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["patient001", "patient002"], "val": []}))
    output = tmp_path / "calibrated"
    assert main(["calibrate", "--model", "acdc-light", "--data", str(data), "--split-file", str(split),
                 "--rotations", "1", "--device", "cpu", "-o", str(output)]) == 0
    card = load_card(output / "acdc-light.json")
    original = find_model("acdc-light")
    weights = card.postprocessing["class_weights"]
    record = card.training["calibration"]
    assert card.postprocessing["largest_component"] is True and len(weights) == 4 and weights[0] == 1.0
    assert card.postprocessing["rotations"] == 1 and "--rotations 1" in card.training["calibration"]["command"]
    assert weights[2] < 1.0                                        # the myocardium, drawn too thick, is damped
    assert record["cases"] == 4 and record["mean_dice_after"] > record["mean_dice_before"]
    assert card.metrics == {} and sha256_of(card.weights_path) == original.weights.sha256
    assert "| myocardium |" in capsys.readouterr().out

    assert main(["evaluate", "--model", str(output / "acdc-light.json"), "--data", str(data), "--split-file",
                 str(split), "--split", "train", "--device", "cpu", "-o", str(tmp_path / "evaluation")]) == 0
    rows = [line.split(",") for line in (tmp_path / "evaluation" / "evaluation.csv").read_text().splitlines()[1:]]
    assert np.mean([float(row[2]) for row in rows]) == pytest.approx(record["mean_dice_after"], abs=1e-3)


def test_calibrate_never_writes_over_the_model(tmp_path, capsys):
    data = acdc_patient(1).parents[1]
    card = find_model("acdc-light")
    before = card.path.read_bytes()
    code = main(["calibrate", "--model", "acdc-light", "--data", str(data), "--split", "all",
                 "-o", str(card.path.parent)])
    assert code == 2 and card.path.read_bytes() == before
    assert "model's own folder" in capsys.readouterr().err
    for unwritable in ("/proc/calibrated", str(tmp_path / "missing" / "calibrated")):
        assert main(["calibrate", "--model", "acdc-light", "--data", str(data), "--split", "all", "-o", unwritable]) == 2
        assert "dinseg: error:" in capsys.readouterr().err            # refused before any case is segmented
    assert not (tmp_path / "missing").exists()
    assert main(["calibrate", "--model", "acdc-light", "--data", str(data), "--max-cases", "-1",
                 "-o", str(tmp_path / "out")]) == 2
    assert "--max-cases" in capsys.readouterr().err and not (tmp_path / "out").exists()
    # the MR model was trained with small rotations only: quarter turns would mislead it
    assert main(["calibrate", "--model", "chaos-mr-light", "--data", str(data), "--rotations", "4",
                 "-o", str(tmp_path / "out")]) == 2
    assert "--rotations 1" in capsys.readouterr().err and not (tmp_path / "out").exists()
