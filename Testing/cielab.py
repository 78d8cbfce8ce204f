"""Colour differences as people see them: sRGB to CIELAB, and Machado et al. (2009) simulations of
protanopia, deuteranopia and tritanopia (severity 1), for the colour tests."""

from __future__ import annotations

import numpy as np

#: linear-RGB matrices of the three full colour-vision deficiencies
DEFICIENCIES = {
    "protanopia": [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]],
    "deuteranopia": [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]],
    "tritanopia": [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602], [0.004733, 0.691367, 0.303900]],
}


def _linear(rgb) -> np.ndarray:
    c = np.asarray(rgb, dtype=float) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _lab_of_linear(linear: np.ndarray) -> np.ndarray:
    to_xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = linear @ to_xyz.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def cielab(rgb) -> np.ndarray:
    """(..., 3) sRGB 0..255 -> (..., 3) CIELAB (D65)."""
    return _lab_of_linear(_linear(rgb))


def smallest_difference(colors, vision: str = "normal") -> float:
    """The smallest CIELAB distance (delta E 1976) between any two of ``colors`` (sRGB 0..255), as seen
    with normal vision or one of DEFICIENCIES."""
    linear = _linear(colors)
    if vision != "normal":
        linear = np.clip(linear @ np.array(DEFICIENCIES[vision]).T, 0, 1)
    lab = _lab_of_linear(linear)
    distances = np.linalg.norm(lab[:, None] - lab[None], axis=-1)
    return float(distances[np.triu_indices(len(lab), 1)].min())
