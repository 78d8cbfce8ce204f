"""One options object for a segmentation, from a GUI, the command line or Python to the engine.

:class:`SegmentOptions` is what the Slicer module, the web page, the job's child process and
:func:`~dinseg.pipeline.files.segment_file` pass around; ``to_cli_args`` / ``from_args``
carry it through ``dinseg segment``'s flags without a hand-written list. None always means
"as the model card says".
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields, replace
from typing import Any, List, Optional

from ..core.errors import InputError
from ..core.preprocess import METHODS as ENHANCEMENT_METHODS
from ..core.preprocess import MODEL_DEFAULT, EnhanceConfig, chosen_method, override_enhancement
from ..nets.config import PRECISIONS, TEST_TIME_ROTATIONS

__all__ = ["ENHANCEMENT_METHODS", "MODEL_DEFAULT", "SegmentOptions"]


@dataclass(frozen=True)
class SegmentOptions:
    """How to segment. Every field's None keeps the model card's choice.

    model: installed name or card path, or a ModelCard (kept as its card path; None: the
    installed model for the image's modality and anatomy). enhancement_method: one of ENHANCEMENT_METHODS (None or MODEL_DEFAULT: the model's
    own); enhancement_strength: 0..1, applied to the chosen method or, with no method, to the
    model's own (a GUI that shows a slider for the chosen method only passes it with a method:
    :meth:`for_gui`). frame: a 4D cine's frame, 0-based (None: all frames).
    """

    model: Optional[str] = None
    device: str = "auto"
    enhancement_method: Optional[str] = None
    enhancement_strength: Optional[float] = None
    largest_component: Optional[bool] = None
    fill_holes: Optional[bool] = None
    rotations: Optional[int] = None
    precision: str = "auto"
    batch_size: Optional[int] = None
    threads: Optional[int] = None
    frame: Optional[int] = None
    strict: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "enhancement_method", chosen_method(self.enhancement_method))
        if self.model is not None:  # a ModelCard stands for its card file
            object.__setattr__(self, "model", str(getattr(self.model, "path", None) or self.model))
        if self.enhancement_method is not None and self.enhancement_method not in ENHANCEMENT_METHODS:
            raise InputError(f"enhancement method {self.enhancement_method!r} is not one of "
                             f"{', '.join(ENHANCEMENT_METHODS)} (or {MODEL_DEFAULT!r})")
        strength = self.enhancement_strength
        if strength is not None and (isinstance(strength, bool) or not isinstance(strength, (int, float))
                                     or not math.isfinite(strength) or not 0 <= strength <= 1):
            raise InputError(f"enhancement strength must be a number from 0 to 1, got {strength!r}")
        if self.rotations is not None and self.rotations not in TEST_TIME_ROTATIONS:
            raise InputError(f"test-time rotations must be one of {', '.join(map(str, TEST_TIME_ROTATIONS))}, "
                             f"got {self.rotations!r}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("batch_size", "threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InputError(f"{name.replace('_', ' ')} must be a positive whole number, got {value!r}")
        if self.frame is not None and (isinstance(self.frame, bool) or not isinstance(self.frame, int)
                                       or self.frame < 0):
            raise InputError(f"frame must be a frame index from 0, got {self.frame!r}")

    @classmethod
    def for_gui(cls, method: Optional[str], strength: Optional[float], **others: Any) -> "SegmentOptions":
        """Options from a GUI whose strength slider belongs to the chosen method: with the model's
        own method (MODEL_DEFAULT) the slider is not applied."""
        method = chosen_method(method)
        return cls(enhancement_method=method, enhancement_strength=strength if method is not None else None,
                   **others)

    def replace(self, **changes: Any) -> "SegmentOptions":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def enhancement_for(self, card) -> Optional[EnhanceConfig]:
        """The EnhanceConfig overriding ``card``'s, or None when the model's own is kept."""
        return override_enhancement(card.preprocessing.enhancement, self.enhancement_method,
                                    self.enhancement_strength)

    def to_cli_args(self) -> List[str]:
        """``dinseg segment`` flags for these options (what the job's child process is given)."""
        args: List[str] = []
        if self.model is not None:
            args += ["--model", self.model]
        args += ["--device", self.device]
        if self.enhancement_method is not None:
            args += ["--enhance", self.enhancement_method]
        if self.enhancement_strength is not None:
            args += ["--enhance-strength", repr(float(self.enhancement_strength))]
        for flag, value in (("largest-component", self.largest_component), ("fill-holes", self.fill_holes)):
            if value is not None:
                args.append(f"--{flag}" if value else f"--no-{flag}")
        if self.rotations is not None:
            args += ["--rotations", str(self.rotations)]
        if self.precision != "auto":
            args += ["--precision", self.precision]
        if self.batch_size is not None:
            args += ["--batch-size", str(self.batch_size)]
        if self.threads is not None:
            args += ["--threads", str(self.threads)]
        if self.frame is not None:
            args += ["--frames", str(self.frame + 1)]
        if self.strict:
            args.append("--strict")
        return args

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "SegmentOptions":
        """Options from ``dinseg segment``'s parsed arguments (the inverse of :meth:`to_cli_args`)."""
        mapping = {"enhancement_method": "enhance", "enhancement_strength": "enhance_strength", "frame": "frames"}
        values = {}
        for field in fields(cls):
            name = mapping.get(field.name, field.name)
            if hasattr(args, name):
                values[field.name] = getattr(args, name)
        return cls(**values)
