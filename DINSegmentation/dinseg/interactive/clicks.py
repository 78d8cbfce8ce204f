"""Clicks: encoding points as maps the network reads, and the robot user that places them.

A click is a point in voxel index space (z, y, x), float allowed. Its map is a 3D Gaussian (or
a disk, a ball in 3D) whose size is given in millimetres, so one setting works for 0.7 mm CT
pixels and 10 mm cardiac slices alike: a click reaches its neighbouring slices by their distance
in mm, not by their count.

The robot user (the standard protocol of interactive segmentation benchmarks): given the current
mask and the reference, the next click goes to the centre of the largest error region, the voxel
farthest from the region's border (maximum of its distance transform, in mm); a false-negative
region gets a positive click, a false-positive region a negative one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

CLICK_SHAPES = ("gaussian", "disk")


@dataclass(frozen=True)
class Click:
    """One click: ``point`` (z, y, x) voxel indices; ``positive`` adds to the structure, negative removes."""

    point: Tuple[float, float, float]
    positive: bool


def click_map(points: Sequence[Sequence[float]], axes_mm: Sequence[np.ndarray], radius_mm: float,
              shape: str = "gaussian") -> np.ndarray:
    """Map of clicks on a rectilinear grid, max over clicks, values in [0, 1].

    points: (N, 3) click positions in mm, (z, y, x), in the frame of ``axes_mm``.
    axes_mm: three 1D arrays, the mm coordinates of the grid's z, y and x samples (lengths D, H, W).
    radius_mm: the Gaussian's sigma, or the disk's (ball's) radius.
    Returns (D, H, W) float32; all zeros for no points.
    """
    if shape not in CLICK_SHAPES:
        raise ValueError(f"click shape must be one of {CLICK_SHAPES}, got {shape!r}")
    if radius_mm <= 0:
        raise ValueError(f"click radius must be positive, got {radius_mm}")
    z_mm, y_mm, x_mm = (np.asarray(a, dtype=np.float32) for a in axes_mm)
    result = np.zeros((len(z_mm), len(y_mm), len(x_mm)), dtype=np.float32)
    for point in points:
        dz, dy, dx = ((axis - float(p)) ** 2 for axis, p in zip((z_mm, y_mm, x_mm), point))
        squared = dz[:, None, None] + dy[None, :, None] + dx[None, None, :]
        if shape == "gaussian":
            value = np.exp(-squared / np.float32(2.0 * radius_mm ** 2))
        else:
            value = (squared <= np.float32(radius_mm ** 2)).astype(np.float32)
        np.maximum(result, value, out=result)
    return result


def robot_click(current: np.ndarray, reference: np.ndarray, spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0),
                valid: Optional[np.ndarray] = None) -> Optional[Click]:
    """The next robot click, or None when ``current`` equals ``reference`` (where ``valid``).

    current, reference: (Z, Y, X) bool masks of one structure; valid: optional (Z, Y, X) bool,
    where errors count (e.g. the slices a training crop holds). The largest 3D connected error
    region (false negatives and false positives labelled apart) wins; the click is its voxel
    farthest from the region's border in mm (the image border counts as border).
    """
    current, reference = np.asarray(current, bool), np.asarray(reference, bool)
    if current.shape != reference.shape:
        raise ValueError(f"current {current.shape} and reference {reference.shape} masks differ in shape")
    missed, extra = reference & ~current, current & ~reference
    if valid is not None:
        missed &= valid
        extra &= valid
    wrong = missed | extra
    if not wrong.any():
        return None
    around = ndimage.find_objects(wrong.astype(np.uint8))[0]  # work inside the errors' bounding box
    missed, extra = missed[around], extra[around]
    best = None  # (size, positive, labelled array, label)
    for positive, errors in ((True, missed), (False, extra)):
        if not errors.any():
            continue
        labelled, _ = ndimage.label(errors)
        sizes = np.bincount(labelled.ravel())[1:]
        label = int(np.argmax(sizes)) + 1
        if best is None or sizes[label - 1] > best[0]:
            best = (int(sizes[label - 1]), positive, labelled, label)
    _, positive, labelled, label = best
    region = labelled == label
    box = ndimage.find_objects(region.astype(np.uint8))[0]
    inside = np.pad(region[box], 1)  # zero border: the image border is a region border
    distance = ndimage.distance_transform_edt(inside, sampling=spacing_zyx)[1:-1, 1:-1, 1:-1]
    offset = np.unravel_index(int(np.argmax(distance)), distance.shape)
    point = tuple(float(o + s.start + a.start) for o, s, a in zip(offset, box, around))
    return Click(point=point, positive=positive)
