"""The inference-side variant study (issue 34): its recombined variants are the engine's own labels."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dinseg.core.io import read_volume
from dinseg.models import load_card
from dinseg.training.synth import write_acdc_phantom
from dinseg.training.train import DINTrainingLogic, TrainConfig
from dinseg.training.variant_study import acdc_cases, drop_open_cavities, main, stack_direction, study, summary


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    write_acdc_phantom(folder / "data", n_cases=3, degradation="mild", seed=5)
    config = TrainConfig(layout="acdc", preset="light", spacing=(3.0, 3.0), orientation_mode="acquisition",
                         normalization="percentile", normalization_low=0.5, normalization_high=99.5,
                         enhancement={"method": "clahe", "tiles": 2}, patch_size=(48, 48), batch_size=2,
                         iterations_per_epoch=3, warmup_iterations=1, workers=0, device="cpu", val_fraction=0.34,
                         epochs=1, data=str(folder / "data"), output=str(folder / "run"), model_name="tiny",
                         augmentation={"rotate_degrees": 180})
    card = load_card(DINTrainingLogic(config).run()["last_card"])
    split = folder / "split.json"
    split.write_text(json.dumps({"val": ["patient001"]}))
    return card, folder / "data", split


def test_each_variant_is_what_the_engine_gives(trained):
    from dinseg.pipeline.segmenter import Segmenter

    card, data, split = trained
    weights = {"none": [1, 1, 1, 1], "skewed": [1, 0.5, 2, 0.7]}
    rows = study(card, acdc_cases(data, split), weights, flips=False)
    assert [(r["patient"], r["phase"]) for r in rows] == [("patient001", "ED"), ("patient001", "ES")]
    volume = read_volume(data / "patient001" / "patient001_frame01.nii.gz")
    for (rotations, tta), (name, factors), (largest, clean) in (
            ((1, "r1"), ("none", weights["none"]), (False, "none")),
            ((2, "r2"), ("skewed", weights["skewed"]), (True, "lc")),
            ((4, "r4"), ("skewed", weights["skewed"]), (False, "none")),
            ((4, "r4"), ("none", weights["none"]), (True, "lc"))):
        labels = Segmenter(card, device="cpu", rotations=rotations, class_weights=factors,
                           largest_component=largest, fill_holes=False, precision="float32").segment(volume).labels
        entry = rows[0]["variants"][f"{tta}|{name}|{clean}"]
        assert entry["count"] == {str(k): int((labels == k).sum()) for k in (1, 2, 3)}, (tta, name, clean)
        assert entry["lv_slices"] == [int(x) for x in (labels == 3).sum((1, 2))]
    figures = summary(rows, "r2|none|lc")
    assert 0 <= figures["ED"] <= 1 and len(figures["lv_ef"]) == 3
    # the same stacks reversed: the expert's labels reversed with them, the network's input too
    reversed_rows = study(card, acdc_cases(data, split), {"none": [1, 1, 1, 1]}, flips=False, reverse_slices=True)
    assert reversed_rows[0]["truth_lv_slices"] == rows[0]["truth_lv_slices"][::-1]
    flipped = read_volume(data / "patient001" / "patient001_frame01.nii.gz")
    flipped.array = np.ascontiguousarray(flipped.array[::-1])
    labels = Segmenter(card, device="cpu", rotations=1, class_weights=[1, 1, 1, 1], largest_component=False,
                       fill_holes=False, precision="float32").segment(flipped).labels
    assert reversed_rows[0]["variants"]["r1|none|none"]["lv_slices"] == [int(x) for x in (labels == 3).sum((1, 2))]
    assert {stack_direction(reversed_rows[0]), stack_direction(rows[0])} == {"base first", "base last"} or \
        rows[0]["truth_lv_slices"] == rows[0]["truth_lv_slices"][::-1]


def test_summary_reads_ejection_fraction_errors_from_counts(tmp_path, capsys):
    def row(phase, model_lv, expert_lv):
        return {"patient": "p", "phase": phase, "group": "g", "voxel_ml": 0.01,
                "truth": {"1": 100, "2": 100, "3": expert_lv},
                "variants": {"v": {"dice": {"1": 1.0, "2": 1.0, "3": 0.5}, "count": {"1": 100, "2": 100, "3": model_lv}}}}
    rows = [row("ED", 1000, 1000), row("ES", 600, 400)]   # EF 40 % against the expert's 60 %
    figures = summary(rows, "v")
    assert figures["lv_ef"] == pytest.approx((20.0, -20.0, 20.0))
    assert figures["lv_esv"] == pytest.approx((2.0, 2.0, 2.0))   # 200 voxels of 0.01 mL
    assert math.isclose(figures["ES"], 2.5 / 3)
    path = tmp_path / "s.json"
    path.write_text(json.dumps(rows))
    assert main(["--summary", str(path)]) == 0
    assert "| v | 0.833 | 0.833 | 0.833 |" in capsys.readouterr().out
    for one in rows:
        one["truth_lv_slices"] = [0, 30, 20, 10]           # the cavity narrows down the stack: base first
        one["variants"]["v"]["lv_slices"] = [7, 30, 20, 10]  # 7 voxels above the expert's base
    assert summary(rows, "v")["beyond"] == pytest.approx({"ED": 0.07, "ES": 0.07})
    path.write_text(json.dumps(rows))
    assert main(["--summary", str(path), "--by-direction"]) == 0
    printed = capsys.readouterr().out
    assert f"{path}, base first: 1 patients" in printed and f"{path}, base last: 0 patients" in printed
    assert stack_direction({"truth_lv_slices": [5, 10, 40, 0]}) == "base last"


def test_a_cavity_without_a_wall_is_dropped_and_one_inside_its_wall_kept():
    labels = np.zeros((3, 32, 32), np.uint8)
    for z in range(3):
        labels[z, 8:24, 8:24] = 2          # a wall
        labels[z, 11:21, 11:21] = 3        # the cavity inside it
    labels[0, 8:24, 8:18] = 0              # slice 0: more than half the wall gone
    labels[0, 11:21, 11:21] = 3
    labels[2, :, :] = 0
    labels[2, 11:21, 11:21] = 3            # slice 2: no wall at all
    cleaned = drop_open_cavities(labels)
    assert (cleaned[1] == labels[1]).all()                       # enclosed: kept
    assert not (cleaned[2] == 3).any()                           # no wall: dropped
    assert not (cleaned[0] == 3).any() and (cleaned[0] == 2).sum() == (labels[0] == 2).sum()
    assert (drop_open_cavities(labels, threshold=0.2)[0] == 3).any()   # half a wall passes a lower bar
