"""Networks: the Dual Interaction Network (DIN) and its configuration presets.

Importing this package does not import torch (model cards and the Slicer module read
configurations before PyTorch is installed); :func:`build_network` does.
"""

from .config import FUSION_VARIANTS, PRESETS, NetConfig

__all__ = ["FUSION_VARIANTS", "PRESETS", "NetConfig", "build_network"]


def build_network(config: NetConfig):
    """The :class:`~dinseg.nets.din.DualInteractionNet` for a configuration (training and inference)."""
    from .din import DualInteractionNet

    return DualInteractionNet(config)
