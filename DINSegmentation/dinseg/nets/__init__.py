"""Networks: the Dual Interaction Network (DIN) and its configuration presets.

Importing this package does not import torch (model cards and the Slicer module read
configurations before PyTorch is installed); :func:`build_network` does.
"""

from .config import FUSION_VARIANTS, PRESETS, NetConfig

__all__ = ["FUSION_VARIANTS", "PRESETS", "NetConfig", "build_network", "widen_input"]


def build_network(config: NetConfig):
    """The :class:`~dinseg.nets.din.DualInteractionNet` for a configuration (training and inference)."""
    from .din import DualInteractionNet

    return DualInteractionNet(config)


def widen_input(weights, in_channels: int):
    """A one-slice network's state dict -> the same for ``in_channels`` slices (2.5D).

    Each encoder's first convolution, (c, 1, 3, 3), becomes (c, in_channels, 3, 3) with the old
    kernel on the middle slice and zeros on the neighbours: the widened network starts out
    computing exactly what the one-slice network did, and training teaches it the neighbours.
    """
    import torch

    widened = dict(weights)
    for key in [k for k in weights if k.endswith("encoder.stem.0.weight")]:
        kernel = weights[key]
        wide = torch.zeros(kernel.shape[0], in_channels, *kernel.shape[2:], dtype=kernel.dtype)
        wide[:, in_channels // 2] = kernel[:, 0]
        widened[key] = wide
    return widened
