"""ConDSeg's consistency reinforcement as a training option: named degradations and a feature consistency loss.

ConDSeg ("A General Medical Image Segmentation Framework via Contrast-Driven Feature
Enhancement", arXiv, December 2024) trains the encoder to give the same features
for an image and for a copy of it under strong illumination, contrast and noise changes, which is
what another vendor's scanner does to an image. Here the degraded copies join the batch (so they
are also ordinary augmentations under the segmentation loss), and
:func:`consistency_loss` pulls each degraded copy's encoder features (the decoder's skip features,
after fusion) towards those of its clean image. The clean features are the target (no gradient
through them), so the loss cannot be lowered by making the clean features worse.

Configured by ``consistency`` in a training configuration, e.g.
``consistency: {weight: 0.1, degradations: [illumination, gamma, contrast, noise], strength: 1.0}``.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Sequence

#: the named degradations, in the order they are applied
DEGRADATIONS = ("illumination", "gamma", "contrast", "noise")
#: the options of ``consistency`` and their defaults (weight 0: off)
DEFAULTS: Dict[str, Any] = {"weight": 0.0, "degradations": list(DEGRADATIONS), "strength": 1.0, "stages": [1, 2, 3, 4]}


def check_consistency(options: Dict[str, Any]) -> Dict[str, Any]:
    """The ``consistency`` options with defaults filled in; ValueError (one line) for a bad value."""
    if not isinstance(options, dict):
        raise ValueError(f"consistency must be a mapping such as {{weight: 0.1}}, got {options!r}")
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown consistency option(s): {', '.join(unknown)} (known: {', '.join(DEFAULTS)})")
    merged = {**DEFAULTS, **options}
    weight = merged["weight"]
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise ValueError(f"consistency weight must be a number >= 0, got {weight!r}")
    names = merged["degradations"]
    if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names:
        raise ValueError(f"consistency degradations must be a non-empty list of {', '.join(DEGRADATIONS)}, "
                         f"got {names!r}")
    bad = [name for name in names if name not in DEGRADATIONS]
    if bad:
        raise ValueError(f"unknown degradation(s) {', '.join(map(str, bad))}; choose from {', '.join(DEGRADATIONS)}")
    strength = merged["strength"]
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 2:
        raise ValueError(f"consistency strength must be in (0, 2], got {strength!r}")
    stages = merged["stages"]
    if (isinstance(stages, str) or not isinstance(stages, (list, tuple)) or not stages
            or any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= 4 for s in stages)):
        raise ValueError(f"consistency stages must be a non-empty list of 0 (stem) to 4, got {stages!r}")
    return {"weight": float(weight), "degradations": [str(n) for n in names], "strength": float(strength),
            "stages": sorted({int(s) for s in stages})}


def degrade(image, names: Sequence[str], strength: float = 1.0, generator=None):
    """A strongly degraded copy of a batch of normalised slices: (B, C, H, W) in [0, 1] -> the same shape.

    Each sample draws its own magnitudes; its C channels (a slice and its neighbours) change alike.
    ``illumination``: a smooth multiplicative field (a random 3 x 3 grid, bilinearly enlarged),
    up to +-50 % x strength; ``gamma``: x ** g, g in [2.5 ** -strength, 2.5 ** strength];
    ``contrast``: stretched or squeezed about the slice mean by a factor in [2 ** -strength,
    2 ** strength]; ``noise``: Rician noise (magnitude of a complex Gaussian) of sd up to
    0.08 x strength. The result is clipped to [0, 1].
    """
    import torch
    import torch.nn.functional as F

    batch = image.shape[0]

    def uniform(*shape):
        return torch.rand(*shape, generator=generator).to(image.device, image.dtype) * 2 - 1

    x = image
    for name in names:
        if name == "illumination":
            grid = 1 + 0.5 * strength * uniform(batch, 1, 3, 3)
            x = x * F.interpolate(grid, size=x.shape[-2:], mode="bilinear", align_corners=True)
        elif name == "gamma":
            exponent = torch.exp(uniform(batch, 1, 1, 1) * strength * math.log(2.5))
            x = x.clamp(min=0).pow(exponent)
        elif name == "contrast":
            factor = torch.exp(uniform(batch, 1, 1, 1) * strength * math.log(2.0))
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * factor + mean
        elif name == "noise":
            sd = 0.08 * strength * (uniform(batch, 1, 1, 1) + 1) / 2
            real = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
            imaginary = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
            x = torch.sqrt((x + sd * real) ** 2 + (sd * imaginary) ** 2)
        else:
            raise ValueError(f"unknown degradation {name!r}; choose from {', '.join(DEGRADATIONS)}")
        x = x.clamp(0, 1)
    return x


def consistency_loss(clean: Sequence, degraded: Sequence, eps: float = 1e-6):
    """Mean over feature levels of ||degraded - clean||^2 / ||clean||^2 (per level, over the batch).

    clean, degraded: lists of (B, C_l, H_l, W_l) features of the same images, clean and degraded.
    The clean features are detached (they are the target). Zero when the features are
    identical, positive otherwise (a rescaled copy included); relative to the clean features'
    energy, so shrinking all features does not lower it.
    """
    import torch

    if len(clean) != len(degraded) or not clean:
        raise ValueError(f"consistency_loss needs two equally long, non-empty lists of features, "
                         f"got {len(clean)} and {len(degraded)}")
    terms = []
    for target, feature in zip(clean, degraded):
        if target.shape != feature.shape:
            raise ValueError(f"feature shapes differ: {tuple(target.shape)} and {tuple(feature.shape)}")
        target = target.detach().float()
        terms.append((feature.float() - target).pow(2).mean() / (target.pow(2).mean() + eps))
    return torch.stack(terms).mean()
