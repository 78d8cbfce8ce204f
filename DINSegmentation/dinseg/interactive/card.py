"""The refiner's model card: a class-agnostic model does not fit ``dinseg.models.ModelCard``
(which names labels and a DIN network), so it has its own small JSON format.

Fields: format ("dinseg-refiner-card/1"), name, version, description, network (RefinerConfig:
channels, crop size, margins, click radius and shape), normalisation per modality (CT window,
MR percentiles), weights (file beside the card, SHA-256, bytes, dtype), training (data, terms,
command, steps), metrics (the click benchmark) and limitations. Weights are written as float16
through ``dinseg.models.save_weights`` and load only after their SHA-256 matches, with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from ..core.errors import ModelError
from ..core.io import atomic_output
from ..core.preprocess import Normalization
from ..models import WeightsInfo, save_weights
from ..models.card import load_checked_weights, read_card_file
from .network import RefinerConfig, build_refiner_network

REFINER_CARD_FORMAT = "dinseg-refiner-card/1"
#: the refiner bundled with dinseg
BUNDLED_REFINER = Path(__file__).resolve().parent.parent / "assets" / "refiners" / "click-refiner" / "refiner.json"
#: intensity normalisation per modality: CT Hounsfield window, MR percentiles of each volume
DEFAULT_NORMALISATION = {"CT": Normalization("window", -125.0, 275.0),
                         "MR": Normalization("percentile", 0.5, 99.5)}


@dataclass
class RefinerCard:
    """A trained refiner as the engine and the user see it (see the module docstring)."""

    name: str
    version: str
    network: RefinerConfig
    weights: WeightsInfo
    normalisation: Dict[str, Normalization] = field(default_factory=lambda: dict(DEFAULT_NORMALISATION))
    description: str = ""
    training: Dict[str, Any] = field(default_factory=dict)
    metrics: Dict[str, Any] = field(default_factory=dict)
    limitations: str = ""
    path: Optional[Path] = None  # the card file it was read from (not serialised)

    @property
    def weights_path(self) -> Path:
        return (self.path.parent if self.path else Path(".")) / self.weights.file

    def to_dict(self) -> Dict[str, Any]:
        return {"format": REFINER_CARD_FORMAT, "name": self.name, "version": self.version,
                "description": self.description, "network": self.network.to_dict(),
                "normalisation": {m: {"kind": n.kind, "low": n.low, "high": n.high}
                                  for m, n in self.normalisation.items()},
                "weights": dict(file=self.weights.file, sha256=self.weights.sha256, bytes=self.weights.bytes,
                                dtype=self.weights.dtype),
                "training": self.training, "metrics": self.metrics, "limitations": self.limitations}

    @classmethod
    def from_dict(cls, data: Dict[str, Any], path: Optional[Path] = None) -> "RefinerCard":
        if not isinstance(data, dict) or data.get("format") != REFINER_CARD_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ModelError(f"not a DINSegmentation refiner card (format {found!r}, expected {REFINER_CARD_FORMAT!r})")
        try:
            return cls(name=data["name"], version=str(data["version"]), description=data.get("description", ""),
                       network=RefinerConfig.from_dict(data["network"]), weights=WeightsInfo(**data["weights"]),
                       normalisation={m: Normalization(**n) for m, n in data["normalisation"].items()},
                       training=data.get("training", {}), metrics=data.get("metrics", {}),
                       limitations=data.get("limitations", ""), path=path)
        except (KeyError, TypeError, ValueError) as error:
            raise ModelError(f"invalid refiner card: {str(error).splitlines()[0]}") from None

    def save(self, path) -> Path:
        """Write the card JSON atomically; returns its path."""
        path = Path(path)
        with atomic_output(path) as temporary:
            temporary.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        self.path = path
        return path


def load_refiner_card(path) -> RefinerCard:
    """Read a refiner card from its ``.json`` file or a folder holding exactly one."""
    data, path = read_card_file(path, "refiner")
    return RefinerCard.from_dict(data, path=path)


def load_refiner_network(card: RefinerCard):
    """The card's network with its weights, in eval mode, after the SHA-256 check (weights_only load)."""
    state = load_checked_weights(card.weights_path, card.weights.sha256, f"refiner {card.name}")
    network = build_refiner_network(card.network)
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise ModelError(f"refiner {card.name}: weights do not fit its network configuration "
                         f"({str(error).splitlines()[0]})") from None
    return network.eval()


def write_refiner(state_dict: Dict[str, Any], folder, config: RefinerConfig, name: str = "refiner",
                  version: str = "1.0", **fields) -> RefinerCard:
    """Save float16 weights and their card as ``folder/<name>.pt`` and ``folder/<name>.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = save_weights(state_dict, folder / f"{name}.pt", dtype="float16")
    card = RefinerCard(name=name, version=version, network=config, weights=weights, **fields)
    card.save(folder / f"{name}.json")
    return card
