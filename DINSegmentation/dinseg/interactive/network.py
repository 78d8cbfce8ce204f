"""The refinement network and its configuration.

A small 2D UNet (instance norm, channels e.g. 16-32-64-128) applied to every slice of a crop
(2.5D). Its input per slice, (B, 8, S, S) with S = ``RefinerConfig.size``:

    0-2  image of the slice below, the slice, the slice above (normalised to [0, 1])
    3-5  the structure's current mask on the same three slices
    6-7  positive and negative click maps (3D Gaussians in mm, see ``clicks``)

Output: (B, 1, S, S) logits of the corrected mask. The mask channel of the slice is added to the
logits with a learned gain, so an untrained residual starts out returning the current mask.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping

from ..core.errors import ConfigError
from .clicks import CLICK_SHAPES

#: input channels: three image slices, three mask slices, positive and negative click maps
IN_CHANNELS = 8
MASK_CHANNEL = 4


@dataclass
class RefinerConfig:
    """Network shape and the crop / click settings it was trained with (stored in the card).

    size: in-plane side S of the resampled crop (divisible by 2 ** (len(channels) - 1)).
    margin_mm / margin_fraction: in-plane margin around mask and clicks: the larger of a fixed
    distance and a fraction of the structure's extent. z_margin: slices added above and below.
    click_radius_mm: the Gaussian's sigma (or disk radius) of a click map.
    """

    channels: List[int] = field(default_factory=lambda: [16, 32, 64, 128])
    size: int = 96
    margin_mm: float = 12.0
    margin_fraction: float = 0.15
    z_margin: int = 1
    click_radius_mm: float = 5.0
    click_shape: str = "gaussian"

    def __post_init__(self) -> None:
        self.channels = [int(c) for c in self.channels]
        if not self.channels or min(self.channels) < 1:
            raise ConfigError(f"refiner channels must be positive integers, got {self.channels}")
        if self.size < 16 or self.size % (2 ** (len(self.channels) - 1)):
            raise ConfigError(f"refiner size {self.size} must be >= 16 and divisible by "
                              f"{2 ** (len(self.channels) - 1)}")
        if self.click_shape not in CLICK_SHAPES:
            raise ConfigError(f"click shape must be one of {CLICK_SHAPES}, got {self.click_shape!r}")
        if self.click_radius_mm <= 0 or self.margin_mm < 0 or self.margin_fraction < 0 or self.z_margin < 0:
            raise ConfigError("refiner click radius must be positive and margins non-negative")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RefinerConfig":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown refiner setting(s): {', '.join(sorted(unknown))}")
        return cls(**data)


def build_refiner_network(config: RefinerConfig):
    """The :class:`RefineNet` for ``config`` (imports torch)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from ..nets.blocks import ConvBlock

    class RefineNet(nn.Module):
        """(B, 8, S, S) -> (B, 1, S, S) logits; see the module docstring."""

        def __init__(self, channels: List[int]):
            super().__init__()
            widths = [IN_CHANNELS] + list(channels)
            self.encoders = nn.ModuleList(ConvBlock(a, b) for a, b in zip(widths[:-1], widths[1:]))
            self.ups = nn.ModuleList(nn.ConvTranspose2d(b, a, 2, stride=2)
                                     for a, b in zip(channels[:-1], channels[1:]))
            self.decoders = nn.ModuleList(ConvBlock(2 * a, a) for a in channels[:-1])
            self.head = nn.Conv2d(channels[0], 1, 1)
            self.prior_gain = nn.Parameter(torch.tensor(2.0))

        def forward(self, x):
            skips, y = [], x
            for index, encoder in enumerate(self.encoders):
                if index:
                    y = F.max_pool2d(y, 2)
                y = encoder(y)
                skips.append(y)
            for index in reversed(range(len(self.decoders))):
                y = self.decoders[index](torch.cat([self.ups[index](y), skips[index]], dim=1))
            return self.head(y) + self.prior_gain * (2.0 * x[:, MASK_CHANNEL:MASK_CHANNEL + 1] - 1.0)

    return RefineNet(config.channels)
