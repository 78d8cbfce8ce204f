"""Contrast enhancement for the enhanced branch of the Dual Interaction Network.

The same functions serve preview, training and inference. They work on batches of 2D slices,
already intensity-normalised to [0, 1], in pure torch on the device of the input, and are
deterministic. Half-precision inputs are computed in float32 and cast back.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F

from .preprocess import METHODS, EnhanceConfig

__all__ = ["METHODS", "EnhanceConfig", "enhance", "clahe", "gamma_correct", "unsharp_mask"]


def enhance(images: torch.Tensor, config: EnhanceConfig) -> torch.Tensor:
    """Enhance a batch of slices as `config` says.

    images: (B, C, H, W) or (B, H, W) float in [0, 1], each channel a slice enhanced on its own.
    Returns the same shape, dtype and device, values in [0, 1]. With method "none" or strength 0
    the input tensor itself is returned.
    """
    if config.method == "none" or config.strength == 0.0:
        return images
    if images.dim() == 3:
        return enhance(images.unsqueeze(1), config).squeeze(1)
    if images.shape[1] > 1:
        return enhance(images.reshape(-1, 1, *images.shape[2:]), config).reshape(images.shape)
    if config.method == "clahe":
        enhanced = clahe(images, config.clip_limit, config.tiles, config.bins)
    elif config.method == "gamma":
        enhanced = gamma_correct(images, config.gamma)
    else:
        enhanced = unsharp_mask(images, config.unsharp_sigma, config.unsharp_amount)
    if config.strength == 1.0:
        return enhanced
    x = images.to(_working_dtype(images))
    blended = (1.0 - config.strength) * x + config.strength * enhanced.to(x.dtype)
    return blended.clamp_(0.0, 1.0).to(images.dtype)


def clahe(images: torch.Tensor, clip_limit: float = 2.0, tiles: int = 8, bins: int = 256) -> torch.Tensor:
    """Contrast-limited adaptive histogram equalisation (OpenCV / Zuiderveld).

    images: (B, 1, H, W) float in [0, 1] -> (B, 1, H, W), same dtype, values in [0, 1].
    Values are quantised to `bins` levels (round(x * (bins - 1))). The image is padded at the
    bottom/right by reflection to a multiple of the tile grid; each tile's histogram is clipped
    at max(1, floor(clip_limit * tile_area / bins)) and the excess spread over all bins as OpenCV
    does (integer share to every bin, remainder to evenly spaced bins). The tile CDF / tile_area is
    the lookup table; each pixel interpolates bilinearly between the tables of the four nearest
    tile centres (clamped to the edge tiles). Histograms and CDFs are integer, so results are
    reproducible bit for bit.
    """
    _check_images(images)
    if clip_limit <= 0:
        raise ValueError(f"clip_limit must be > 0, got {clip_limit}")
    if tiles < 1 or bins < 2:
        raise ValueError(f"need tiles >= 1 and bins >= 2, got tiles={tiles}, bins={bins}")
    batch, _, height, width = images.shape
    device = images.device
    x = images[:, 0].to(_working_dtype(images))
    # Each pixel's position in the flat (B, tiles, tiles, bins) histogram and LUT arrays, tile
    # part still left out: b * tiles * tiles * bins + level. (B, H, W)
    batch_offset = torch.arange(batch, device=device) * (tiles * tiles * bins)
    level_index = torch.round(x.clamp(0.0, 1.0) * (bins - 1)).long() + batch_offset[:, None, None]

    tile_h, tile_w = math.ceil(height / tiles), math.ceil(width / tiles)
    rows = _reflect_indices(height, 0, tile_h * tiles - height, device)
    cols = _reflect_indices(width, 0, tile_w * tiles - width, device)
    padded_index = level_index.index_select(1, rows).index_select(2, cols)  # (B, Hp, Wp)
    padded_index += _tile_offsets(torch.arange(rows.numel(), device=device) // tile_h,
                                  torch.arange(cols.numel(), device=device) // tile_w, tiles, bins)
    histograms = torch.bincount(padded_index.flatten(), minlength=batch * tiles * tiles * bins)
    histograms = histograms.view(batch * tiles * tiles, bins)
    del padded_index

    tile_area = tile_h * tile_w
    limit = max(1, int(clip_limit * tile_area / bins))
    excess = (histograms - limit).clamp_(min=0).sum(dim=1, keepdim=True)  # (N, 1)
    histograms = histograms.clamp_(max=limit) + excess // bins
    remainder = excess % bins
    remainder_step = (bins // remainder.clamp(min=1)).clamp_(min=1)
    bin_index = torch.arange(bins, device=device)[None, :]
    histograms += ((bin_index % remainder_step == 0) & (bin_index // remainder_step < remainder)).long()
    luts = (histograms.cumsum(dim=1).to(x.dtype) / tile_area).flatten()  # (B * tiles * tiles * bins,)

    row_low, row_high, row_weight = _tile_neighbours(height, tile_h, tiles, device, x.dtype)
    col_low, col_high, col_weight = _tile_neighbours(width, tile_w, tiles, device, x.dtype)

    def lut_at(tile_rows: torch.Tensor, tile_cols: torch.Tensor) -> torch.Tensor:
        return luts.take(level_index + _tile_offsets(tile_rows, tile_cols, tiles, bins))

    row_weight, col_weight = row_weight[None, :, None], col_weight[None, None, :]
    top = (1 - col_weight) * lut_at(row_low, col_low) + col_weight * lut_at(row_low, col_high)
    bottom = (1 - col_weight) * lut_at(row_high, col_low) + col_weight * lut_at(row_high, col_high)
    result = (1 - row_weight) * top + row_weight * bottom
    return result.clamp_(0.0, 1.0).unsqueeze(1).to(images.dtype)


def gamma_correct(images: torch.Tensor, gamma: float) -> torch.Tensor:
    """Gamma correction x ** gamma. images: (B, 1, H, W) in [0, 1] -> (B, 1, H, W), same dtype."""
    _check_images(images)
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    x = images.to(_working_dtype(images))
    return x.clamp(0.0, 1.0).pow(gamma).to(images.dtype)


def unsharp_mask(images: torch.Tensor, sigma: float, amount: float) -> torch.Tensor:
    """Unsharp masking clamp(x + amount * (x - gaussian_blur(x, sigma)), 0, 1).

    images: (B, 1, H, W) in [0, 1] -> (B, 1, H, W), same dtype. The blur is a separable Gaussian
    truncated at ceil(3 * sigma) pixels with reflected borders.
    """
    _check_images(images)
    if sigma <= 0 or amount < 0:
        raise ValueError(f"need sigma > 0 and amount >= 0, got sigma={sigma}, amount={amount}")
    x = images.to(_working_dtype(images))
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    height, width = x.shape[-2:]
    padded = (x.index_select(2, _reflect_indices(height, radius, radius, x.device))
              .index_select(3, _reflect_indices(width, radius, radius, x.device)))
    blurred = F.conv2d(F.conv2d(padded, kernel.view(1, 1, -1, 1)), kernel.view(1, 1, 1, -1))
    return (x + amount * (x - blurred)).clamp_(0.0, 1.0).to(images.dtype)


def _check_images(images: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"expected images of shape (B, 1, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"expected a floating-point tensor, got {images.dtype}")


def _working_dtype(images: torch.Tensor) -> torch.dtype:
    """float32 for half / bfloat16 / float32 inputs, float64 for float64."""
    return torch.promote_types(images.dtype, torch.float32)


def _reflect_indices(length: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Source indices of an axis of `length` padded by mirror reflection without repeating the
    edge (like numpy 'reflect' / OpenCV BORDER_REFLECT_101), for any pad width. (length + before + after,)"""
    positions = torch.arange(-before, length + after, device=device)
    if length == 1:
        return torch.zeros_like(positions)
    period = 2 * (length - 1)
    folded = positions.remainder(period)
    return torch.where(folded < length, folded, period - folded)


def _tile_offsets(tile_rows: torch.Tensor, tile_cols: torch.Tensor, tiles: int, bins: int) -> torch.Tensor:
    """Offset (tile_row * tiles + tile_col) * bins of each pixel's tile in the flat histogram array,
    from (H,) tile rows and (W,) tile columns. (H, W)"""
    return tile_rows[:, None] * (tiles * bins) + tile_cols[None, :] * bins


def _tile_neighbours(
    length: int, tile_size: int, tiles: int, device: torch.device, dtype: torch.dtype
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each pixel of an axis, the two nearest tile centres and the weight of the second.

    Tile t's centre is placed at pixel (t + 0.5) * tile_size, as OpenCV does (half a pixel past
    the geometric centre); this keeps results within one grey level of cv2.createCLAHE on 8-bit
    images. Returns (length,) int64 low and high tile indices (clamped to [0, tiles - 1]) and a
    (length,) weight in [0, 1).
    """
    position = torch.arange(length, device=device, dtype=dtype) / tile_size - 0.5
    low = torch.floor(position)
    weight = position - low
    low = low.long()
    return low.clamp(min=0), (low + 1).clamp(max=tiles - 1), weight
