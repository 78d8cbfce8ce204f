"""The network's view of one structure: a crop around its mask and clicks, and the way back.

The crop is a box in voxel indices: slices ``z0:z1`` (inside the volume) and an in-plane window
``y0:y1, x0:x1`` that is square in millimetres and may reach outside the volume (zero padded).
Every slice of the window is resampled to S x S (``RefinerConfig.size``); the network's logits
are resampled back to the window and pasted onto the volume grid. Training and the refiner both
go through these functions, so they see structures the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np

from .clicks import click_map
from .network import MASK_CHANNEL, RefinerConfig


@dataclass(frozen=True)
class CropBox:
    """Voxel index box: z0:z1 within the volume; y0:y1, x0:x1 may exceed it (padding)."""

    z0: int
    z1: int
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def depth(self) -> int:
        return self.z1 - self.z0

    @property
    def window(self) -> Tuple[int, int]:
        """(height, width) of the in-plane window in voxels."""
        return self.y1 - self.y0, self.x1 - self.x0


def crop_box(mask: np.ndarray, points: Sequence[Sequence[float]], spacing_zyx: Sequence[float],
             config: RefinerConfig, margin_scale: float = 1.0) -> CropBox:
    """The box around ``mask`` (Z, Y, X) bool and ``points`` (N, 3) voxel (z, y, x); needs one of them.

    ``margin_scale`` stretches the in-plane margin (training jitters it).
    """
    shape = mask.shape
    coords = [np.asarray(points, dtype=np.float64).reshape(-1, 3)]
    if mask.any():
        boxes = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
        coords.append(np.array([[b[0] for b in boxes], [b[-1] for b in boxes]], dtype=np.float64))
    coords = np.concatenate(coords)
    if not len(coords):
        raise ValueError("a crop needs a mask or at least one point")
    low, high = coords.min(axis=0), coords.max(axis=0)
    z0 = max(0, int(np.floor(low[0])) - config.z_margin)
    z1 = min(shape[0], int(np.ceil(high[0])) + 1 + config.z_margin)
    sy, sx = float(spacing_zyx[1]), float(spacing_zyx[2])
    extent = max((high[1] - low[1] + 1) * sy, (high[2] - low[2] + 1) * sx)
    side = extent + 2 * margin_scale * max(config.margin_mm, config.margin_fraction * extent)
    centre_y, centre_x = (low[1] + high[1]) / 2, (low[2] + high[2]) / 2
    height, width = max(4, int(round(side / sy))), max(4, int(round(side / sx)))
    y0, x0 = int(round(centre_y - (height - 1) / 2)), int(round(centre_x - (width - 1) / 2))
    return CropBox(z0, z1, y0, y0 + height, x0, x0 + width)


def extract(volume: np.ndarray, slices: np.ndarray, box: CropBox) -> np.ndarray:
    """``volume[slices, y0:y1, x0:x1]`` as float32 with zeros outside the volume: (len(slices), h, w)."""
    _, rows, cols = volume.shape
    out = np.zeros((len(slices), *box.window), dtype=np.float32)
    ya, yb, xa, xb = max(box.y0, 0), min(box.y1, rows), max(box.x0, 0), min(box.x1, cols)
    if ya < yb and xa < xb:
        out[:, ya - box.y0:yb - box.y0, xa - box.x0:xb - box.x0] = volume[slices, ya:yb, xa:xb]
    return out


def resample(slices: np.ndarray, size: int):
    """(D, h, w) float32 -> (D, S, S) torch tensor, bilinear with antialiasing when shrinking."""
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(slices))[:, None]
    if tensor.shape[-2:] == (size, size):
        return tensor[:, 0]
    return F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[:, 0]


def sample_axes(box: CropBox, spacing_zyx: Sequence[float], size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mm coordinates (in the volume's index frame times spacing) of the crop's samples: z (D,), y (S,), x (S,)."""
    z = np.arange(box.z0, box.z1, dtype=np.float32) * float(spacing_zyx[0])
    step_y, step_x = box.window[0] / size, box.window[1] / size
    centres = np.arange(size, dtype=np.float32) + 0.5
    y = (box.y0 + centres * step_y - 0.5) * float(spacing_zyx[1])
    x = (box.x0 + centres * step_x - 0.5) * float(spacing_zyx[2])
    return z, y, x


def network_input(image01: np.ndarray, mask: np.ndarray, positive: Sequence[Sequence[float]],
                  negative: Sequence[Sequence[float]], spacing_zyx: Sequence[float], box: CropBox,
                  config: RefinerConfig):
    """The network's input for every slice of ``box``: (D, 8, S, S) float32 torch tensor.

    image01: (Z, Y, X) image normalised to [0, 1]; mask: (Z, Y, X) bool or float current mask;
    positive / negative: (N, 3) click voxel indices (z, y, x).
    """
    import torch

    depth = mask.shape[0]
    context = np.clip(np.arange(box.z0 - 1, box.z1 + 1), 0, depth - 1)
    image = resample(extract(image01, context, box), config.size)
    current = resample(extract(mask, context, box), config.size)
    axes = sample_axes(box, spacing_zyx, config.size)
    scale = np.asarray(spacing_zyx, dtype=np.float64)
    maps = [torch.from_numpy(click_map([np.asarray(p) * scale for p in points], axes, config.click_radius_mm,
                                       config.click_shape)) for points in (positive, negative)]
    d = box.depth
    planes = [image[0:d], image[1:d + 1], image[2:d + 2], current[0:d], current[1:d + 1], current[2:d + 2], *maps]
    return torch.stack(planes, dim=1).float()


def to_window(logits, box: CropBox):
    """(D, 1, S, S) logits -> (D, h, w) bool mask on the box's voxel window."""
    import torch.nn.functional as F

    return (F.interpolate(logits.float(), size=box.window, mode="bilinear", align_corners=False)[:, 0] > 0).numpy()


def paste(window_mask: np.ndarray, box: CropBox, shape_zyx: Sequence[int]) -> Tuple[np.ndarray, Tuple[slice, ...]]:
    """The part of a (D, h, w) window mask inside the volume, and the volume slices it covers."""
    _, rows, cols = shape_zyx
    ya, yb, xa, xb = max(box.y0, 0), min(box.y1, rows), max(box.x0, 0), min(box.x1, cols)
    part = window_mask[:, ya - box.y0:yb - box.y0, xa - box.x0:xb - box.x0]
    return part, (slice(box.z0, box.z1), slice(ya, yb), slice(xa, xb))


def new_mask(mask: np.ndarray, x, logits, box: CropBox) -> Tuple[np.ndarray, Tuple[slice, ...]]:
    """The structure's new mask on the box's part inside the volume, and the volume slices it covers.

    mask: (Z, Y, X) bool current mask; x: (D, 8, S, S) the network's input; logits: (D, 1, S, S).
    Where the output differs from the input mask's own round trip through the S x S grid it wins;
    elsewhere the full-resolution input stays, so an output equal to its input changes nothing
    (no resampling loss on structures the clicks do not touch).
    """
    output, where = paste(to_window(logits, box), box, mask.shape)
    before, _ = paste(to_window(x[:, MASK_CHANNEL:MASK_CHANNEL + 1] - 0.5, box), box, mask.shape)
    return np.where(output != before, output, mask[where]), where
