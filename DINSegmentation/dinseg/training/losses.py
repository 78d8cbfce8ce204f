"""The DIN training loss: weighted cross-entropy + Dice + multi-scale boundary loss."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LossConfig:
    """Weights of ``ce_weight * CE + dice_weight * Dice + boundary_weight * L_bnd``.

    The CE and Dice weights are the paper's (0.3, 0.7). ``boundary_scales`` are the average
    pooling factors of the boundary loss (1x, 1/2, 1/4). ``include_background`` applies to
    Dice and the boundary term.
    """

    ce_weight: float = 0.3
    dice_weight: float = 0.7
    boundary_weight: float = 1.0
    boundary_scales: Tuple[int, ...] = (1, 2, 4)
    include_background: bool = False

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data["boundary_scales"] = list(self.boundary_scales)
        return data

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "LossConfig":
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown loss configuration key(s): {', '.join(unknown)}")
        config = cls(**data)
        config.boundary_scales = tuple(int(s) for s in config.boundary_scales)
        return config


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude per channel: (B, C, H, W) -> (B, C, H, W).

    The kernels are scaled by 1/8 so that a unit step gives a gradient of 0.5 per pixel;
    replicate padding keeps image borders from looking like edges.
    """
    channels = x.shape[1]
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device,
                      dtype=x.dtype) / 8
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1).repeat(channels, 1, 1, 1)  # (2C, 1, 3, 3)
    gradients = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernels, groups=channels)
    gx, gy = gradients[:, 0::2], gradients[:, 1::2]
    return torch.sqrt(gx * gx + gy * gy + 1e-12)


def boundary_loss(probabilities: torch.Tensor, one_hot: torch.Tensor, scales=(1, 2, 4)) -> torch.Tensor:
    """Multi-scale boundary loss: sum over s of mean |G(pool_s(P)) - G(pool_s(Y))|.

    probabilities, one_hot: (B, C, H, W); G is :func:`sobel_magnitude`, pool_s an s x s
    average pooling. Zero when the prediction equals the one-hot target.
    """
    total = probabilities.new_zeros(())
    for scale in scales:
        p, y = (probabilities, one_hot) if scale == 1 else (F.avg_pool2d(probabilities, scale, ceil_mode=True),
                                                            F.avg_pool2d(one_hot, scale, ceil_mode=True))
        total = total + (sobel_magnitude(p) - sobel_magnitude(y)).abs().mean()
    return total


def soft_dice_loss(probabilities: torch.Tensor, one_hot: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """1 - mean over classes of the batch soft Dice. probabilities, one_hot: (B, C, H, W).

    Sums run over the whole batch per class, so a class absent from one slice does not make
    that slice's Dice undefined.
    """
    dims = (0, 2, 3)
    intersection = (probabilities * one_hot).sum(dims)
    denominator = probabilities.sum(dims) + one_hot.sum(dims)
    return 1 - ((2 * intersection + smooth) / (denominator + smooth)).mean()


class DINLoss(nn.Module):
    """``0.3 * CE + 0.7 * Dice + lambda * L_bnd`` (weights from :class:`LossConfig`).

    forward(logits (B, K, H, W), target (B, H, W) int64 class indices) -> scalar.
    """

    def __init__(self, num_classes: int, config: LossConfig = None):
        super().__init__()
        self.num_classes = num_classes
        self.config = config or LossConfig()

    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Each weighted term and the total, for logging: keys ce, dice, boundary, total."""
        logits = logits.float()
        probabilities = logits.softmax(dim=1)
        one_hot = F.one_hot(target, self.num_classes).permute(0, 3, 1, 2).to(probabilities.dtype)
        first = 0 if self.config.include_background else 1
        ce = F.cross_entropy(logits, target)
        dice = soft_dice_loss(probabilities[:, first:], one_hot[:, first:])
        boundary = boundary_loss(probabilities[:, first:], one_hot[:, first:], self.config.boundary_scales)
        total = (self.config.ce_weight * ce + self.config.dice_weight * dice
                 + self.config.boundary_weight * boundary)
        return {"ce": ce, "dice": dice, "boundary": boundary, "total": total}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.terms(logits, target)["total"]
