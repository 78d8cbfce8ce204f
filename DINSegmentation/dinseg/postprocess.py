"""Label clean-up on the input grid: largest connected component per label, hole filling."""

from __future__ import annotations

import numpy as np


def _bounding_box(mask: np.ndarray):
    """Slices of the smallest box holding every True voxel of a (z, y, x) mask, or None."""
    box = []
    for axis in range(mask.ndim):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if present.size == 0:
            return None
        box.append(slice(present[0], present[-1] + 1))
    return tuple(box)


def clean_labels(labels: np.ndarray, largest_component: bool = True, fill_holes: bool = True) -> np.ndarray:
    """Keep each label's largest 3D connected component and/or fill its enclosed holes.

    labels: (z, y, x) integer array -> cleaned copy. Work is done inside each label's bounding
    box, so a small organ in a large scan costs little. A filled hole only takes background
    voxels, never another organ's.
    """
    import SimpleITK as sitk

    cleaned = labels.copy()
    for value in np.unique(labels):
        if value == 0:
            continue
        box = _bounding_box(labels == value)
        region = cleaned[box]
        mask = region == value
        if largest_component:
            components = sitk.GetArrayFromImage(sitk.RelabelComponent(
                sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True), sortByObjectSize=True))
            region[mask & (components != 1)] = 0
            mask = components == 1
        if fill_holes:
            filled = sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(mask.astype(np.uint8)),
                                                                True, 1)).astype(bool)
            region[filled & (region == 0)] = value
    return cleaned
