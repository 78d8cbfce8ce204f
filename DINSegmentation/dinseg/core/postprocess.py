"""Label clean-up on the input grid: largest connected component per label, hole filling."""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np


def label_boxes(labels: np.ndarray) -> Dict[int, Tuple[slice, slice, slice]]:
    """{label: slices of the smallest box holding it} for every non-zero label of a (z, y, x)
    integer array, from one multi-threaded pass of ITK's label shape statistics."""
    import SimpleITK as sitk

    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.ComputePerimeterOff()
    shape.ComputeFeretDiameterOff()
    shape.ComputeOrientedBoundingBoxOff()
    shape.Execute(sitk.GetImageFromArray(labels))
    boxes = {}
    for value in shape.GetLabels():
        x, y, z, width, height, depth = shape.GetBoundingBox(value)
        boxes[int(value)] = (slice(z, z + depth), slice(y, y + height), slice(x, x + width))
    return boxes


def clean_labels(labels: np.ndarray, largest_component: bool = True, fill_holes: bool = True,
                 in_place: bool = False) -> np.ndarray:
    """Keep each label's largest 3D connected component and/or fill its enclosed holes.

    labels: (z, y, x) integer array -> cleaned array (a copy, or ``labels`` itself with
    ``in_place``). Work is done inside each label's bounding box, so a small organ in a large
    scan costs little. A filled hole only takes background voxels, never another organ's.
    """
    import SimpleITK as sitk

    cleaned = labels if in_place else labels.copy()
    for value, box in label_boxes(labels).items():
        region = cleaned[box]
        mask = region == value
        if largest_component:
            components = sitk.RelabelComponent(sitk.ConnectedComponent(
                sitk.GetImageFromArray(mask.view(np.uint8)), True), sortByObjectSize=True)
            largest = sitk.GetArrayViewFromImage(components) == 1  # components stays alive meanwhile
            region[mask & ~largest] = 0
            mask = largest
        if fill_holes:
            filled_image = sitk.BinaryFillhole(sitk.GetImageFromArray(mask.view(np.uint8)), True, 1)
            filled = sitk.GetArrayViewFromImage(filled_image).view(bool)
            region[filled & (region == 0)] = value
    return cleaned
