"""The DIN network: shapes for every preset and fusion variant, gradient flow, configuration round trip."""

from __future__ import annotations

import json

import pytest
import torch

from dinseg.nets import FUSION_VARIANTS, PRESETS, NetConfig, build_network


@pytest.mark.parametrize("preset", ["light", "medium"])
@pytest.mark.parametrize("fusion", FUSION_VARIANTS)
@pytest.mark.parametrize("batch, height, width", [(1, 200, 176), (3, 37, 53), (1, 64, 64)])
def test_logits_have_input_size_for_every_variant(preset, fusion, batch, height, width):
    torch.manual_seed(0)
    net = build_network(NetConfig.from_preset(preset, fusion=fusion, num_classes=4)).eval()
    image = torch.rand(batch, 1, height, width)
    with torch.no_grad():
        logits = net(image, image.flip(-1))
    assert logits.shape == (batch, 4, height, width)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("fusion", FUSION_VARIANTS)
def test_paper_preset_builds_with_convnext_base_widths(fusion):
    config = NetConfig.from_preset("paper", fusion=fusion)
    assert config.widths == (128, 256, 512, 1024) and config.depths == (3, 3, 27, 3)
    net = build_network(config)
    params = sum(p.numel() for p in net.parameters())
    encoder = sum(p.numel() for p in net.original_encoder.parameters())
    assert 80e6 < encoder < 100e6  # ConvNeXt-base has about 88 M
    assert params > (2 * encoder if fusion not in ("single", "image") else encoder)


def test_paper_preset_forward_shape_at_odd_size():
    net = build_network(NetConfig.from_preset("paper", num_classes=9)).eval()
    image = torch.rand(1, 1, 37, 45)
    with torch.no_grad():
        assert net(image, image).shape == (1, 9, 37, 45)


def _grads_after_backward(fusion: str):
    torch.manual_seed(0)
    net = build_network(NetConfig.from_preset("light", fusion=fusion, num_classes=3))
    image = torch.rand(2, 1, 48, 40)
    net(image, 1 - image).square().mean().backward()
    return net


@pytest.mark.parametrize("fusion", ["difm", "concat"])
def test_gradients_reach_both_encoders_and_every_fusion_module(fusion):
    net = _grads_after_backward(fusion)
    for name, module in [("original encoder", net.original_encoder), ("enhanced encoder", net.enhanced_encoder),
                         *[(f"fusion {i}", m) for i, m in enumerate(net.fusions)]]:
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads), f"{name}: a parameter got no gradient"
        assert sum(g.abs().sum() for g in grads) > 0, f"{name}: all gradients are zero"
    assert len(net.fusions) == 4


def test_difm_branches_both_receive_gradients():
    net = _grads_after_backward("difm")
    for fusion in net.fusions:
        for branch in (fusion.original_queries, fusion.enhanced_queries):
            assert branch.to_key_value.weight.grad.abs().sum() > 0


def test_single_variant_ignores_the_enhanced_image():
    net = build_network(NetConfig.from_preset("light", fusion="single", num_classes=3)).eval()
    assert net.enhanced_encoder is None and not net.uses_enhanced
    image = torch.rand(1, 1, 32, 32, requires_grad=True)
    enhanced = torch.rand(1, 1, 32, 32, requires_grad=True)
    net(image, enhanced).sum().backward()
    assert enhanced.grad is None
    with torch.no_grad():
        assert torch.equal(net(image, None), net(image, enhanced))


def test_enhanced_image_changes_the_difm_output():
    torch.manual_seed(0)
    net = build_network(NetConfig.from_preset("light", num_classes=3)).eval()
    image = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(net(image, image), net(image, torch.rand_like(image)))


def test_shared_encoders_option_uses_one_set_of_weights():
    shared = build_network(NetConfig.from_preset("light", share_encoders=True))
    separate = build_network(NetConfig.from_preset("light"))
    assert shared.enhanced_encoder is shared.original_encoder
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert count(separate) - count(shared) == sum(p.numel() for p in separate.enhanced_encoder.parameters())


def test_missing_enhanced_image_is_a_clear_error():
    net = build_network(NetConfig.from_preset("light"))
    with pytest.raises(ValueError, match="needs an enhanced image"):
        net(torch.rand(1, 1, 32, 32))


@pytest.mark.parametrize("preset", list(PRESETS))
def test_config_round_trips_through_json(preset):
    config = NetConfig.from_preset(preset, fusion="concat", num_classes=4)
    assert NetConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("bad, message", [({"fusion": "sum"}, "fusion"), ({"widths": [8, 16]}, "4 entries"),
                                          ({"colour": 1}, "unknown"), ({"heads": [5, 2, 4, 8]}, "divisible")])
def test_bad_configuration_is_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        NetConfig.from_dict({**NetConfig().to_dict(), **bad})


def test_bench_model_prints_every_variant_against_its_baseline(capsys):
    from dinseg.apps.cli import main

    assert main(["bench-model", "--presets", "light", "--size", "64", "--repeats", "1", "--threads", "1",
                 "--cpu-only"]) == 0
    table = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| model")}
    assert set(rows) == {"U-Net, same widths (light)", "DIN light single", "DIN light concat", "DIN light difm",
                         "DIN light image", "MONAI BasicUNet (default widths)"}
    assert rows["U-Net, same widths (light)"][-1].strip() == "1.00"
    parameters = {name: float(cells[0]) for name, cells in rows.items()}
    assert parameters["DIN light single"] < parameters["DIN light concat"] < parameters["DIN light difm"]
    assert parameters["DIN light single"] <= parameters["DIN light image"] < parameters["DIN light concat"]
    assert all(float(cells[2]) > 0 for cells in rows.values())
