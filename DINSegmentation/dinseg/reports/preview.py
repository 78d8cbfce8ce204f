"""A PNG a person wants to look at: original | enhanced | overlay at three slices through the organs."""

from __future__ import annotations

from typing import List, Sequence

import numpy as np

from ..core.enhance import EnhanceConfig, enhance
from ..core.geometry import Geometry
from ..core.io import atomic_output
from ..core.preprocess import Preprocessing, normalize
from ..core.terminology import LabelInfo


def pick_slices(canonical_labels: np.ndarray, count: int = 3) -> List[int]:
    """Slice indices through the labelled range: its quartiles, or the middle of the volume if empty."""
    labelled = np.flatnonzero(canonical_labels.reshape(canonical_labels.shape[0], -1).any(axis=1))
    if labelled.size == 0:
        return [canonical_labels.shape[0] // 2]
    positions = np.linspace(0, labelled.size - 1, count + 2)[1:-1]
    return sorted({int(labelled[int(round(p))]) for p in positions})


def label_overlay(label_slice: np.ndarray, colors: np.ndarray, fill_alpha: float = 0.4) -> np.ndarray:
    """(H, W) labels and (256, 3) RGB colours -> (H, W, 4) RGBA: translucent fill, opaque edges.

    Edges are the labelled pixels with a differently labelled 4-neighbour; drawing them on the
    same pixel grid as the fill keeps outline and fill aligned by construction.
    """
    padded = np.pad(label_slice, 1, mode="edge")
    edge = np.zeros(label_slice.shape, dtype=bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= padded[dy:dy + label_slice.shape[0], dx:dx + label_slice.shape[1]] != label_slice
    alpha = np.where(edge, 1.0, fill_alpha) * (label_slice > 0)
    return np.concatenate([colors[label_slice], alpha[..., None]], axis=-1)


def preview_colors(label_infos: Sequence[LabelInfo]) -> np.ndarray:
    """(256, 3) RGB in 0..1 indexed by label value: each structure's display colour (:mod:`dinseg.core.colors`,
    the same as in Slicer, the web page and the ``.seg.nrrd``)."""
    colors = np.zeros((256, 3))
    for info in label_infos:
        colors[info.value] = info.color_float
    return colors


def render_preview(path, image: np.ndarray, labels: np.ndarray, geometry: Geometry, preprocessing: Preprocessing,
                   label_infos: Sequence[LabelInfo], title: str = "",
                   enhancement: EnhanceConfig = None) -> None:
    """Write a preview PNG (atomically).

    image, labels: (z, y, x) on ``geometry``. Slices are shown in the model's canonical
    orientation (for LPS: axial, patient left on the viewer's right, as radiologists read),
    with the physical aspect ratio.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from matplotlib.patches import Patch

    reorientation = preprocessing.reorientation(geometry)
    canonical_image = reorientation.to_canonical(image)
    canonical_labels = reorientation.to_canonical(labels)
    spacing_x, spacing_y, _ = reorientation.spacing(geometry)
    bounds = preprocessing.normalization.bounds(image)
    enhancement = enhancement or preprocessing.enhancement
    rows = pick_slices(canonical_labels)
    colors = preview_colors(label_infos)

    figure, axes = plt.subplots(len(rows), 3, figsize=(11, 3.6 * len(rows)), squeeze=False,
                                facecolor="black")
    for row, index in zip(axes, rows):
        original = normalize(np.ascontiguousarray(canonical_image[index]), bounds)
        enhanced = enhance(torch.from_numpy(original)[None, None], enhancement)[0, 0].numpy()
        label_slice = canonical_labels[index]
        extent = (0, original.shape[1] * spacing_x, original.shape[0] * spacing_y, 0)
        for axis, picture, caption in zip(row, (original, enhanced, original),
                                          ("original", f"enhanced ({enhancement.method})", "segmentation")):
            axis.imshow(picture, cmap="gray", vmin=0, vmax=1, extent=extent, interpolation="bilinear")
            axis.set_title(f"{caption} - slice {index}", color="white", fontsize=10)
            axis.axis("off")
        row[2].imshow(label_overlay(label_slice, colors), extent=extent, interpolation="nearest")
    present = [info for info in label_infos if (labels == info.value).any()]
    figure.legend(handles=[Patch(color=colors[info.value], label=info.name) for info in present],
                  loc="lower center", ncol=min(len(present), 8) or 1, frameon=False, labelcolor="white")
    figure.suptitle(title, color="white")
    figure.tight_layout(rect=(0, 0.05, 1, 0.97))
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=110, facecolor="black")
    plt.close(figure)
