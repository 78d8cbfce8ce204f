"""Network configuration: a plain dataclass that round-trips through JSON (model cards store it)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Tuple

FUSION_VARIANTS = ("single", "concat", "difm", "image")
#: network arithmetic at inference: "auto" (float16 on CUDA, float32 elsewhere) or "float32"
PRECISIONS = ("auto", "float32")
#: test-time augmentation: the softmax averaged over this many in-plane quarter turns
TEST_TIME_ROTATIONS = (1, 2, 4)


@dataclass
class NetConfig:
    """Architecture of a :class:`~dinseg.nets.din.DualInteractionNet`.

    The encoder has a full-resolution stem and four ConvNeXt stages at 1/4, 1/8, 1/16 and
    1/32 of the input resolution (where the paper's ConvNeXt encoders have theirs); ``widths``,
    ``depths``, ``heads`` and ``kv_reduction`` have one entry per stage.

    fusion: ``"difm"`` (the paper: bidirectional cross-attention per stage), ``"concat"``
        (both encoders, features concatenated and convolved) or ``"single"`` (original image
        only) or ``"image"`` (Fuse4Seg: a small learned fusion of the original and the enhanced
        image into one image, fed to one encoder). All four share the same decoder, so they can be
        compared in an ablation.
    kv_reduction: spatial-reduction ratio of keys and values per stage (as in PVT). The
        default (4, 2, 1, 1) pools the keys of the first three stages to 1/16 of the input
        resolution, so the first stage costs O(N * N/16) instead of O(N^2): at 224x224 it
        attends 3,136 queries to 196 keys. Every stage still sees the whole image.
    share_encoders: one set of encoder weights for both streams (the default is two).
    """

    num_classes: int = 9
    in_channels: int = 1
    fusion: str = "difm"
    stem_channels: int = 16
    widths: Tuple[int, ...] = (24, 48, 96, 192)
    depths: Tuple[int, ...] = (1, 1, 2, 1)
    heads: Tuple[int, ...] = (1, 2, 4, 8)
    kv_reduction: Tuple[int, ...] = (4, 2, 1, 1)
    ffn_ratio: float = 2.0
    convnext_ratio: float = 4.0
    share_encoders: bool = False
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("widths", "depths", "heads", "kv_reduction"):
            value = tuple(int(v) for v in getattr(self, name))
            if len(value) != 4:
                raise ValueError(f"NetConfig.{name} needs 4 entries (one per stage), got {value}")
            setattr(self, name, value)
        if self.fusion not in FUSION_VARIANTS:
            raise ValueError(f"NetConfig.fusion must be one of {FUSION_VARIANTS}, got {self.fusion!r}")
        if self.num_classes < 2:
            raise ValueError("NetConfig.num_classes must be at least 2 (background and one class)")
        for width, heads in zip(self.widths, self.heads):
            if width % heads:
                raise ValueError(f"stage width {width} is not divisible by its {heads} attention heads")
        if min(self.kv_reduction) < 1:
            raise ValueError("NetConfig.kv_reduction entries must be >= 1")

    @property
    def strides(self) -> Tuple[int, ...]:
        """Downsampling of each stage relative to the one before: 4 (ConvNeXt's patchify), then 2."""
        return (4, 2, 2, 2)

    @property
    def downsampling(self) -> int:
        """Total downsampling factor of the encoder: inputs are padded to a multiple of it."""
        return math.prod(self.strides)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        data = dataclasses.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "NetConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown network configuration key(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> "NetConfig":
        """A named preset (see :data:`PRESETS`) with optional field overrides."""
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[preset], **overrides})


#: Named architectures. ``light`` runs on a workstation CPU; ``paper`` uses ConvNeXt-base
#: widths and depths as in the DIN paper (two encoders of about 88 M parameters each).
PRESETS: Dict[str, Dict[str, Any]] = {
    "light": dict(stem_channels=16, widths=(24, 48, 96, 192), depths=(1, 1, 2, 1),
                  heads=(1, 2, 4, 8), kv_reduction=(4, 2, 1, 1)),
    "medium": dict(stem_channels=32, widths=(48, 96, 192, 384), depths=(2, 2, 6, 2),
                   heads=(2, 4, 8, 16), kv_reduction=(4, 2, 1, 1)),
    "paper": dict(stem_channels=64, widths=(128, 256, 512, 1024), depths=(3, 3, 27, 3),
                  heads=(4, 8, 16, 32), kv_reduction=(4, 2, 1, 1)),
}
