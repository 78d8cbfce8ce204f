"""Model cards and their checked weights: what inference needs and what a user should know.

A model is a JSON card beside a weights file. The card names its labels (with colours and
SNOMED-CT codes), the preprocessing to replay, the network configuration, the weights file
and its SHA-256, where the training data came from, and measured metrics. Weights load only
after their SHA-256 matches, with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..core.errors import ModelError
from ..core.io import atomic_output
from ..core.preprocess import Preprocessing
from ..core.terminology import LabelInfo
from ..nets.config import NetConfig

CARD_FORMAT = "dinseg-model-card/1"


@dataclass
class WeightsInfo:
    """The weights file beside the card: name, SHA-256, size and storage precision."""

    file: str
    sha256: str
    bytes: int = 0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if Path(self.file).name != self.file or self.file in ("", ".", ".."):
            raise ValueError(f"weights file must be a plain file name beside the card, got {self.file!r}")


@dataclass
class ModelCard:
    """A segmentation model as the user and the engine see it (see the module docstring)."""

    name: str
    version: str
    task: str
    modality: str
    labels: List[LabelInfo]
    preprocessing: Preprocessing
    network: NetConfig
    weights: WeightsInfo
    description: str = ""
    training: Dict[str, Any] = field(default_factory=dict)
    metrics: Dict[str, Any] = field(default_factory=dict)
    limitations: str = ""
    anatomy: str = ""  # "heart" (short-axis cine) or "abdomen": chooses the model for an image
    postprocessing: Dict[str, Any] = field(default_factory=dict)  # {"largest_component": .., "class_weights": ..}
    path: Optional[Path] = None  # the card file it was read from (not serialised)

    def __post_init__(self) -> None:
        if self.network.in_channels != self.preprocessing.input_channels:
            raise ValueError(f"the network takes {self.network.in_channels} input channel(s), but "
                             f"context_slices {self.preprocessing.context_slices} gives "
                             f"{self.preprocessing.input_channels}")

    @property
    def num_classes(self) -> int:
        return len(self.labels) + 1

    @property
    def weights_path(self) -> Path:
        return (self.path.parent if self.path else Path(".")) / self.weights.file

    @property
    def is_cardiac(self) -> bool:
        """Whether the cardiac function (volumes, ejection fractions) can be read from this model's labels."""
        return any(label.name == "left ventricle" for label in self.labels)

    def summary(self) -> str:
        """One paragraph for tooltips and ``dinseg models``: classes, modality, data, version, metrics."""
        classes = ", ".join(label.name for label in self.labels)
        trained_on = self.training.get("data", "unknown data").rstrip(".")
        metrics = self.metrics.get("summary", "no measured metrics").rstrip(".")
        return (f"{self.name} {self.version} ({self.modality}): {self.task}. Classes: {classes}. "
                f"Trained on: {trained_on}. Measured: {metrics}.")

    def to_dict(self) -> Dict[str, Any]:
        return {"format": CARD_FORMAT, "name": self.name, "version": self.version, "task": self.task,
                "modality": self.modality, "description": self.description,
                "labels": [label.to_dict() for label in self.labels],
                "preprocessing": self.preprocessing.to_dict(), "network": self.network.to_dict(),
                "weights": dict(file=self.weights.file, sha256=self.weights.sha256,
                                bytes=self.weights.bytes, dtype=self.weights.dtype),
                "training": self.training, "metrics": self.metrics, "limitations": self.limitations,
                "anatomy": self.anatomy, "postprocessing": self.postprocessing}

    @classmethod
    def from_dict(cls, data: Dict[str, Any], path: Optional[Path] = None) -> "ModelCard":
        if data.get("format") != CARD_FORMAT:
            raise ModelError(f"not a DINSegmentation model card (format {data.get('format')!r}, "
                             f"expected {CARD_FORMAT!r})")
        try:
            return cls(name=data["name"], version=str(data["version"]), task=data["task"],
                       modality=data["modality"], description=data.get("description", ""),
                       labels=[LabelInfo.from_dict(label) for label in data["labels"]],
                       preprocessing=Preprocessing.from_dict(data["preprocessing"]),
                       network=NetConfig.from_dict(data["network"]),
                       weights=WeightsInfo(**data["weights"]), training=data.get("training", {}),
                       metrics=data.get("metrics", {}), limitations=data.get("limitations", ""),
                       anatomy=data.get("anatomy", ""), postprocessing=dict(data.get("postprocessing", {})),
                       path=path)
        except (KeyError, TypeError, ValueError) as error:
            raise ModelError(f"invalid model card: {error}") from None

    def save(self, path) -> Path:
        """Write the card JSON (atomically) and return its path."""
        path = Path(path)
        with atomic_output(path) as temporary:
            temporary.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path


def read_card_file(path, kind: str = "model") -> Tuple[Dict[str, Any], Path]:
    """(JSON content, file path) of a ``kind`` card in a ``.json`` file or a folder holding exactly one."""
    path = Path(path)
    if path.is_dir():
        cards = sorted(path.glob("*.json"))
        if len(cards) != 1:
            raise ModelError(f"{path}: expected one {kind} card (*.json) in this folder, found {len(cards)}")
        path = cards[0]
    try:
        return json.loads(path.read_text(encoding="utf-8")), path
    except (OSError, json.JSONDecodeError) as error:
        raise ModelError(f"{path}: cannot read {kind} card ({error})") from None


def load_card(path) -> ModelCard:
    """Read a card from a ``.json`` file or a folder holding exactly one card."""
    data, path = read_card_file(path)
    return ModelCard.from_dict(data, path=path)


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_checked_weights(path: Path, sha256: str, owner: str) -> Dict[str, Any]:
    """The state dict in ``path`` (float32 tensors), after its SHA-256 matches ``sha256``; never unpickles
    objects. owner: how messages name it ("model NAME")."""
    import torch

    if not path.is_file():
        raise ModelError(f"{owner}: weights file {path} is missing")
    actual = sha256_of(path)
    if actual != sha256:
        raise ModelError(f"{owner}: weights {path.name} have SHA-256 {actual[:16]}..., "
                         f"the card says {sha256[:16]}...; refusing to load them")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {key: value.float() if value.is_floating_point() else value for key, value in state.items()}


def load_weights(card: ModelCard) -> Dict[str, Any]:
    """The card's state dict (float32 tensors), after its SHA-256 is checked (see :func:`load_checked_weights`)."""
    return load_checked_weights(card.weights_path, card.weights.sha256, f"model {card.name}")


def load_network(card: ModelCard, device="cpu"):
    """Build the card's network, load its checked weights, eval mode, on ``device``."""
    from ..nets import build_network

    network = build_network(card.network)
    try:
        network.load_state_dict(load_weights(card))
    except RuntimeError as error:
        raise ModelError(f"model {card.name}: weights do not fit its network configuration "
                         f"({str(error).splitlines()[0]})") from None
    return network.to(device).eval()


def save_weights(state_dict: Dict[str, Any], path, dtype: str = "float32") -> WeightsInfo:
    """Save a state dict (optionally as float16) atomically and describe it for a card."""
    import torch

    path = Path(path)
    if dtype not in ("float32", "float16"):
        raise ValueError(f"weights dtype must be float32 or float16, got {dtype!r}")
    target = getattr(torch, dtype)
    tensors = {key: value.detach().to("cpu", target) if value.is_floating_point() else value.detach().cpu()
               for key, value in state_dict.items()}
    with atomic_output(path) as temporary:
        torch.save(tensors, temporary)
    return WeightsInfo(file=path.name, sha256=sha256_of(path), bytes=path.stat().st_size, dtype=dtype)
