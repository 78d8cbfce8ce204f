"""Preprocessing shared by training and inference: canonical orientation, intensities, model grid.

A model card stores a :class:`Preprocessing`; training decides it once and inference replays it
exactly (the nnU-Net principle). Nothing here is guessed from the image at inference time
except what the card says to compute (e.g. percentiles of this volume).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from .errors import ConfigError
from .geometry import ORIENTATION_MODES, Geometry, Reorientation, canonical_reorientation, parse_orientation

#: enhancement methods of :func:`dinseg.core.enhance.enhance`
METHODS = ("none", "clahe", "gamma", "unsharp")


@dataclass
class EnhanceConfig:
    """How to enhance an image; validated on construction (ValueError on a bad value)."""

    method: str = "clahe"        # one of METHODS
    strength: float = 1.0        # out = (1 - strength) * x + strength * enhanced(x); 0..1
    clip_limit: float = 2.0      # CLAHE clip limit, multiple of the mean bin count per tile
    tiles: int = 8               # CLAHE tile grid per side (tiles x tiles)
    bins: int = 256              # CLAHE histogram bins
    gamma: float = 0.7           # gamma method: out = x ** gamma
    unsharp_sigma: float = 2.0   # unsharp masking Gaussian sigma, pixels
    unsharp_amount: float = 1.0  # unsharp: out = clamp(x + amount * (x - blur(x)), 0, 1)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown enhancement method {self.method!r}; expected one of {METHODS}")
        for name in ("strength", "clip_limit", "gamma", "unsharp_sigma", "unsharp_amount"):
            setattr(self, name, _as_float(name, getattr(self, name)))
        for name in ("tiles", "bins"):
            setattr(self, name, _as_int(name, getattr(self, name)))
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {self.strength}")
        if self.clip_limit <= 0:
            raise ValueError(f"clip_limit must be > 0, got {self.clip_limit}")
        if self.tiles < 1:
            raise ValueError(f"tiles must be >= 1, got {self.tiles}")
        if self.bins < 2:
            raise ValueError(f"bins must be >= 2, got {self.bins}")
        if self.gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {self.gamma}")
        if self.unsharp_sigma <= 0:
            raise ValueError(f"unsharp_sigma must be > 0, got {self.unsharp_sigma}")
        if self.unsharp_amount < 0:
            raise ValueError(f"unsharp_amount must be >= 0, got {self.unsharp_amount}")

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict of all fields (JSON-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EnhanceConfig:
        """Build from a dict; missing keys take defaults, unknown keys raise ValueError."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown EnhanceConfig key(s) {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)


#: the method choice that means "the model's own enhancement" (Slicer module, segment())
MODEL_DEFAULT = "model default"


def chosen_method(method: Optional[str]) -> Optional[str]:
    """An enhancement method choice, or None when it keeps the model's (None, "" or MODEL_DEFAULT)."""
    return None if method in (None, "", MODEL_DEFAULT) else method


def override_enhancement(trained: EnhanceConfig, method: Optional[str] = None,
                         strength: Optional[float] = None) -> Optional[EnhanceConfig]:
    """A model's enhancement with its method and/or strength replaced; None when nothing changes.

    method None, "" or MODEL_DEFAULT keeps the trained method.
    """
    changes: Dict[str, Any] = {}
    if chosen_method(method) is not None:
        changes["method"] = method
    if strength is not None:
        changes["strength"] = float(strength)
    config = EnhanceConfig.from_dict({**trained.to_dict(), **changes})
    return None if config == trained else config


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return value


NORMALIZATION_KINDS = ("window", "percentile")
_PERCENTILE_SAMPLE = 2_000_000


