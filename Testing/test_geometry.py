"""Geometry records and canonical reorientation (exact, invertible, orientation-independent)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from dinseg.core.geometry import Geometry, canonical_reorientation, parse_orientation


def _random_geometry(direction: np.ndarray, size=(7, 5, 3)) -> Geometry:
    return Geometry(size=size, spacing=(0.7, 1.3, 2.9), origin=(10.0, -20.0, 5.0),
                    direction=tuple(direction.ravel()))


def _signed_permutations():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            matrix = np.zeros((3, 3))
            for column, (row, sign) in enumerate(zip(perm, signs)):
                matrix[row, column] = sign
            yield matrix


def _physical_points(geometry: Geometry, array_zyx: np.ndarray) -> dict:
    """{rounded LPS position: voxel value} for every voxel."""
    k, j, i = np.indices(array_zyx.shape)
    index = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    points = (geometry.index_to_lps() @ index)[:3].T
    return {tuple(np.round(p, 4)): v for p, v in zip(points, array_zyx.ravel())}


@pytest.mark.parametrize("direction", list(_signed_permutations()), ids=lambda d: "".join(map(str, d.astype(int).ravel())))
def test_every_axis_aligned_orientation_reaches_lps(direction):
    geometry = _random_geometry(direction)
    reorientation = canonical_reorientation(geometry, "LPS")
    # the canonical axes point along +L, +P, +S
    canonical_direction = np.stack([geometry.direction_matrix[:, a] * (-1 if f else 1)
                                    for a, f in zip(reorientation.axes, reorientation.flips)], axis=1)
    assert np.allclose(canonical_direction, np.eye(3))
    array = np.arange(np.prod(geometry.array_shape)).reshape(geometry.array_shape)
    canonical = reorientation.to_canonical(array)
    assert np.array_equal(reorientation.from_canonical(canonical), array)
    assert canonical.shape[::-1] == tuple(geometry.size[a] for a in reorientation.axes)


def test_same_anatomy_stored_differently_gives_the_same_canonical_array():
    base = Geometry(size=(4, 3, 2), spacing=(1.0, 2.0, 3.0), origin=(0.0, 0.0, 0.0))
    array = np.random.default_rng(0).random(base.array_shape)
    reference = canonical_reorientation(base).to_canonical(array)
    # store the same voxels with flipped x and y and the matching direction and origin
    flipped = array[:, ::-1, ::-1]
    far_corner = base.index_to_lps() @ np.array([3, 2, 0, 1])
    other = Geometry(size=base.size, spacing=base.spacing, origin=tuple(far_corner[:3]),
                     direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    assert _physical_points(other, flipped) == _physical_points(base, array)
    assert np.array_equal(canonical_reorientation(other).to_canonical(flipped), reference)


def test_oblique_direction_picks_the_nearest_axes():
    angle = np.deg2rad(25)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    geometry = _random_geometry(rotation @ np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]]))  # sagittal-like stack
    reorientation = canonical_reorientation(geometry)
    # index axis 2 runs mostly left, axis 0 mostly posterior, axis 1 superior
    assert reorientation.axes == (2, 0, 1) and reorientation.flips == (False, False, False)


def test_acquisition_mode_keeps_the_slice_axis():
    geometry = _random_geometry(np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]]))
    assert canonical_reorientation(geometry, mode="anatomical").axes[2] != 2
    reorientation = canonical_reorientation(geometry, mode="acquisition")
    assert reorientation.axes[2] == 2


def test_slicer_ijk_to_ras_round_trip_matches_simpleitk():
    image = sitk.Image(6, 5, 4, sitk.sitkInt16)
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((10.0, 20.0, -30.0))
    image.SetDirection((0, -1, 0, 1, 0, 0, 0, 0, -1))
    geometry = Geometry.from_sitk(image)
    ras = geometry.index_to_ras()
    # RAS is LPS with the first two coordinates negated
    assert np.allclose(ras[:2], -geometry.index_to_lps()[:2]) and np.allclose(ras[2:], geometry.index_to_lps()[2:])
    assert Geometry.from_index_to_ras(ras, geometry.size).matches(geometry)
    point = image.TransformIndexToPhysicalPoint((1, 2, 3))
    assert np.allclose((geometry.index_to_lps() @ [1, 2, 3, 1])[:3], point)


@pytest.mark.parametrize("code", ["LPX", "LLS", "LP", ""])
def test_bad_orientation_codes_are_refused(code):
    with pytest.raises(ValueError, match="orientation code"):
        parse_orientation(code)


def test_reorientation_handles_time_series_arrays():
    geometry = _random_geometry(np.array([[-1, 0, 0], [0, 0, 1], [0, -1, 0]]))
    reorientation = canonical_reorientation(geometry)
    frames = np.random.default_rng(1).random((3,) + geometry.array_shape)
    canonical = reorientation.to_canonical(frames)
    for t in range(3):
        assert np.array_equal(canonical[t], reorientation.to_canonical(frames[t]))
    assert np.array_equal(reorientation.from_canonical(canonical), frames)


def test_a_voxels_volume_in_millilitres():
    from dinseg.core.geometry import voxel_ml

    assert voxel_ml((1.25, 1.25, 10.0)) == pytest.approx(0.015625)
    assert Geometry(size=(4, 4, 4), spacing=(2.0, 0.5, 3.0), origin=(0.0, 0.0, 0.0)).voxel_ml == pytest.approx(0.003)
