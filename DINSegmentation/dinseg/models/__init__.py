"""Models: a card (labels, preprocessing, network, provenance, metrics) plus weights checked by
SHA-256, and the registry that finds installed models.

May import ``core`` and ``nets``; nothing above. ``card`` holds the card and weights,
``registry`` the search path, choice by image and import; both are re-exported here.
"""

from .card import CARD_FORMAT, ModelCard, WeightsInfo, load_card, load_network, load_weights, save_weights, sha256_of
from .registry import (BUNDLED_MODELS, choose_model, find_model, import_models, list_models, model_search_path,
                       newest_models, user_models_dir)

__all__ = ["BUNDLED_MODELS", "CARD_FORMAT", "ModelCard", "WeightsInfo", "choose_model", "find_model", "import_models",
           "list_models", "load_card", "load_network", "load_weights", "model_search_path", "newest_models",
           "save_weights", "sha256_of", "user_models_dir"]
