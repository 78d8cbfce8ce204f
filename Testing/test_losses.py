"""The DIN loss: boundary term, Dice + CE on toy cases, and optimisation on a real slice."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from dinseg.training.losses import DINLoss, LossConfig, boundary_loss, soft_dice_loss

from conftest import SAMPLE_CT, SAMPLE_CT_LABELS


def _square_target(shift: int = 0, size: int = 48) -> torch.Tensor:
    target = torch.zeros(1, size, size, dtype=torch.long)
    target[0, 12 + shift:36 + shift, 12:36] = 1
    return target


def _one_hot(target: torch.Tensor, classes: int = 2) -> torch.Tensor:
    return F.one_hot(target, classes).permute(0, 3, 1, 2).float()


def test_boundary_loss_is_zero_for_a_perfect_prediction():
    target = _one_hot(_square_target())
    assert boundary_loss(target, target).item() == pytest.approx(0.0, abs=1e-9)


def test_boundary_loss_grows_as_the_predicted_boundary_shifts():
    truth = _one_hot(_square_target())
    losses = [boundary_loss(_one_hot(_square_target(shift)), truth).item() for shift in (0, 1, 3, 6)]
    assert losses[0] < 1e-9 < losses[1] < losses[2] < losses[3]


def test_boundary_loss_sums_three_scales():
    truth, shifted = _one_hot(_square_target()), _one_hot(_square_target(2))
    single = boundary_loss(shifted, truth, scales=(1,)).item()
    assert boundary_loss(shifted, truth).item() > single > 0


def test_dice_and_cross_entropy_behave_on_a_toy_case():
    target = _square_target()
    perfect_logits = _one_hot(target) * 20 - 10
    wrong_logits = -perfect_logits
    loss = DINLoss(2)
    good, bad = loss.terms(perfect_logits, target), loss.terms(wrong_logits, target)
    assert good["dice"].item() < 1e-3 and good["ce"].item() < 1e-3
    assert bad["dice"].item() > 0.99 and bad["ce"].item() > 10
    uniform = loss.terms(torch.zeros(1, 2, 48, 48), target)
    assert uniform["ce"].item() == pytest.approx(np.log(2), rel=1e-4)
    assert soft_dice_loss(torch.full((1, 1, 4, 4), 0.5), torch.ones(1, 1, 4, 4)).item() == pytest.approx(1 / 3, rel=1e-4)


def test_total_uses_the_configured_weights():
    target = _square_target(3)
    logits = torch.randn(1, 2, 48, 48)
    config = LossConfig(ce_weight=0.3, dice_weight=0.7, boundary_weight=2.0)
    terms = DINLoss(2, config).terms(logits, target)
    expected = 0.3 * terms["ce"] + 0.7 * terms["dice"] + 2.0 * terms["boundary"]
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_background_is_excluded_from_dice_and_boundary_by_default():
    target = _square_target()
    all_background = _one_hot(torch.zeros_like(target)) * 20 - 10  # misses the square entirely
    with_background = DINLoss(2, LossConfig(include_background=True)).terms(all_background, target)
    without = DINLoss(2).terms(all_background, target)
    assert without["dice"].item() == pytest.approx(1.0, abs=1e-3)  # only the missed foreground counts
    assert with_background["dice"].item() < 0.7  # the well-predicted background halves it


def test_a_few_steps_on_a_real_slice_lower_the_loss():
    from dinseg.nets import NetConfig, build_network

    image = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_CT)))[84]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_CT_LABELS)))[84]
    x = torch.from_numpy(np.clip((image.astype(np.float32) + 125) / 400, 0, 1))[None, None, :96, 13:109]
    y = torch.from_numpy(labels.astype(np.int64))[None, :96, 13:109]
    assert len(torch.unique(y)) >= 3, "the crop should hold several organs"
    torch.manual_seed(0)
    net = build_network(NetConfig.from_preset("light", num_classes=9))
    criterion = DINLoss(9)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = criterion(net(x, 1 - x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
