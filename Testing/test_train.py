"""Training, resuming, distributed training, evaluation, the phantom and the ablation, at toy sizes."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from dinseg.apps.cli import main
from dinseg.core.errors import ConfigError
from dinseg.models import load_card
from dinseg.training.synth import write_acdc_phantom
from dinseg.training.train import DINTrainingLogic, TrainConfig

TINY = dict(layout="acdc", preset="light", spacing=(3.0, 3.0), orientation_mode="acquisition",
            normalization="percentile", normalization_low=0.5, normalization_high=99.5,
            enhancement={"method": "clahe", "tiles": 2}, patch_size=(48, 48), batch_size=2,
            iterations_per_epoch=3, warmup_iterations=2, workers=0, device="cpu", val_fraction=0.34)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("phantom")
    write_acdc_phantom(folder, n_cases=3, degradation="mild", seed=5)
    return folder


def _config(phantom, output, **overrides) -> TrainConfig:
    return TrainConfig(**{**TINY, "data": str(phantom), "output": str(output), **overrides})


def _weights(card_path) -> dict:
    card = load_card(card_path)
    return torch.load(card.weights_path, weights_only=True)


def test_a_run_folder_holds_everything_and_its_card_segments(phantom, tmp_path):
    run = tmp_path / "run"
    result = DINTrainingLogic(_config(phantom, run, epochs=2, model_name="tiny")).run()
    for name in ("config.json", "log.txt", "metrics.csv", "curves.png", "checkpoint.pt"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    # measured by this test on 2026-12-05: validation Dice 0.0618, loss 1.169 after 2 epochs of 3 iterations
    # (the same in repeated runs); the margins (0.02 Dice, 0.2 loss) allow other CPUs' float differences
    # over 6 iterations, not a Dice that counts the background (about 0.9) or is stuck at 0
    assert float(rows[-1]["dice/mean"]) == pytest.approx(0.0618, abs=0.02), rows[-1]
    assert float(rows[-1]["loss/total"]) == pytest.approx(1.169, abs=0.2), rows[-1]
    card = load_card(result["best_card"])
    assert [label.name for label in card.labels] == ["right ventricle", "myocardium", "left ventricle"]
    assert card.training["iterations"] == 6 and "dice/mean" in card.metrics["validation"]
    image = phantom / "patient001" / "patient001_frame01.nii.gz"
    assert main(["segment", str(image), "-o", str(tmp_path / "seg.seg.nrrd"), "--model", str(result["last_card"]),
                 "--device", "cpu"]) == 0
    assert sitk.ReadImage(str(tmp_path / "seg.seg.nrrd")).GetSize() == sitk.ReadImage(str(image)).GetSize()


def test_resume_continues_exactly(phantom, tmp_path):
    straight = DINTrainingLogic(_config(phantom, tmp_path / "straight", epochs=2, val_fraction=0.0)).run()
    DINTrainingLogic(_config(phantom, tmp_path / "resumed", epochs=1, val_fraction=0.0)).run()
    resumed = DINTrainingLogic(_config(phantom, tmp_path / "resumed", epochs=2, val_fraction=0.0),
                               resume=True).run()
    a, b = _weights(straight["last_card"]), _weights(resumed["last_card"])
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert resumed["epochs"] == 2


def test_resume_refuses_a_changed_configuration(phantom, tmp_path):
    DINTrainingLogic(_config(phantom, tmp_path / "run", epochs=1, val_fraction=0.0)).run()
    with pytest.raises(ConfigError, match="configuration the run started with"):
        DINTrainingLogic(_config(phantom, tmp_path / "run", epochs=2, lr=0.5, val_fraction=0.0), resume=True).run()


def test_cancel_leaves_a_checkpoint_to_resume_from(phantom, tmp_path):
    logic = DINTrainingLogic(_config(phantom, tmp_path / "run", epochs=3, val_fraction=0.0))
    reports = []

    def progress(report):
        reports.append(report)
        if report.epoch == 2:
            logic.cancel()

    logic.progress = progress
    logic.run()
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert json.loads(checkpoint["state"])["epoch"] == 1
    result = DINTrainingLogic(_config(phantom, tmp_path / "run", epochs=3, val_fraction=0.0), resume=True).run()
    assert result["epochs"] == 3


@pytest.mark.parametrize("problem, error, message", [
    ({"colour": "red"}, ConfigError, "unknown training option"),
    ({"data": ""}, ConfigError, "no training data"),
    ({"schedule": "linear"}, ConfigError, "schedule"),
    ({"balance_classes": "maybe"}, ConfigError, "balance_classes must be true or false"),
    ({"context_slices": 5}, ConfigError, "context_slices must be a whole number from 0 to 3"),
])
def test_bad_configuration_fails_before_training(phantom, tmp_path, problem, error, message):
    with pytest.raises(error, match=message):
        data = {**_config(phantom, tmp_path / "run").to_dict(), **problem}
        DINTrainingLogic(TrainConfig.from_dict(data)).run()
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_bad_data_fails_before_training(phantom, tmp_path, capsys):
    broken = tmp_path / "broken"
    write_acdc_phantom(broken, n_cases=2, degradation=0.2, seed=1)
    labels = broken / "patient002" / "patient002_frame01_gt.nii.gz"
    image = sitk.ReadImage(str(labels))
    array = sitk.GetArrayFromImage(image)
    array[0, 0, 0] = 7
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(image)
    sitk.WriteImage(bad, str(labels))
    code = main(["train", "--data", str(broken), "--layout", "acdc", "--output", str(tmp_path / "run"),
                 "--device", "cpu", "--epochs", "1"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines  # the refusal alone, before any training output
    error = lines[0]
    assert code == 2 and error.startswith("dinseg: error:") and "patient002_frame01" in error and "7" in error
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    (broken / "patient002" / "patient002_frame01_gt.nii.gz").unlink()
    assert main(["train", "--data", str(broken), "--layout", "acdc", "--output", str(tmp_path / "run2")]) == 2
    assert "patient002_frame01" in capsys.readouterr().err


def test_config_file_and_flags(phantom, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"data: {phantom}\nlayout: acdc\nbatch_size: 3\nspacing: [2.0, 2.0]\n")
    parsed = TrainConfig.from_file(config)
    assert parsed.batch_size == 3 and parsed.spacing == (2.0, 2.0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("batch_sise: 3\n")
    with pytest.raises(ConfigError, match="batch_sise"):
        TrainConfig.from_file(bad)


def test_a_config_file_takes_the_options_it_leaves_out_from_its_base(phantom, tmp_path):
    (tmp_path / "stage1.yaml").write_text(f"data: {phantom}\nlayout: acdc\nbatch_size: 3\nlr: 0.002\n")
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "stage2.yaml").write_text("base: ../stage1.yaml\nlr: 0.001\n")
    parsed = TrainConfig.from_file(tmp_path / "stages" / "stage2.yaml")
    assert (parsed.data, parsed.batch_size, parsed.lr) == (str(phantom), 3, 0.001)
    (tmp_path / "orphan.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml: no such configuration file"):
        TrainConfig.from_file(tmp_path / "orphan.yaml")
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="comes back to itself"):
        TrainConfig.from_file(tmp_path / "loop.yaml")


def test_two_process_distributed_training_gives_identical_weights(phantom, tmp_path):
    """torchrun with two CPU processes (gloo): same final weights on both ranks, files written once."""
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29731",
               "-m", "dinseg.apps.cli", "train", "--data", str(phantom), "--layout", "acdc", "--output", str(run),
               "--preset", "light", "--spacing", "3.0", "3.0", "--patch-size", "48", "48", "--batch-size", "2",
               "--epochs", "1", "--iterations-per-epoch", "2", "--workers", "0", "--device", "cpu",
               "--orientation-mode", "acquisition", "--normalization", "percentile", "--normalization-low", "0.5",
               "--normalization-high", "99.5", "--val-fraction", "0"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    digests = dict(re.findall(r"rank (\d) final weights sha256 ([0-9a-f]{64})", result.stderr))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"], result.stderr[-2000:]
    log_lines = (run / "log.txt").read_text(encoding="utf-8").splitlines()
    assert sum("epoch 1/1" in line for line in log_lines) == 1, "only rank 0 writes"
    assert len(list((run / "models" / "last").glob("*.pt"))) == 1


def test_evaluate_writes_csv_and_markdown(phantom, tmp_path, capsys):
    run = DINTrainingLogic(_config(phantom, tmp_path / "run", epochs=1, val_fraction=0.0)).run()
    out = tmp_path / "evaluation"
    assert main(["evaluate", "--model", str(run["last_card"]), "--data", str(phantom), "--split", "all",
                 "--device", "cpu", "-o", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "evaluation.csv")))
    assert len(rows) == 6 * 3 and {row["class"] for row in rows} == {"right ventricle", "myocardium", "left ventricle"}
    markdown = (out / "evaluation.md").read_text(encoding="utf-8")
    assert "mean ± sd" in markdown and "patient003_frame01" in markdown
    assert "| case |" in capsys.readouterr().out


def test_synth_command_writes_an_acdc_phantom(tmp_path):
    assert main(["synth", str(tmp_path / "p"), "--cases", "2", "--degradation", "severe", "--seed", "3"]) == 0
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["README.txt", "patient001", "patient002"]
    assert "phantom" in (tmp_path / "p" / "README.txt").read_text(encoding="utf-8").lower()
    assert main(["synth", str(tmp_path / "q"), "--degradation", "awful"]) == 2


def test_ablation_trains_every_variant_from_one_config_and_tabulates(phantom, tmp_path):
    from dinseg.training.ablation import AblationPlan, run_ablation

    base = _config(phantom, tmp_path / "unused", epochs=5, model_name="tiny", data_description="phantom: tiny")
    plan = AblationPlan(config=base, output=str(tmp_path / "ablation"), seeds=(0,), epochs=1,
                        iterations_per_epoch=2)
    rows = run_ablation(plan)
    assert [row["variant"] for row in rows] == ["single", "concat", "difm"]
    assert all(row["iterations"] == 2 for row in rows)
    # validation Dice after 2 iterations, measured by this test on 2026-12-05 (the same in repeated runs);
    # 0.02 of margin for other CPUs' float differences
    measured = {"single": 0.0576, "concat": 0.0205, "difm": 0.0761}
    assert {row["variant"]: row["dice"] for row in rows} == pytest.approx(measured, abs=0.02), rows
    assert all((tmp_path / "ablation" / "runs" / f"{v}-seed0" / "models" / "last").is_dir()
               for v in ("single", "concat", "difm"))
    table = (tmp_path / "ablation" / "ablation.md").read_text(encoding="utf-8")
    assert table.startswith("phantom validation patients") and all(f"| {v} |" in table
                                                                  for v in ("single", "concat", "difm"))
    params = {row["variant"]: row["parameters_m"] for row in rows}
    assert params["single"] < params["concat"] < params["difm"]
    without_validation = AblationPlan(config=dataclasses.replace(base, val_fraction=0.0), variants=("single",),
                                      output=str(tmp_path / "none"), seeds=(0,), epochs=1, iterations_per_epoch=1)
    with pytest.raises(ConfigError, match="no validation cases"):
        run_ablation(without_validation)


def test_ablation_command_takes_the_image_and_consistency_variants_and_refuses_others(tmp_path, capsys):
    from dinseg.apps.cli import build_parser

    parsed = build_parser().parse_args(["ablation", "c.yaml", "--variants", "image", "difm+consistency"])
    assert parsed.variants == ["image", "difm+consistency"]
    assert main(["ablation", "c.yaml", "--variants", "difm+foo", "--output", str(tmp_path / "a")]) == 2
    error = capsys.readouterr().err.strip()
    assert "unknown variant 'difm+foo'" in error and "\n" not in error
    assert not (tmp_path / "a").exists()


def test_an_interrupted_ablation_resumes_and_reuses_finished_runs(phantom, tmp_path, caplog):
    from dinseg.training.ablation import AblationPlan, run_ablation

    base = _config(phantom, tmp_path / "unused", model_name="tiny", data_description="phantom: tiny")
    plan = AblationPlan(config=base, output=str(tmp_path / "ablation"), variants=("single", "difm"), seeds=(0,),
                        epochs=2, iterations_per_epoch=2)

    def stop_in_the_second_epoch(report):
        if report.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        DINTrainingLogic(plan.run_config("single", 0), progress=stop_in_the_second_epoch).run()
    caplog.set_level(logging.INFO, logger="dinseg")
    first = run_ablation(plan)
    assert "resuming" in caplog.text and "after epoch 1" in caplog.text
    weights = {row["variant"]: tmp_path / "ablation" / "runs" / f"{row['variant']}-seed0" / "models" / "last"
               / f"tiny-{row['variant']}-seed0.pt" for row in first}
    written = {variant: path.stat().st_mtime_ns for variant, path in weights.items()}
    caplog.clear()
    again = run_ablation(plan)
    assert [row["dice"] for row in again] == [row["dice"] for row in first]
    assert {variant: path.stat().st_mtime_ns for variant, path in weights.items()} == written
    assert caplog.text.count("reusing the finished run") == 2
    longer = run_ablation(dataclasses.replace(plan, epochs=3))
    assert all(row["iterations"] == 6 for row in longer)
    assert all(path.stat().st_mtime_ns != written[variant] for variant, path in weights.items())


@pytest.mark.parametrize("config", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")),
                         ids=lambda path: path.stem)
def test_shipped_training_recipes_are_valid(config):
    parsed = TrainConfig.from_file(config)
    parsed.preprocessing()
    parsed.loss()
    assert parsed.model_name and parsed.data_description


def test_random_canvas_cuts_the_same_square_from_image_and_labels():
    from dinseg.training.train import random_canvas

    image = torch.arange(2 * 64 * 64, dtype=torch.float32).reshape(2, 1, 64, 64)
    labels = image[:, 0].long()
    sides = set()
    for step in range(20):
        cut_image, cut_labels = random_canvas(image, labels, (24, 48), np.random.default_rng([0, 0, step]))
        sides.add(cut_image.shape[-1])
        assert cut_image.shape[-2:] == cut_labels.shape[-2:] and cut_image.shape[-1] == cut_image.shape[-2]
        assert torch.equal(cut_image[:, 0].long(), cut_labels)
    assert len(sides) > 3 and min(sides) >= 24 and max(sides) <= 48
    again = random_canvas(image, labels, (24, 48), np.random.default_rng([0, 0, 5]))[0]
    assert torch.equal(again, random_canvas(image, labels, (24, 48), np.random.default_rng([0, 0, 5]))[0])
    assert random_canvas(image, labels, (0, 0), np.random.default_rng(0))[0] is image
    with pytest.raises(ConfigError, match="canvas_range"):
        TrainConfig(patch_size=(64, 64), canvas_range=(32, 96))


def test_class_balanced_sampling_draws_a_small_organ_as_often_as_a_large_one():
    from dinseg.training.data.sampling import PreparedCase, epoch_samples

    labels = np.zeros((40, 8, 8), np.uint8)
    labels[:36, 2:6, 2:6] = 1          # a large organ on 36 slices
    labels[36:38, 0, 0] = 2            # a small one on 2
    case = PreparedCase("case", np.zeros(labels.shape, np.float32), labels)
    small = set(range(36, 38))

    def small_share(balance):
        samples = epoch_samples([case], 4000, seed=0, epoch=0, foreground_fraction=1.0, balance_classes=balance)
        return sum(s in small for _, s in samples) / len(samples)

    assert small_share(False) == pytest.approx(2 / 38, abs=0.02)
    assert small_share(True) == pytest.approx(0.5, abs=0.03)
    assert epoch_samples([case], 50, 3, 1, 0.8, True) == epoch_samples([case], 50, 3, 1, 0.8, True)
    empty = PreparedCase("empty", np.zeros((5, 8, 8), np.float32), np.zeros((5, 8, 8), np.uint8))
    assert len(epoch_samples([empty], 10, 0, 0, 1.0, balance_classes=True)) == 10


def test_edge_sampling_draws_where_the_labelled_extent_starts_and_ends():
    from dinseg.training.data.sampling import PreparedCase, epoch_samples, extent_edge_slices

    labels = np.zeros((20, 8, 8), np.uint8)
    labels[3:15, 2:6, 2:6] = 1         # labelled on slices 3..14: edges 2, 3, 14, 15
    case = PreparedCase("case", np.zeros(labels.shape, np.float32), labels)
    at_stack_ends = PreparedCase("ends", np.zeros((4, 8, 8), np.float32), np.ones((4, 8, 8), np.uint8))
    empty = PreparedCase("empty", np.zeros((5, 8, 8), np.float32), np.zeros((5, 8, 8), np.uint8))
    assert extent_edge_slices([case, at_stack_ends, empty]) == [(0, 2), (0, 3), (0, 14), (0, 15), (1, 0), (1, 3)]

    def edge_share(fraction):
        samples = epoch_samples([case], 4000, seed=0, epoch=0, foreground_fraction=0.67, edge_fraction=fraction)
        return sum(s in (2, 3, 14, 15) for _, s in samples) / len(samples)

    plain = edge_share(0.0)                           # 4 of 20 slices, 2 of 12 labelled ones
    assert plain == pytest.approx(0.33 * 4 / 20 + 0.67 * 2 / 12, abs=0.02)
    assert edge_share(0.5) == pytest.approx(0.5 + 0.5 * plain, abs=0.03)
    assert epoch_samples([case], 50, 3, 1, 0.67) == epoch_samples([case], 50, 3, 1, 0.67, edge_fraction=0.0)
    assert epoch_samples([empty], 10, 0, 0, 0.67, edge_fraction=1.0) == epoch_samples([empty], 10, 0, 0, 0.67)
    for bad in (-0.1, 1.5, "half", True):
        with pytest.raises(ConfigError, match="edge_fraction must be a number within 0..1"):
            TrainConfig(edge_fraction=bad)


def test_context_reversal_gives_the_neighbours_in_reverse_stack_order():
    from dinseg.training.data.sampling import PreparedCase, TrainingSlices

    image = np.repeat(np.arange(6, dtype=np.float32)[:, None, None] / 10, 16, axis=1).repeat(16, axis=2)
    case = PreparedCase("case", image, np.zeros((6, 16, 16), np.uint8))
    samples = [(0, 3)] * 200

    def orders(reversal):
        slices = TrainingSlices([case], samples, None, (16, 16), seed=4, context_slices=1, context_reversal=reversal)
        return [tuple(np.round(slices[i]["image"][:, 8, 8].numpy() * 10).astype(int)) for i in range(len(samples))]

    assert set(orders(0.0)) == {(2, 3, 4)}
    assert set(orders(1.0)) == {(4, 3, 2)}
    half = orders(0.5)
    assert 0.4 < half.count((4, 3, 2)) / len(half) < 0.6 and set(half) == {(2, 3, 4), (4, 3, 2)}
    assert half == orders(0.5)                        # seeded by (seed, sample)
    with pytest.raises(ConfigError, match="context_reversal must be a number within 0..1"):
        TrainConfig(context_reversal=2)


def test_fine_tuning_starts_from_the_given_model(phantom, tmp_path, random_ct_model):
    first = DINTrainingLogic(_config(phantom, tmp_path / "first", epochs=1, val_fraction=0.0, preset="light",
                                     fusion="concat")).run()
    tuned = DINTrainingLogic(_config(phantom, tmp_path / "tuned", epochs=1, val_fraction=0.0, lr=1e-12,
                                     init_model=str(first["last_card"]), fusion="difm")).run()
    assert load_card(tuned["last_card"]).network.fusion == "concat"  # the card's network, not the preset
    a, b = _weights(first["last_card"]), _weights(tuned["last_card"])
    assert all(torch.allclose(a[key].float(), b[key].float(), atol=1e-3) for key in a)
    with pytest.raises(ConfigError, match="same classes"):
        DINTrainingLogic(_config(phantom, tmp_path / "bad", epochs=1, val_fraction=0.0,
                                 init_model=str(random_ct_model))).run()  # 9 CT classes, 4 here


def test_training_slices_carry_their_neighbours_in_stack_order():
    from dinseg.training.data.sampling import PreparedCase, TrainingSlices

    image = np.repeat(np.arange(5, dtype=np.float32)[:, None, None] / 10, 8, axis=1).repeat(8, axis=2)
    case = PreparedCase("case", image, np.zeros(image.shape, np.uint8))
    slices = TrainingSlices([case], [(0, 0), (0, 2), (0, 4)], None, (8, 8), seed=0, context_slices=1)
    first, middle, last = (slices[i]["image"][:, 0, 0].numpy() * 10 for i in range(3))
    assert np.allclose(middle, [1, 2, 3]) and np.allclose(first, [0, 0, 1]) and np.allclose(last, [3, 4, 4])
    assert TrainingSlices([case], [(0, 2)], None, (8, 8), seed=0)[0]["image"].shape == (1, 8, 8)


def test_structure_intensity_shifts_each_labelled_structure_by_its_own_amount():
    from dinseg.training.data.sampling import Augmentation, rand_structure_intensity

    label = torch.zeros((1, 16, 16))
    label[0, 2:8, 2:8], label[0, 9:14, 9:14] = 1, 2
    transform = rand_structure_intensity(prob=1.0, max_shift=0.3)
    transform.set_random_state(seed=0)
    shifts = []
    for _ in range(20):
        image = transform({"image": torch.full((3, 16, 16), 0.5), "label": label})["image"]
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])  # neighbours shift alike
        assert torch.all(image[:, label[0] == 0] == 0.5)             # background untouched
        first, second = (torch.unique(image[1][label[0] == value]) for value in (1, 2))
        assert len(first) == len(second) == 1                       # one shift per structure
        shifts.append((float(first) - 0.5, float(second) - 0.5))
    shifts = np.array(shifts)
    assert np.all(np.abs(shifts) <= 0.3 + 1e-6) and np.abs(shifts).max() > 0.1
    assert not np.allclose(shifts[:, 0], shifts[:, 1])             # structures move independently
    steps = [type(step).__name__ for step in Augmentation(structure_intensity=0.3).build((16, 16)).transforms]
    assert "_RandStructureIntensityd" in steps
    assert "_RandStructureIntensityd" not in [type(step).__name__ for step in Augmentation().build((16, 16)).transforms]


def test_a_one_slice_model_starts_a_2_5d_model_that_sees_the_neighbours(phantom, tmp_path):
    from dinseg.pipeline.segmenter import Segmenter
    from dinseg.core.io import read_volume
    from dinseg.models import load_network

    flat = DINTrainingLogic(_config(phantom, tmp_path / "flat", epochs=1, val_fraction=0.0)).run()
    wide = DINTrainingLogic(_config(phantom, tmp_path / "wide", epochs=1, val_fraction=0.0, lr=1e-12,
                                    context_slices=1, init_model=str(flat["last_card"]))).run()
    flat_card, wide_card = load_card(flat["last_card"]), load_card(wide["last_card"])
    assert (wide_card.network.in_channels, wide_card.preprocessing.context_slices) == (3, 1)
    volume = read_volume(phantom / "patient001" / "patient001_frame01.nii.gz")
    # exact comparisons in float32, spelled out (on a GPU the default would be float16)
    # the neighbours' weights start at zero: the 2.5D model labels exactly as the one-slice model did
    assert np.array_equal(Segmenter(flat_card, device="cpu", precision="float32").segment(volume).labels,
                          Segmenter(wide_card, device="cpu", precision="float32").segment(volume).labels)

    network = load_network(wide_card)
    torch.manual_seed(1)
    for encoder in (network.original_encoder, network.enhanced_encoder):
        encoder.stem[0].weight.data[:, 0::2] = torch.randn_like(encoder.stem[0].weight[:, 0::2])
    by_one = Segmenter(wide_card, device="cpu", network=network, batch_size=1,
                       precision="float32").segment(volume).labels
    by_four = Segmenter(wide_card, device="cpu", network=network, batch_size=4,
                        precision="float32").segment(volume).labels
    assert np.array_equal(by_one, by_four)      # neighbours cross batch boundaries unchanged
    changed = volume.array.copy()
    changed[3] = changed[3][::-1]
    altered = dataclasses.replace(volume, array=changed)
    by_neighbour = Segmenter(wide_card, device="cpu", network=network, precision="float32").segment(altered).labels
    assert not np.array_equal(by_neighbour[2], by_one[2]) or not np.array_equal(by_neighbour[4], by_one[4])
    assert np.array_equal(by_neighbour[0], by_one[0])    # two slices away: out of its sight


def test_a_card_whose_network_does_not_take_its_slices_is_refused(random_ct_model, tmp_path):
    from dinseg.core.errors import ModelError

    data = json.loads(random_ct_model.read_text())
    data["preprocessing"]["context_slices"] = 1
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="takes 1 input channel"):
        load_card(tmp_path / "bad.json")
