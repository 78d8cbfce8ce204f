"""Label clean-up (largest component, hole filling) and reading voxels without a copy."""

from __future__ import annotations

import gc

import numpy as np
import SimpleITK as sitk

from conftest import SAMPLE_CT
from dinseg.core.io import read_volume
from dinseg.core.postprocess import clean_labels, label_boxes


def _two_organs() -> np.ndarray:
    """(12, 20, 20) labels: organ 1 as a large block, a small separate block and a voxel touching
    the large block at a corner only; organ 2 a hollow cube with an organ-1 voxel in one hole."""
    labels = np.zeros((12, 20, 20), dtype=np.uint8)
    labels[1:6, 1:8, 1:8] = 1          # large block
    labels[1:3, 12:14, 1:3] = 1        # small block, apart
    labels[6, 8, 8] = 1                # touches the large block's corner (26-connected)
    labels[4:11, 10:17, 10:17] = 2     # a cube ...
    labels[6:9, 12:15, 12:15] = 0      # ... hollow inside
    labels[7, 13, 13] = 1              # an organ-1 voxel in the hole
    return labels


def test_largest_component_drops_the_small_block_and_keeps_corner_neighbours():
    labels = _two_organs()
    cleaned = clean_labels(labels, largest_component=True, fill_holes=False)
    assert not (cleaned[1:3, 12:14, 1:3] == 1).any()
    assert cleaned[6, 8, 8] == 1 and (cleaned[1:6, 1:8, 1:8] == 1).all()
    assert cleaned[7, 13, 13] == 0  # organ 1's stray voxel inside organ 2 is its own component
    assert np.array_equal(cleaned == 2, labels == 2)


def test_hole_filling_takes_background_only():
    labels = _two_organs()
    filled = clean_labels(labels, largest_component=False, fill_holes=True)
    assert (filled[6:9, 12:15, 12:15] == 2).sum() == 26  # the hole's 27 voxels less organ 1's
    assert filled[7, 13, 13] == 1
    assert np.array_equal(filled[labels != 0], labels[labels != 0])


def test_in_place_cleans_the_given_array_and_the_default_leaves_it_untouched():
    labels = _two_organs()
    original = labels.copy()
    copy = clean_labels(labels)
    assert np.array_equal(labels, original) and copy is not labels
    same = clean_labels(labels, in_place=True)
    assert same is labels and np.array_equal(labels, copy)


def test_label_boxes_match_the_extent_of_every_label():
    rng = np.random.default_rng(3)
    labels = np.zeros((30, 40, 50), dtype=np.uint16)
    for value in (1, 7, 300):
        points = rng.integers(0, labels.shape, size=(5, 3))
        labels[tuple(points.T)] = value
    boxes = label_boxes(labels)
    assert sorted(boxes) == [1, 7, 300]
    for value, box in boxes.items():
        where = np.nonzero(labels == value)
        assert box == tuple(slice(axis.min(), axis.max() + 1) for axis in where)
    assert label_boxes(np.zeros((3, 4, 5), dtype=np.uint8)) == {}


def test_read_voxels_outlive_the_volume_and_are_writable():
    array = read_volume(SAMPLE_CT).array
    gc.collect()
    junk = [np.full(2_000_000, 7.0) for _ in range(8)]  # reuse any freed memory
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_CT)))
    assert np.array_equal(array, expected) and len(junk) == 8
    array[0, 0, 0] += 1
    assert array[0, 0, 0] == expected[0, 0, 0] + 1
