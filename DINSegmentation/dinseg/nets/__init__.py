"""Networks: the Dual Interaction Network (DIN) and its configuration presets."""

from .config import FUSION_VARIANTS, PRESETS, NetConfig
from .din import DualInteractionNet, build_network

__all__ = ["FUSION_VARIANTS", "PRESETS", "NetConfig", "DualInteractionNet", "build_network"]