@dataclass
class Normalization:
    """Intensity mapping to [0, 1].

    kind ``window``: fixed bounds in the image's units (CT Hounsfield units, e.g. -125..275 as
    in Synapse). kind ``percentile``: bounds are these percentiles of each volume (MR).
    """

    kind: str = "window"
    low: float = -125.0
    high: float = 275.0

    def __post_init__(self) -> None:
        if self.kind not in NORMALIZATION_KINDS:
            raise ConfigError(f"normalization kind must be one of {NORMALIZATION_KINDS}, got {self.kind!r}")
        if not self.low < self.high:
            raise ConfigError(f"normalization needs low < high, got {self.low} and {self.high}")
        if self.kind == "percentile" and not 0 <= self.low < self.high <= 100:
            raise ConfigError("percentile normalization bounds must lie in [0, 100]")

    def bounds(self, array: np.ndarray) -> Tuple[float, float]:
        """Intensity bounds for this volume: the window, or percentiles of a fixed voxel subsample."""
        if self.kind == "window":
            return float(self.low), float(self.high)
        flat = array.reshape(-1)
        sample = flat[:: max(1, flat.size // _PERCENTILE_SAMPLE)]
        low, high = np.percentile(sample, [self.low, self.high])
        return float(low), float(max(high, low + 1e-6))


def normalize(array, bounds: Tuple[float, float]):
    """Map intensities to [0, 1] with clipping; numpy arrays and torch tensors alike (float32)."""
    low, high = bounds
    if isinstance(array, np.ndarray):
        scaled = array.astype(np.float32)  # always a copy: the steps below work in place
        scaled -= low
        scaled /= high - low
        return np.clip(scaled, 0.0, 1.0, out=scaled)
    import torch

    scaled = array.to(torch.float32, copy=True)
    return scaled.sub_(low).div_(high - low).clamp_(0.0, 1.0)


@dataclass
class Preprocessing:
    """Everything between a volume on disk and the network's input, as stored in a model card.

    orientation / orientation_mode: see :func:`dinseg.core.geometry.canonical_reorientation`.
    spacing: in-plane (x, y) spacing in mm of the canonical slices the network sees.
    context_slices: neighbouring slices on each side that the network sees with each slice
        (2.5D; 0 = one slice). Its input then has ``2 * context_slices + 1`` channels, in stack
        order; beyond the stack's ends the end slice is repeated.
    """

    orientation: str = "LPS"
    orientation_mode: str = "anatomical"
    spacing: Tuple[float, float] = (1.5, 1.5)
    normalization: Normalization = field(default_factory=Normalization)
    enhancement: EnhanceConfig = field(default_factory=EnhanceConfig)
    context_slices: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.context_slices, bool) or not isinstance(self.context_slices, int) \
                or not 0 <= self.context_slices <= 3:
            raise ConfigError(f"context_slices must be a whole number from 0 to 3, got {self.context_slices!r}")
        try:
            parse_orientation(self.orientation)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if self.orientation_mode not in ORIENTATION_MODES:
            raise ConfigError(f"orientation_mode must be one of {ORIENTATION_MODES}")
        self.spacing = tuple(float(s) for s in self.spacing)
        if len(self.spacing) != 2 or min(self.spacing) <= 0:
            raise ConfigError(f"spacing must be two positive in-plane values in mm, got {self.spacing}")

    @property
    def input_channels(self) -> int:
        """Slices per network input: the slice and its neighbours on each side."""
        return 2 * self.context_slices + 1

    def reorientation(self, geometry: Geometry) -> Reorientation:
        return canonical_reorientation(geometry, self.orientation, self.orientation_mode)

    def model_shape(self, canonical_shape: Tuple[int, int], canonical_spacing: Tuple[float, float]) -> Tuple[int, int]:
        """(H, W) of a canonical slice with (x, y) spacing -> (h, w) on the model's grid."""
        height, width = canonical_shape
        return (max(1, round(height * canonical_spacing[1] / self.spacing[1])),
                max(1, round(width * canonical_spacing[0] / self.spacing[0])))

    def to_dict(self) -> Dict[str, Any]:
        return {"orientation": self.orientation, "orientation_mode": self.orientation_mode,
                "spacing": list(self.spacing),
                "normalization": {"kind": self.normalization.kind, "low": self.normalization.low,
                                  "high": self.normalization.high},
                "enhancement": self.enhancement.to_dict(), "context_slices": self.context_slices}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Preprocessing":
        unknown = sorted(set(data) - {"orientation", "orientation_mode", "spacing", "normalization", "enhancement",
                                      "context_slices"})
        if unknown:
            raise ConfigError(f"unknown preprocessing key(s): {', '.join(unknown)}")
        data = dict(data)
        if "normalization" in data:
            normalization = dict(data["normalization"])
            unknown = sorted(set(normalization) - {"kind", "low", "high"})
            if unknown:
                raise ConfigError(f"unknown normalization key(s): {', '.join(unknown)}")
            data["normalization"] = Normalization(**normalization)
        if "enhancement" in data:
            try:
                data["enhancement"] = EnhanceConfig.from_dict(data["enhancement"])
            except ValueError as error:
                raise ConfigError(str(error)) from None
        return cls(**data)


def resize_slices(slices, shape: Tuple[int, int], mode: str = "bilinear"):
    """Resample a batch (B, C, H, W) torch tensor to (B, C, h, w).

    Linear modes antialias when shrinking, so a 0.7 mm scan reaches a 3 mm model looking like a
    3 mm acquisition. ``align_corners=False`` makes the forward and backward maps exact inverses
    of each other in physical space.
    """
    import torch.nn.functional as F

    if tuple(slices.shape[-2:]) == tuple(shape):
        return slices
    if mode == "nearest":
        return F.interpolate(slices, size=shape, mode="nearest-exact")
    shrinking = shape[0] < slices.shape[-2] or shape[1] < slices.shape[-1]
    return F.interpolate(slices, size=shape, mode=mode, align_corners=False, antialias=shrinking)


def _bilinear_taps(size_in: int, size_out: int, device):
    """For each output position: lower and upper source index and the upper one's weight, as
    ``F.interpolate(mode="bilinear", align_corners=False)`` computes them."""
    import torch

    source = ((torch.arange(size_out, device=device, dtype=torch.float32) + 0.5) * (size_in / size_out) - 0.5)
    source = source.clamp(min=0)
    lower = source.floor().long().clamp(max=size_in - 1)
    return lower, (lower + 1).clamp(max=size_in - 1), source - lower


def labels_at_size(probabilities, shape: Tuple[int, int], chunk: int = 1 << 20):
    """(B, C, h, w) class probabilities -> (B, H, W) integer labels of their bilinear resampling to ``shape``.

    The same labels as ``resize_slices(probabilities, shape).max(dim=1).indices``. When enlarging
    it interpolates only output pixels whose four source pixels disagree on the label: any convex
    combination of probability vectors that share an arg-max keeps it. A 3 mm model's output on a
    0.7 mm scan then costs a few percent of a full 512x512xC resampling. ``chunk``: mixed pixels
    interpolated at once, which bounds the extra memory.
    """
    import torch

    height, width = probabilities.shape[-2:]
    if height > shape[0] or width > shape[1] or (height, width) == tuple(shape):
        return resize_slices(probabilities, shape).max(dim=1).indices
    device = probabilities.device
    rows, rows_below, row_weight = _bilinear_taps(height, shape[0], device)
    columns, columns_right, column_weight = _bilinear_taps(width, shape[1], device)
    coarse = probabilities.max(dim=1).indices                                     # (B, h, w)
    right = torch.cat([coarse[:, :, 1:], coarse[:, :, -1:]], dim=2)
    below = torch.cat([coarse[:, 1:], coarse[:, -1:]], dim=1)
    below_right = torch.cat([right[:, 1:], right[:, -1:]], dim=1)
    uniform = (coarse == right) & (coarse == below) & (coarse == below_right)     # (B, h, w)
    # one gather of label * 2 + mixed from the coarse grid, in the smallest integer that holds it
    code_type = torch.uint8 if probabilities.shape[1] <= 128 else torch.int16
    code = (coarse * 2 + (~uniform)).to(code_type).flatten(1)                   # (B, h * w)
    source_pixel = (rows[:, None] * width + columns[None, :]).flatten()           # (H * W,)
    code = code[:, source_pixel].view(-1, *shape)                                 # (B, H, W)
    labels = code >> 1
    mixed = (code & 1).nonzero()                                                  # (N, 3)
    pixels = probabilities.permute(0, 2, 3, 1)                                    # (B, h, w, C)
    for start in range(0, mixed.shape[0], chunk):
        batch, y, x = mixed[start:start + chunk].unbind(dim=1)
        top, bottom, left, right_ = rows[y], rows_below[y], columns[x], columns_right[x]
        wy, wx = row_weight[y, None], column_weight[x, None]
        upper = pixels[batch, top, left] * (1 - wx) + pixels[batch, top, right_] * wx
        lower = pixels[batch, bottom, left] * (1 - wx) + pixels[batch, bottom, right_] * wx
        labels[batch, y, x] = (upper * (1 - wy) + lower * wy).max(dim=1).indices.to(labels.dtype)
    return labels


def with_neighbours(slices, context: int):
    """(B + 2 * context, 1, h, w) consecutive slices -> (B, 2 * context + 1, h, w): each of the
    middle B slices with its ``context`` neighbours on each side as channels, in stack order."""
    import torch

    if context == 0:
        return slices
    count = slices.shape[0] - 2 * context
    return torch.cat([slices[offset:offset + count] for offset in range(2 * context + 1)], dim=1)


def neighbour_indices(start: int, stop: int, context: int, depth: int) -> np.ndarray:
    """Slice indices start - context .. stop - 1 + context of a stack of ``depth`` slices, the
    end slices repeated beyond its ends (the input of :func:`with_neighbours`)."""
    return np.clip(np.arange(start - context, stop + context), 0, depth - 1)


def to_model_grid(slab: np.ndarray, bounds: Tuple[float, float], model_shape: Tuple[int, int], device="cpu"):
    """Canonical slices (B, H, W) in image units -> normalised (B, 1, h, w) float32 torch tensor on the model grid.

    The one path from image to network input, for training and inference alike.
    """
    import torch

    slices = torch.from_numpy(np.ascontiguousarray(slab)).to(device)
    return resize_slices(normalize(slices, bounds).unsqueeze(1), model_shape)
