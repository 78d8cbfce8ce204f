"""The Dual Interaction Network: two encoders, per-stage fusion, one U-Net decoder."""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvBlock, EncoderStage
from .config import NetConfig
from .difm import ConcatFusion, DualInteractiveFusion, ImageFusion


class Encoder(nn.Module):
    """Full-resolution convolutional stem, then four ConvNeXt stages at 1/4, 1/8, 1/16 and 1/32.

    (B, C_in, H, W) -> [stem (B, c0, H, W), stage 1 (B, c1, H/4, W/4), ..., stage 4 (B, c4, H/32, W/32)].
    The stages sit where ConvNeXt's (and the DIN paper's) do; the stem adds full-resolution
    detail for the decoder.
    """

    def __init__(self, config: NetConfig):
        super().__init__()
        self.stem = ConvBlock(config.in_channels, config.stem_channels)
        channels = (config.stem_channels,) + config.widths
        self.stages = nn.ModuleList(
            EncoderStage(channels[i], channels[i + 1], config.depths[i], config.convnext_ratio, config.strides[i])
            for i in range(len(config.widths)))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        features = [self.stem(x)]
        for stage in self.stages:
            features.append(stage(features[-1]))
        return features


class Decoder(nn.Module):
    """U-Net decoder: transposed-conv upsampling, concatenation with the skip, two 3x3 convs.

    skips: [(B, c0, H, W), (B, c1, H/4, W/4), ..., (B, c4, H/32, W/32)] -> logits (B, K, H, W).
    A U-Net decoder rather than the paper's MLP head: it restores full resolution step by step
    from the skips, which keeps thin structures (myocardium, pancreas, aorta) and boundaries
    sharp at the small widths a CPU model can afford.
    """

    def __init__(self, config: NetConfig):
        super().__init__()
        channels = (config.stem_channels,) + config.widths
        self.upsample = nn.ModuleList(nn.ConvTranspose2d(channels[i + 1], channels[i], stride, stride=stride)
                                      for i, stride in enumerate(config.strides))
        self.blocks = nn.ModuleList(ConvBlock(2 * channels[i], channels[i], config.dropout)
                                    for i in range(len(config.widths)))
        self.head = nn.Conv2d(config.stem_channels, config.num_classes, 1)

    def forward(self, skips: List[torch.Tensor]) -> torch.Tensor:
        x = skips[-1]
        for level in reversed(range(len(self.blocks))):
            x = self.blocks[level](torch.cat([self.upsample[level](x), skips[level]], dim=1))
        return self.head(x)


class DualInteractionNet(nn.Module):
    """DIN (Noh, Jeon and Park, 2025) with a U-Net decoder.

    forward(image, enhanced): image and enhanced (B, C_in, H, W), any H and W (padded inside
    to a multiple of 32) -> logits (B, num_classes, H, W). ``enhanced`` is ignored (and may be
    None) for the ``single`` variant. The ``image`` variant fuses the two images into one first
    (:class:`~dinseg.nets.difm.ImageFusion`) and runs one encoder on it.
    """

    def __init__(self, config: NetConfig):
        super().__init__()
        self.config = config
        self.original_encoder = Encoder(config)
        self.enhanced_encoder: Optional[nn.Module] = None
        self.fusions = nn.ModuleList()
        self.image_fusion: Optional[nn.Module] = ImageFusion(config.in_channels) if config.fusion == "image" else None
        if config.fusion not in ("single", "image"):
            self.enhanced_encoder = self.original_encoder if config.share_encoders else Encoder(config)
            low_channels = (config.stem_channels,) + config.widths[:-1]
            for stage, width in enumerate(config.widths):
                if config.fusion == "difm":
                    self.fusions.append(DualInteractiveFusion(
                        low_channels[stage], width, config.heads[stage], config.kv_reduction[stage],
                        config.ffn_ratio))
                else:
                    self.fusions.append(ConcatFusion(width))
        self.decoder = Decoder(config)

    @property
    def uses_enhanced(self) -> bool:
        """Whether forward() reads the enhanced image."""
        return self.enhanced_encoder is not None or self.image_fusion is not None

    def forward(self, image: torch.Tensor, enhanced: Optional[torch.Tensor] = None,
                return_features: bool = False):
        """Logits (B, K, H, W); with ``return_features`` also :meth:`encode`'s features (one forward
        pass, so the consistency loss trains through DistributedDataParallel as the logits do)."""
        height, width = image.shape[2:]
        skips = self.encode(image, enhanced)
        logits = self.decoder(skips)[:, :, :height, :width]
        return (logits, skips) if return_features else logits

    def encode(self, image: torch.Tensor, enhanced: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """The decoder's skip features (after fusion), [(B, c0, H', W'), ..., (B, c4, H'/32, W'/32)]
        with H', W' padded to a multiple of 32: what the consistency loss compares."""
        if image.dim() != 4 or image.shape[1] != self.config.in_channels:
            raise ValueError(f"image must be (B, {self.config.in_channels}, H, W), got {tuple(image.shape)}")
        if self.uses_enhanced and (enhanced is None or enhanced.shape != image.shape):
            raise ValueError(f"the {self.config.fusion!r} variant needs an enhanced image shaped like "
                             f"the image {tuple(image.shape)}")
        height, width = image.shape[2:]
        multiple = self.config.downsampling
        pad = (0, -width % multiple, 0, -height % multiple)
        if self.image_fusion is not None:
            return self.original_encoder(F.pad(self.image_fusion(image, enhanced), pad))
        original = self.original_encoder(F.pad(image, pad))
        if self.enhanced_encoder is None:
            skips = original
        else:
            enhanced_features = self.enhanced_encoder(F.pad(enhanced, pad))
            skips = [original[0] + enhanced_features[0]]
            for stage, fusion in enumerate(self.fusions):
                skips.append(fusion((original[stage], original[stage + 1]),
                                    (enhanced_features[stage], enhanced_features[stage + 1])))
        return skips

