"""Model cards: what inference needs and what a user should know, plus checked weights.

A model is a JSON card beside a weights file. The card names its labels (with colours and
SNOMED-CT codes), the preprocessing to replay, the network configuration, the weights file
and its SHA-256, where the training data came from, and measured metrics. Weights load only
after their SHA-256 matches, with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Optional

from .errors import ModelError
from .io import atomic_output
from .nets.config import NetConfig
from .preprocess import Preprocessing
from .terminology import LabelInfo

CARD_FORMAT = "dinseg-model-card/1"
BUNDLED_MODELS = Path(__file__).resolve().parent / "assets" / "models"


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

    def label_names(self) -> Dict[int, str]:
        return {label.value: label.name for label in self.labels}

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


def load_card(path) -> ModelCard:
    """Read a card from a ``.json`` file or a folder holding exactly one card."""
    path = Path(path)
    if path.is_dir():
        cards = sorted(path.glob("*.json"))
        if len(cards) != 1:
            raise ModelError(f"{path}: expected one model card (*.json) in this folder, found {len(cards)}")
        path = cards[0]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ModelError(f"{path}: cannot read model card ({error})") from None
    return ModelCard.from_dict(data, path=path)


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_weights(card: ModelCard) -> Dict[str, Any]:
    """The card's state dict (float32 tensors), after its SHA-256 is checked; never unpickles objects."""
    import torch

    path = card.weights_path
    if not path.is_file():
        raise ModelError(f"model {card.name}: weights file {path} is missing")
    actual = sha256_of(path)
    if actual != card.weights.sha256:
        raise ModelError(f"model {card.name}: weights {path.name} have SHA-256 {actual[:16]}..., "
                         f"the card says {card.weights.sha256[:16]}...; refusing to load them")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {key: value.float() if value.is_floating_point() else value for key, value in state.items()}


def load_network(card: ModelCard, device="cpu"):
    """Build the card's network, load its checked weights, eval mode, on ``device``."""
    from .nets import build_network

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


def user_models_dir() -> Path:
    """Where ``dinseg models import`` installs models: $DINSEG_HOME/models, default ~/.dinseg/models."""
    return Path(os.environ.get("DINSEG_HOME", Path.home() / ".dinseg")) / "models"


def model_search_path() -> List[Path]:
    """Folders searched for models, user-installed first, then the ones bundled with dinseg."""
    return [user_models_dir(), BUNDLED_MODELS]


def list_models() -> List[ModelCard]:
    """Every readable card on the search path (a broken card is skipped, not fatal)."""
    cards, seen = [], set()
    for root in model_search_path():
        for card_path in sorted(root.glob("*/*.json")) if root.is_dir() else []:
            try:
                card = load_card(card_path)
            except ModelError:
                continue
            if (card.name, card.version) not in seen:
                seen.add((card.name, card.version))
                cards.append(card)
    return cards


def newest_models() -> List[ModelCard]:
    """The highest version of each installed model, sorted by name (what a name selects)."""
    newest: Dict[str, ModelCard] = {}
    for card in list_models():
        if card.name not in newest or _version_key(card.version) > _version_key(newest[card.name].version):
            newest[card.name] = card
    return [newest[name] for name in sorted(newest)]


def find_model(name_or_path) -> ModelCard:
    """A model by card path, model folder, or installed name (the highest version wins)."""
    candidate = Path(str(name_or_path))
    if candidate.suffix == ".json" or candidate.is_dir():
        if not candidate.exists():
            raise ModelError(f"{candidate}: no such model card")
        return load_card(candidate)
    installed = newest_models()
    for card in installed:
        if card.name == str(name_or_path):
            return card
    known = ", ".join(card.name for card in installed) or "none"
    raise ModelError(f"unknown model {name_or_path!r}; installed models: {known}")


def choose_model(modality: str, anatomy: str) -> ModelCard:
    """The installed model for an image of ``modality`` ("CT", "MR") showing ``anatomy``
    ("heart", "abdomen"): same modality and anatomy first, then same anatomy (the caller warns
    about the modality mismatch), then same modality, then any. Anatomy wins over modality: a
    heart model would segment an abdominal MR without any warning."""
    installed = newest_models()
    if not installed:
        raise ModelError("no models installed (see 'dinseg models import')")

    def rank(card: ModelCard):
        same_modality = card.modality.upper() == modality.upper()
        same_anatomy = card.anatomy == anatomy
        return (not (same_modality and same_anatomy), not same_anatomy, not same_modality)

    return min(installed, key=rank)


def _version_key(version: str):
    return tuple(int(part) if part.isdigit() else 0 for part in version.split("."))


def _safe_members(archive: zipfile.ZipFile) -> List[zipfile.ZipInfo]:
    """Archive members, refusing absolute paths, '..', drive letters and symbolic links."""
    members = []
    for info in archive.infolist():
        name = PurePosixPath(info.filename)
        is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
        if name.is_absolute() or ".." in name.parts or ":" in info.filename or "\\" in info.filename or is_link:
            raise ModelError(f"refusing archive: member {info.filename!r} would escape the target folder")
        members.append(info)
    return members


def import_models(source, destination: Optional[Path] = None) -> List[ModelCard]:
    """Install the model(s) in a ZIP archive or folder into the user models folder.

    Every card is validated and its weights checked before anything is installed; each model
    lands in ``destination/<name>-<version>/`` by an atomic rename.
    """
    source = Path(source)
    destination = Path(destination or user_models_dir())
    if not source.exists():
        raise ModelError(f"{source}: no such file or folder")
    destination.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination, prefix=".import-") as staging:
        staging = Path(staging)
        if source.is_dir():
            unpacked = source
        elif zipfile.is_zipfile(source):
            unpacked = staging / "unpacked"
            with zipfile.ZipFile(source) as archive:
                archive.extractall(unpacked, members=_safe_members(archive))
        else:
            raise ModelError(f"{source}: not a ZIP archive or a model folder")
        cards = [load_card(path) for path in sorted(unpacked.rglob("*.json")) if _is_card(path)]
        if not cards:
            raise ModelError(f"{source}: no model card found")
        for card in cards:
            load_weights(card)
        installed = []
        for card in cards:
            target = destination / f"{card.name}-{card.version}"
            staged = staging / target.name
            staged.mkdir()
            shutil.copy2(card.path, staged / card.path.name)
            shutil.copy2(card.weights_path, staged / card.weights.file)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staged, target)
            installed.append(load_card(target / card.path.name))
        return installed


def _is_card(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == CARD_FORMAT
    except (OSError, ValueError, AttributeError):
        return False
