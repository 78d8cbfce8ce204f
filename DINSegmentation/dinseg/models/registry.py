"""The registry: models bundled with dinseg and installed by the user, found by name or chosen
for an image; ``import_models`` installs checked models from a folder or ZIP archive."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional

from ..core.errors import ModelError
from .card import CARD_FORMAT, ModelCard, load_card, load_weights

BUNDLED_MODELS = Path(__file__).resolve().parent.parent / "assets" / "models"


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
