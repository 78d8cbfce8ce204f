"""The Dual Interactive Fusion Module (DIFM) and the concatenation baseline."""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

#: (low-level feature (B, C_low, 2H, 2W), high-level feature (B, C, H, W)) of one stream at one stage
StageFeatures = Tuple[torch.Tensor, torch.Tensor]


def global_spatial_attention(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free spatial gate: x * sigmoid(mean over channels). (B, C, H, W) -> (B, C, H, W)."""
    return x * torch.sigmoid(x.mean(dim=1, keepdim=True))


class CrossAttentionBranch(nn.Module):
    """One direction of the DIFM: queries from one image's features, keys and values from the other's.

    query, context: (B, C, H, W) -> (B, C, H, W). The query is added back (residual), then a
    pre-normalised Mix-FFN (linear, 3x3 depthwise conv for position, GELU, linear) refines
    it, and the parameter-free global spatial attention gates the result. Keys and values are
    average-pooled by ``kv_reduction`` first so that high-resolution stages stay tractable.
    """

    def __init__(self, channels: int, heads: int, kv_reduction: int, ffn_ratio: float):
        super().__init__()
        self.heads = heads
        self.kv_reduction = kv_reduction
        hidden = int(channels * ffn_ratio)
        self.norm_query = nn.LayerNorm(channels)
        self.norm_context = nn.LayerNorm(channels)
        self.to_query = nn.Linear(channels, channels)
        self.to_key_value = nn.Linear(channels, 2 * channels)
        self.to_out = nn.Linear(channels, channels)
        self.norm_ffn = nn.LayerNorm(channels)
        self.ffn_in = nn.Linear(channels, hidden)
        self.ffn_position = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.ffn_out = nn.Linear(hidden, channels)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = query.shape
        if self.kv_reduction > 1:
            context = F.adaptive_avg_pool2d(context, (math.ceil(context.shape[2] / self.kv_reduction),
                                                      math.ceil(context.shape[3] / self.kv_reduction)))
        query_tokens = query.flatten(2).transpose(1, 2)                      # (B, N, C)
        context_tokens = context.flatten(2).transpose(1, 2)                  # (B, M, C)
        head_dim = channels // self.heads
        q = self.to_query(self.norm_query(query_tokens))
        q = q.view(batch, -1, self.heads, head_dim).transpose(1, 2)          # (B, h, N, d)
        kv = self.to_key_value(self.norm_context(context_tokens))
        k, v = kv.view(batch, -1, 2, self.heads, head_dim).permute(2, 0, 3, 1, 4)  # 2 x (B, h, M, d)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, -1, channels)
        x = query_tokens + self.to_out(attended)                             # (B, N, C)

        hidden = self.ffn_in(self.norm_ffn(x)).transpose(1, 2).reshape(batch, -1, height, width)
        hidden = F.gelu(self.ffn_position(hidden)).flatten(2).transpose(1, 2)
        x = x + self.ffn_out(hidden)
        return global_spatial_attention(x.transpose(1, 2).reshape(batch, channels, height, width))


class LevelFusion(nn.Module):
    """Fuse a stream's low-level and high-level features of a stage (concatenate, 1x1 conv).

    low: (B, C_low, 2H, 2W), high: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, low_channels: int, channels: int):
        super().__init__()
        self.mix = nn.Conv2d(low_channels + channels, channels, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        low = F.adaptive_avg_pool2d(low, high.shape[2:])
        return self.mix(torch.cat([low, high], dim=1))


class DualInteractiveFusion(nn.Module):
    """DIFM: bidirectional cross-attention between the original and the enhanced stream.

    Each stream's stage features are fused across levels, then two branches run (queries
    from the original attending to the enhanced, and the reverse); their sum is the
    decoder's skip feature (B, C, H, W).
    """

    def __init__(self, low_channels: int, channels: int, heads: int, kv_reduction: int, ffn_ratio: float):
        super().__init__()
        self.fuse_original = LevelFusion(low_channels, channels)
        self.fuse_enhanced = LevelFusion(low_channels, channels)
        self.original_queries = CrossAttentionBranch(channels, heads, kv_reduction, ffn_ratio)
        self.enhanced_queries = CrossAttentionBranch(channels, heads, kv_reduction, ffn_ratio)

    def forward(self, original: StageFeatures, enhanced: StageFeatures) -> torch.Tensor:
        fused_original = self.fuse_original(*original)
        fused_enhanced = self.fuse_enhanced(*enhanced)
        return (self.original_queries(fused_original, fused_enhanced)
                + self.enhanced_queries(fused_enhanced, fused_original))


class ConcatFusion(nn.Module):
    """Baseline fusion: concatenate both streams' stage features, 1x1 conv, norm, activation.

    original, enhanced: (low, high) per stream; only high (B, C, H, W) is used -> (B, C, H, W).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.mix = nn.Sequential(nn.Conv2d(2 * channels, channels, 1, bias=False),
                                 nn.InstanceNorm2d(channels, affine=True),
                                 nn.LeakyReLU(0.01, inplace=True))

    def forward(self, original: StageFeatures, enhanced: StageFeatures) -> torch.Tensor:
        return self.mix(torch.cat([original[1], enhanced[1]], dim=1))


class ImageFusion(nn.Module):
    """Fuse4Seg-style fusion *before* the network: the original and the enhanced image -> one image.

    image, enhanced: (B, C, H, W) -> (B, C, H, W). A small convolutional net (3.3 k
    parameters at C = 3) looks at both images and predicts, per pixel and channel, a blend
    weight ``a`` in (0, 1) and a detail term ``r``: fused = a * image + (1 - a) * enhanced + r.
    It starts as the plain average (a = 0.5, r = 0: the last layer is zero-initialised), and
    the segmentation loss trains it jointly with the one encoder behind it. Fuse4Seg's bi-level
    scheme (a lower-level fusion objective under the upper-level segmentation objective) is
    simplified to that single joint objective; the convex blend keeps the fused image within
    the range of its two sources, the part of the lower level that keeps it an image.
    """

    def __init__(self, channels: int, hidden: int = 16):
        super().__init__()
        self.channels = channels
        self.body = nn.Sequential(nn.Conv2d(2 * channels, hidden, 3, padding=1), nn.GELU(),
                                  nn.Conv2d(hidden, hidden, 3, padding=1), nn.GELU())
        self.out = nn.Conv2d(hidden, 2 * channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, image: torch.Tensor, enhanced: torch.Tensor) -> torch.Tensor:
        blend, detail = self.out(self.body(torch.cat([image, enhanced], dim=1))).split(self.channels, dim=1)
        weight = torch.sigmoid(blend)
        return weight * image + (1 - weight) * enhanced + detail
