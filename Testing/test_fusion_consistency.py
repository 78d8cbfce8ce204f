"""Issue 34's two seed methods as options: ``fusion: image`` (Fuse4Seg) and ConDSeg's consistency reinforcement."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from dinseg.core.errors import ConfigError
from dinseg.models import load_card
from dinseg.nets import NetConfig, build_network
from dinseg.nets.difm import ImageFusion
from dinseg.training.consistency import DEGRADATIONS, check_consistency, consistency_loss, degrade
from dinseg.training.synth import write_acdc_phantom
from dinseg.training.train import DINTrainingLogic, TrainConfig

TINY = dict(layout="acdc", preset="light", spacing=(3.0, 3.0), orientation_mode="acquisition",
            normalization="percentile", normalization_low=0.5, normalization_high=99.5,
            enhancement={"method": "clahe", "tiles": 2}, patch_size=(48, 48), batch_size=2,
            iterations_per_epoch=2, warmup_iterations=1, workers=0, device="cpu", val_fraction=0.34)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantom")
    write_acdc_phantom(folder, n_cases=3, degradation="mild", seed=5)
    return folder


# -- fusion: image -------------------------------------------------------------------------

def test_image_fusion_starts_as_the_average_and_keeps_shapes():
    fusion = ImageFusion(3)
    image, enhanced = torch.rand(2, 3, 33, 47), torch.rand(2, 3, 33, 47)
    fused = fusion(image, enhanced)
    assert fused.shape == image.shape
    assert torch.allclose(fused, (image + enhanced) / 2, atol=1e-6)   # zero-initialised last layer
    assert sum(p.numel() for p in fusion.parameters()) == 3302   # two 3x3 convs of 16 and a 1x1 out


def test_image_variant_runs_one_encoder_on_the_fused_image():
    torch.manual_seed(0)
    config = NetConfig.from_preset("light", num_classes=4, fusion="image", in_channels=3)
    net = build_network(config)
    single = build_network(dataclasses.replace(config, fusion="single"))
    assert net.uses_enhanced and net.enhanced_encoder is None and len(net.fusions) == 0
    extra = sum(p.numel() for p in net.parameters()) - sum(p.numel() for p in single.parameters())
    assert extra == sum(p.numel() for p in net.image_fusion.parameters()) > 0
    image = torch.rand(2, 3, 40, 56)
    logits, features = net(image, 1 - image, return_features=True)
    assert logits.shape == (2, 4, 40, 56)
    assert [f.shape[1] for f in features] == [16, 24, 48, 96, 192]
    with pytest.raises(ValueError, match="enhanced image"):
        net(image, None)
    # the enhanced image matters: another one gives other logits
    assert not torch.allclose(net(image, image), logits)
    logits.square().mean().backward()
    assert all(p.grad is not None for p in net.image_fusion.parameters())


def test_fusion_image_trains_a_step_and_its_card_round_trips(phantom, tmp_path):
    config = TrainConfig(**{**TINY, "data": str(phantom), "output": str(tmp_path / "run"), "epochs": 1,
                            "fusion": "image", "model_name": "tiny-image"})
    result = DINTrainingLogic(config).run()
    card = load_card(result["last_card"])
    assert card.network.fusion == "image" and card.training["iterations"] == 2
    (tmp_path / "copy").mkdir()
    saved = card.save(tmp_path / "copy" / "tiny-image.json")
    (tmp_path / "copy" / card.weights.file).write_bytes(card.weights_path.read_bytes())
    again = load_card(saved)
    assert again.network == card.network and again.to_dict()["network"]["fusion"] == "image"
    from dinseg.models.card import load_network

    net = load_network(again)
    assert net.image_fusion is not None
    trained = torch.load(card.weights_path, weights_only=True)
    # one training step moved the fusion away from the plain average it starts as
    assert float(trained["image_fusion.out.weight"].abs().sum()) > 0


# -- consistency reinforcement ---------------------------------------------------------------

def test_consistency_loss_is_zero_for_identical_features_and_positive_otherwise():
    torch.manual_seed(0)
    features = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8)]
    assert float(consistency_loss(features, [f.clone() for f in features])) == 0.0
    assert float(consistency_loss(features, [f + 0.1 * torch.randn_like(f) for f in features])) > 0
    assert float(consistency_loss(features, [2 * f for f in features])) > 0.5   # a rescaled copy is not consistent
    assert float(consistency_loss(features, [torch.zeros_like(f) for f in features])) == pytest.approx(1.0, rel=1e-4)
    with pytest.raises(ValueError, match="shapes differ"):
        consistency_loss(features[:1], features[1:])


def test_consistency_loss_pulls_the_degraded_features_not_the_clean_ones():
    clean = torch.randn(1, 4, 5, 5, requires_grad=True)
    degraded = torch.randn(1, 4, 5, 5, requires_grad=True)
    consistency_loss([clean], [degraded]).backward()
    assert clean.grad is None and float(degraded.grad.abs().sum()) > 0


@pytest.mark.parametrize("name", DEGRADATIONS)
def test_each_named_degradation_changes_the_image_and_stays_in_range(name):
    image = torch.rand(3, 3, 32, 32)
    out = degrade(image, [name], 1.0, torch.Generator().manual_seed(1))
    assert out.shape == image.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert float((out - image).abs().mean()) > 0.005
    again = degrade(image, [name], 1.0, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)          # the generator makes it reproducible
    assert float((degrade(image, [name], 0.1, torch.Generator().manual_seed(1)) - image).abs().mean()) < \
        float((out - image).abs().mean())   # weaker with a lower strength


def test_degradations_change_the_channels_of_a_sample_alike():
    image = torch.rand(1, 1, 16, 16).repeat(1, 3, 1, 1)
    out = degrade(image, ["illumination", "gamma", "contrast"], 1.0, torch.Generator().manual_seed(2))
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 0], out[:, 2])


def test_training_with_consistency_logs_its_term(phantom, tmp_path):
    import csv

    config = TrainConfig(**{**TINY, "data": str(phantom), "output": str(tmp_path / "run"), "epochs": 1,
                            "fusion": "difm", "model_name": "tiny-cr",
                            "consistency": {"weight": 0.1, "degradations": ["gamma", "noise"]}})
    DINTrainingLogic(config).run()
    row = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))[-1]
    assert float(row["loss/consistency"]) > 0 and math.isfinite(float(row["loss/total"]))


def test_ablation_names_a_consistency_variant():
    from dinseg.training.ablation import AblationPlan, parse_variant

    assert parse_variant("difm+consistency") == ("difm", True) and parse_variant("image") == ("image", False)
    base = TrainConfig(**{**TINY, "data": "x", "consistency": {"strength": 0.5}})
    plan = AblationPlan(config=base, output="runs/a", seeds=(0,), epochs=1)
    on, off = plan.run_config("difm+consistency", 0), plan.run_config("difm", 0)
    assert on.consistency_options["weight"] == 0.1 and on.consistency_options["strength"] == 0.5
    assert off.consistency_options["weight"] == 0.0 and on.output != off.output
    for bad in ("sum", "difm+mixup"):
        with pytest.raises(ConfigError, match="unknown variant"):
            parse_variant(bad)


# -- configuration -----------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    ({"fusion": "sum"}, "fusion must be one of single, concat, difm, image"),
    ({"consistency": {"weight": -1}}, "consistency weight must be a number >= 0"),
    ({"consistency": {"weight": float("nan")}}, "consistency weight must be a number >= 0"),
    ({"consistency": {"weight": True}}, "consistency weight must be a number >= 0"),
    ({"consistency": {"degradations": ["blur"]}}, "unknown degradation"),
    ({"consistency": {"degradations": []}}, "non-empty list"),
    ({"consistency": {"degradations": "noise"}}, "non-empty list"),
    ({"consistency": {"strength": 0}}, "strength must be in"),
    ({"consistency": {"strength": 3}}, "strength must be in"),
    ({"consistency": {"stages": [5]}}, "stages must be"),
    ({"consistency": {"wieght": 0.1}}, "unknown consistency option"),
    ({"consistency": [0.1]}, "must be a mapping"),
])
def test_bad_options_are_refused_in_one_line(options, message):
    with pytest.raises(ConfigError, match=message) as error:
        TrainConfig.from_dict({"data": "x", **options})
    assert "\n" not in str(error.value)


def test_consistency_defaults_are_off_and_filled_in():
    assert check_consistency({}) == {"weight": 0.0, "degradations": list(DEGRADATIONS), "strength": 1.0,
                                     "stages": [1, 2, 3, 4]}
    assert TrainConfig(data="x").consistency_options["weight"] == 0.0
    assert TrainConfig.from_dict({"data": "x", "fusion": "image",
                                  "consistency": {"weight": 0.2, "stages": [4, 3, 3]}}).consistency_options["stages"] == [3, 4]
