"""What the slice views show besides the image: window/level, orientation letters, slice numbers.

MRML only (no trame): the page binds these to its controls and view overlays.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
from trame_slicer.core import VolumeWindowLevel

#: CT windows (width, level) in HU, as radiology teaching gives them
CT_PRESETS: Dict[str, Tuple[float, float]] = {
    "abdomen": (400.0, 50.0),
    "liver": (150.0, 30.0),
    "lung": (1500.0, -600.0),
    "bone": (1800.0, 400.0),
}
#: the patient side each RAS axis points to, positive then negative
_SIDES = (("R", "L"), ("A", "P"), ("S", "I"))


def set_window_level(volume, window: float, level: float) -> None:
    """Fix the volume's window/level (no more automatic window/level)."""
    VolumeWindowLevel.set_volume_node_window_level(volume, float(window), float(level))


def auto_window_level(volume) -> None:
    """Window/level from the image's own histogram (0.1 to 99.9 percentiles): for MR, whose values
    have no fixed meaning."""
    set_window_level(volume, *VolumeWindowLevel.min_max_to_window_level(
        *VolumeWindowLevel.get_volume_auto_min_max_range(volume)))


def window_level_text(volume) -> str:
    """``W 400 L 50``: the volume's current window and level."""
    display = volume.GetDisplayNode() if volume is not None else None
    if display is None:
        return ""
    return f"W {display.GetWindow():.0f} L {display.GetLevel():.0f}"


def side_letter(ras_direction) -> str:
    """The patient side (R, L, A, P, S, I) a direction in RAS points to most."""
    axis = int(np.argmax(np.abs(ras_direction)))
    return _SIDES[axis][0 if ras_direction[axis] > 0 else 1]


def orientation_letters(slice_node) -> Dict[str, str]:
    """The patient sides at the view's left, right, top and bottom edges (an axial view: R, L, A, P)."""
    slice_to_ras = _array(slice_node.GetSliceToRAS())
    right, up = slice_to_ras[:3, 0], slice_to_ras[:3, 1]
    return {"left": side_letter(-right), "right": side_letter(right), "top": side_letter(up),
            "bottom": side_letter(-up)}


def slice_number(slice_node, volume) -> Optional[Tuple[int, int]]:
    """(number 1..count, count) of the volume's slice the view shows, or None when the view cuts the
    volume obliquely or outside it."""
    image = volume.GetImageData() if volume is not None else None
    if image is None:
        return None
    ras_to_ijk = _array(_vtk_matrix(volume.GetRASToIJKMatrix))
    slice_to_ras = _array(slice_node.GetSliceToRAS())
    centre = ras_to_ijk @ slice_to_ras[:, 3]
    normal = ras_to_ijk[:3, :3] @ slice_to_ras[:3, 2]
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < 0.99 * np.linalg.norm(normal):
        return None
    count = image.GetDimensions()[axis]
    number = int(round(centre[axis])) + 1
    return (number, count) if 1 <= number <= count else None


def _vtk_matrix(getter):
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    matrix = vtkMatrix4x4()
    getter(matrix)
    return matrix


def _array(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(row, column) for column in range(4)] for row in range(4)])
