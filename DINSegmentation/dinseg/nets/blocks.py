"""Convolutional building blocks shared by the encoder and the decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each with instance norm and LeakyReLU: (B, C_in, H, W) -> (B, C_out, H, W).

    Instance norm normalises every slice by its own statistics, which keeps the network
    steady under the intensity shifts between scanners (the nnU-Net choice).
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.InstanceNorm2d(out_channels, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.InstanceNorm2d(out_channels, affine=True),
            nn.LeakyReLU(0.01, inplace=True))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block (Liu et al. 2022): 7x7 depthwise conv, LayerNorm, inverted MLP, layer scale.

    (B, C, H, W) -> (B, C, H, W), residual.
    """

    def __init__(self, channels: int, mlp_ratio: float = 4.0, layer_scale: float = 1e-6):
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.depthwise = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.expand = nn.Linear(channels, hidden)
        self.project = nn.Linear(hidden, channels)
        self.gamma = nn.Parameter(torch.full((channels,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.depthwise(x).permute(0, 2, 3, 1)
        y = self.project(F.gelu(self.expand(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class EncoderStage(nn.Sequential):
    """Downsample (LayerNorm + s x s stride-s conv, as ConvNeXt), then ``depth`` ConvNeXt blocks.

    (B, C_in, H, W) -> (B, C_out, H/s, W/s).
    """

    def __init__(self, in_channels: int, out_channels: int, depth: int, mlp_ratio: float, stride: int):
        super().__init__(LayerNorm2d(in_channels, eps=1e-6),
                         nn.Conv2d(in_channels, out_channels, stride, stride=stride),
                         *[ConvNeXtBlock(out_channels, mlp_ratio) for _ in range(depth)])
