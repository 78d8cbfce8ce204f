"""A DICOM SEG saved from a Slicer scene (``ReportLogic.save_dicom_seg``): every frame lies on the slice
whose labels it holds and references that slice's source image, whatever order the source files come in.

A real MRML scene from slicer-core (``slicer_scene.py``), a DICOM series written from the bundled CT,
read by Slicer's own reader; where the slices' order were mirrored, frames would carry one slice's
labels at another's position. Skipped where slicer-core or highdicom is missing.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs slicer-core (wheels for Python >= 3.10 only)")
pytest.importorskip("highdicom", reason="DICOM SEG needs highdicom")
pydicom = pytest.importorskip("pydicom")

import SimpleITK as sitk  # noqa: E402

from conftest import SAMPLE_CT  # noqa: E402
from slicer_scene import load_volume, make_scene  # noqa: E402

from dinseg.apps.bench import write_dicom_series  # noqa: E402
from dinseg.models import load_card  # noqa: E402
from dinseg.slicer import convert  # noqa: E402
from dinseg.slicer.logic import DINSegmentationMRMLLogic  # noqa: E402

SLICES = 6


def _slice_positions_lps(volume) -> np.ndarray:
    """(k, 3): the LPS position of voxel (0, 0, k) of a volume node, from Slicer's own IJK-to-RAS matrix."""
    ijk_to_ras = convert.matrix_to_numpy(convert.ijk_to_ras(volume))
    ras = np.array([ijk_to_ras @ np.array([0.0, 0.0, k, 1.0]) for k in range(SLICES)])[:, :3]
    return ras * np.array([-1.0, -1.0, 1.0])


def test_each_frame_references_the_source_image_of_its_own_slice(random_ct_model, tmp_path):
    files = write_dicom_series(sitk.ReadImage(str(SAMPLE_CT))[:, :, 80:80 + SLICES], tmp_path / "series")
    env = make_scene()
    logic = DINSegmentationMRMLLogic(env.scene, sequences_logic=env.sequences_logic,
                                     terminologies_logic=env.terminologies_logic)
    volume = load_volume(env, files[0], "CT series")
    shape = convert.volume_array(volume).shape
    assert shape[0] == SLICES
    card = load_card(random_ct_model)
    labels = np.zeros(shape, np.uint8)
    for k in range(SLICES):  # every slice differs from the others: its own structure and extent
        labels[k, 10:20 + 8 * k, 15:30 + 5 * k] = card.labels[k % 3].value
    node = logic.segmentation.labels_to_segmentation(labels, volume, card.labels, card=card)
    shuffled = [str(path) for path in files]
    random.Random(4).shuffle(shuffled)
    assert shuffled not in ([str(p) for p in files], [str(p) for p in reversed(files)])

    seg = pydicom.dcmread(logic.reports.save_dicom_seg(node, volume, shuffled, tmp_path / "seg.dcm"))

    sources = {dataset.SOPInstanceUID: dataset
               for dataset in (pydicom.dcmread(path, stop_before_pixels=True) for path in files)}
    positions = _slice_positions_lps(volume)
    value_of_segment = {item.SegmentNumber: next(info.value for info in card.labels if info.name == item.SegmentLabel)
                        for item in seg.SegmentSequence}
    frames = seg.pixel_array.reshape(-1, *shape[1:])
    seen = []
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        position = np.array(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        distances = np.linalg.norm(positions - position, axis=1)
        k = int(np.argmin(distances))
        assert distances[k] < 1e-3, f"frame at {position} lies on no slice of the volume"
        derivation = item.DerivationImageSequence[0].SourceImageSequence[0]
        source = sources[derivation.ReferencedSOPInstanceUID]
        assert np.allclose(np.array(source.ImagePositionPatient, dtype=float), position, atol=1e-3), \
            f"the frame at slice {k} references the source image at {source.ImagePositionPatient}"
        value = value_of_segment[item.SegmentIdentificationSequence[0].ReferencedSegmentNumber]
        assert np.array_equal(frame.astype(bool), labels[k] == value), f"frame at slice {k} holds another slice"
        seen.append(k)
    assert sorted(seen) == list(range(SLICES))
