"""Image geometry and canonical reorientation.

Conventions: geometry follows ITK (physical space LPS, index order x, y, z); arrays follow
numpy/SimpleITK/Slicer order (z, y, x), with an optional leading time axis (t, z, y, x).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np

#: letter -> (LPS axis, sign) for orientation codes such as "LPS" or "RAS"
_LETTERS = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
ORIENTATION_MODES = ("anatomical", "acquisition")


@dataclass(frozen=True)
class Geometry:
    """Where the voxels of a 3D image lie in patient space (LPS millimetres).

    size and spacing are in index order (x, y, z); ``direction`` is the 3x3 matrix (row-major)
    whose column j is the LPS direction of index axis j, as in ITK.
    """

    size: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @property
    def voxel_ml(self) -> float:
        """The volume of one voxel in millilitres (spacing in mm)."""
        return voxel_ml(self.spacing)

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def array_shape(self) -> Tuple[int, int, int]:
        """Shape of a numpy array on this grid: (z, y, x)."""
        return tuple(reversed(self.size))

    @classmethod
    def from_sitk(cls, image) -> "Geometry":
        """Geometry of a 3D SimpleITK image, or of the first three axes of a 4D one."""
        dim = image.GetDimension()
        direction = np.asarray(image.GetDirection()).reshape(dim, dim)[:3, :3]
        return cls(size=tuple(int(s) for s in image.GetSize()[:3]),
                   spacing=tuple(float(s) for s in image.GetSpacing()[:3]),
                   origin=tuple(float(o) for o in image.GetOrigin()[:3]),
                   direction=tuple(float(d) for d in direction.ravel()))

    def apply_to(self, image) -> None:
        """Set spacing, origin and direction of a 3D SimpleITK image in place."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)

    def index_to_lps(self) -> np.ndarray:
        """4x4 matrix mapping (i, j, k, 1) voxel indices to LPS millimetres."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction_matrix * np.asarray(self.spacing)
        matrix[:3, 3] = self.origin
        return matrix

    def index_to_ras(self) -> np.ndarray:
        """4x4 IJK-to-RAS matrix, as 3D Slicer stores it on volume nodes."""
        return _LPS_TO_RAS @ self.index_to_lps()

    @classmethod
    def from_index_to_ras(cls, matrix: np.ndarray, size: Sequence[int]) -> "Geometry":
        """Inverse of :meth:`index_to_ras` (Slicer's IJKToRAS matrix and the volume's size)."""
        lps = _LPS_TO_RAS @ np.asarray(matrix, dtype=float)
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        direction = lps[:3, :3] / spacing
        return cls(size=tuple(int(s) for s in size), spacing=tuple(float(s) for s in spacing),
                   origin=tuple(float(o) for o in lps[:3, 3]),
                   direction=tuple(float(d) for d in direction.ravel()))

    def matches(self, other: "Geometry", tolerance: float = 1e-4) -> bool:
        """Same grid in space, to ``tolerance`` (mm for origin and spacing)."""
        return (self.size == other.size
                and np.allclose(self.spacing, other.spacing, atol=tolerance)
                and np.allclose(self.origin, other.origin, atol=tolerance)
                and np.allclose(self.direction, other.direction, atol=tolerance))


@dataclass(frozen=True)
class Reorientation:
    """Axis permutation and flips that bring an image into canonical orientation (no resampling).

    In index order (x, y, z): canonical axis c is input axis ``axes[c]``, reversed when
    ``flips[c]``. Works on arrays (z, y, x) and (t, z, y, x); exactly invertible.
    """

    axes: Tuple[int, int, int]
    flips: Tuple[bool, bool, bool]

    def _numpy_axes(self, ndim: int) -> Tuple[int, ...]:
        lead = ndim - 3
        return tuple(range(lead)) + tuple(lead + 2 - self.axes[c] for c in (2, 1, 0))

    def _flipped_numpy_axes(self, ndim: int) -> Tuple[int, ...]:
        lead = ndim - 3
        return tuple(lead + 2 - c for c in range(3) if self.flips[c])

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """Input-ordered array (..., z, y, x) -> canonical array (a view, no copy)."""
        canonical = np.transpose(array, self._numpy_axes(array.ndim))
        return np.flip(canonical, self._flipped_numpy_axes(array.ndim)) if any(self.flips) else canonical

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        """Canonical array -> input-ordered array (a view, no copy)."""
        if any(self.flips):
            array = np.flip(array, self._flipped_numpy_axes(array.ndim))
        return np.transpose(array, np.argsort(self._numpy_axes(array.ndim)))

    def spacing(self, geometry: Geometry) -> Tuple[float, float, float]:
        """Canonical (x, y, z) spacing."""
        return tuple(geometry.spacing[a] for a in self.axes)


def voxel_ml(spacing_mm: Sequence[float]) -> float:
    """The volume in millilitres of a voxel whose edges are ``spacing_mm`` (x, y, z) long."""
    return float(np.prod([float(s) for s in spacing_mm])) / 1000.0


def parse_orientation(code: str) -> np.ndarray:
    """Orientation code ("LPS", "RAS", ...) -> 3x3 matrix whose column c is canonical axis c in LPS."""
    code = code.upper()
    if len(code) != 3 or set(code) - set(_LETTERS) or len({_LETTERS[c][0] for c in code}) != 3:
        raise ValueError(f"orientation code must name three different axes, like 'LPS'; got {code!r}")
    matrix = np.zeros((3, 3))
    for column, letter in enumerate(code):
        axis, sign = _LETTERS[letter]
        matrix[axis, column] = sign
    return matrix


def canonical_reorientation(geometry: Geometry, target: str = "LPS", mode: str = "anatomical") -> Reorientation:
    """The permutation and flips that bring ``geometry`` closest to ``target``.

    mode ``anatomical``: every axis may move, so an axial, coronal or sagittal acquisition
    all give axial canonical slices (abdominal CT and MR). mode ``acquisition``: the slice
    axis (z) stays the slice axis and only the in-plane axes are swapped or flipped to best
    match the target (short-axis cardiac stacks, whose slice normal is oblique).
    """
    if mode not in ORIENTATION_MODES:
        raise ValueError(f"orientation mode must be one of {ORIENTATION_MODES}, got {mode!r}")
    # alignment[c, a]: cosine between canonical axis c and input axis a
    alignment = parse_orientation(target).T @ geometry.direction_matrix
    candidates = itertools.permutations(range(3)) if mode == "anatomical" else [(0, 1, 2), (1, 0, 2)]
    axes = max(candidates, key=lambda perm: sum(abs(alignment[c, perm[c]]) for c in range(3)))
    flips = tuple(bool(alignment[c, axes[c]] < 0) for c in range(3))
    return Reorientation(axes=tuple(axes), flips=flips)
