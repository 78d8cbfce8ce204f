"""The Slicer module's logic (dinseg.slicer.logic) against a real MRML scene from slicer-core.

Nothing of Slicer is mocked: volumes are read by Slicer's own reader, segmentations are
written and read by Slicer's storage nodes, terminology is parsed by Slicer's Terminologies
logic. The model is the session's light DIN network with fixed random weights
(``random_ct_model`` in conftest.py): meaningless organs, but deterministic label maps, which
is what these tests compare (in-process vs CLI vs background job vs files).
"""

from __future__ import annotations

import json
import shutil
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs slicer-core (Kitware's PyPI build of Slicer's MRML core; "
                                              "wheels exist for Python >= 3.10 only)")
vtk = pytest.importorskip("vtk")

import SimpleITK as sitk  # noqa: E402

from slicer_scene import add_volume, load_volume, make_scene, node_ids  # noqa: E402

from dinseg.pipeline.options import SegmentOptions  # noqa: E402
from dinseg.slicer import convert  # noqa: E402
from dinseg.slicer.logic import DINSegmentationMRMLLogic  # noqa: E402
from dinseg.slicer.segmentation import TERMINOLOGY_FILE  # noqa: E402
from dinseg.core.errors import InputError  # noqa: E402
from dinseg.core.geometry import Geometry  # noqa: E402
from dinseg.pipeline.segmenter import Segmenter  # noqa: E402
from dinseg.slicer.convert import set_volume_voxels  # noqa: E402
from dinseg.core.io import ImageVolume  # noqa: E402
from dinseg.models import load_card  # noqa: E402
from dinseg.core.terminology import (KNOWN_STRUCTURES, SYNAPSE_ORGANS, TERMINOLOGY_CONTEXT, LabelInfo,  # noqa: E402
                                label_infos_for, slicer_terminology_entry)

SAMPLES = Path(__file__).resolve().parents[1] / "DINSegmentation" / "dinseg" / "assets" / "sample"
CT = SAMPLES / "abdomen_ct.nii.gz"
MR = SAMPLES / "abdomen_mr.nii.gz"


# ------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def card_path(random_ct_model) -> Path:
    return Path(random_ct_model)


@pytest.fixture(scope="session")
def card(card_path):
    return load_card(card_path)


def new_logic(env):
    return DINSegmentationMRMLLogic(env.scene, sequences_logic=env.sequences_logic,
                                         terminologies_logic=env.terminologies_logic)


@pytest.fixture
def env():
    return make_scene()


@pytest.fixture
def logic(env):
    return new_logic(env)


@pytest.fixture(scope="session")
def ct(card_path):
    """One scene with the CT sample loaded by Slicer and segmented in-process (shared, read-only)."""
    env = make_scene()
    logic = new_logic(env)
    logic.segmentation.load_terminology()
    volume = load_volume(env, CT, "CT")
    segmentation = logic.segmentation.segment(volume, SegmentOptions(model=card_path, device="cpu"))
    labels = convert.segmentation_to_labels(segmentation, volume, load_card(card_path).labels)
    return types.SimpleNamespace(env=env, logic=logic, volume=volume, segmentation=segmentation, labels=labels)


@pytest.fixture(scope="session")
def cli_outputs(tmp_path_factory, card_path):
    """The CT segmented by the CLI, as a NIfTI labelmap and as a .seg.nrrd (two processes at once)."""
    folder = tmp_path_factory.mktemp("cli")
    outputs = {"nii": folder / "ct_labels.nii.gz", "seg": folder / "ct.seg.nrrd"}
    processes = {key: subprocess.Popen([sys.executable, "-m", "dinseg.apps.cli", "segment", str(CT), "-o", str(path),
                                        "--model", str(card_path), "--device", "cpu"],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for key, path in outputs.items()}
    for key, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, f"dinseg segment -o {outputs[key].name} failed:\n{stderr}"
    return outputs


def matrix(node) -> np.ndarray:
    return convert.matrix_to_numpy(convert.ijk_to_ras(node))


def segments(node):
    segmentation = node.GetSegmentation()
    return [(segmentation.GetNthSegmentID(i), segmentation.GetNthSegment(i))
            for i in range(segmentation.GetNumberOfSegments())]


def terminology_types(terminologies_logic, context):
    """{(scheme, code) of type or (type code, modifier code): (rgb, 3dSlicerLabel)} of a loaded context."""
    found = {}
    category = slicer.vtkSlicerTerminologyCategory()
    for c in range(terminologies_logic.GetNumberOfCategoriesInTerminology(context)):
        terminologies_logic.GetNthCategoryInTerminology(context, c, category)
        term_type = slicer.vtkSlicerTerminologyType()
        for t in range(terminologies_logic.GetNumberOfTypesInTerminologyCategory(context, category)):
            terminologies_logic.GetNthTypeInTerminologyCategory(context, category, t, term_type)
            key = (category.GetCodeValue(), term_type.GetCodingSchemeDesignator(), term_type.GetCodeValue())
            found[key] = (tuple(term_type.GetRecommendedDisplayRGBValue()), term_type.GetSlicerLabel())
            modifier = slicer.vtkSlicerTerminologyType()
            for m in range(terminologies_logic.GetNumberOfTypeModifiersInTerminologyType(context, category, term_type)):
                terminologies_logic.GetNthTypeModifierInTerminologyType(context, category, term_type, m, modifier)
                found[key + (modifier.GetCodingSchemeDesignator(), modifier.GetCodeValue())] = (
                    tuple(modifier.GetRecommendedDisplayRGBValue()), modifier.GetSlicerLabel())
    return found


def parse_entry(terminologies_logic, entry_string):
    entry = slicer.vtkSlicerTerminologyEntry()
    assert terminologies_logic.DeserializeTerminologyEntry(entry_string, entry), entry_string
    assert terminologies_logic.UpdateEntryFromLoadedTerminologies(entry, [TERMINOLOGY_CONTEXT], []), entry_string
    return entry


def assert_segments_match_card(node, card_labels, terminologies_logic):
    found = segments(node)
    assert [segment_id for segment_id, _ in found] == [f"Segment_{label.value}" for label in card_labels]
    for (_, segment), label in zip(found, card_labels):
        assert segment.GetName() == label.name
        assert np.allclose(segment.GetColor(), label.color_float, atol=1e-6), label.name
        assert not segment.GetNameAutoGenerated() and not segment.GetColorAutoGenerated()
        tag = convert.segment_terminology(segment)
        assert tag == slicer_terminology_entry(label)
        entry = parse_entry(terminologies_logic, tag)
        assert entry.GetTerminologyContextName() == TERMINOLOGY_CONTEXT
        assert entry.GetCategoryObject().GetCodeValue() == label.category.value
        assert entry.GetTypeObject().GetCodeValue() == label.type.value
        assert entry.GetTypeObject().GetCodingSchemeDesignator() == label.type.scheme
        if label.modifier is None:
            assert not entry.GetTypeModifierObject().GetCodeValue()
            recommended = entry.GetTypeObject().GetRecommendedDisplayRGBValue()
        else:
            assert entry.GetTypeModifierObject().GetCodeValue() == label.modifier.value
            recommended = entry.GetTypeModifierObject().GetRecommendedDisplayRGBValue()
        assert tuple(recommended) == tuple(label.color), label.name


def reference_geometry(node) -> str:
    return node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())


def volume_geometry_string(volume) -> str:
    return slicer.vtkSegmentationConverter.SerializeImageGeometry(convert.ijk_to_ras(volume), volume.GetImageData())


def read_seg_nrrd(env, path):
    node = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = env.scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node), f"Slicer could not read {path}"
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def add_cine_sequence(env, frames, ijk_to_ras, name="cine"):
    """A volume sequence of (z, y, x) frames with a browser; returns (browser, sequence, proxy volume)."""
    sequence = env.scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    sequence.SetIndexName("time")
    sequence.SetIndexUnit("ms")
    frame_node = slicer.vtkMRMLScalarVolumeNode()
    for index, frame in enumerate(frames):
        set_volume_voxels(frame_node, frame, ijk_to_ras)
        sequence.SetDataNodeAtValue(frame_node, str(40 * index))
    browser = env.scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", f"{name} browser")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    env.sequences_logic.UpdateProxyNodesFromSequences(browser)
    return browser, sequence, browser.GetProxyNode(sequence)


@pytest.fixture(scope="session")
def cine(card):
    """Three different frames cropped from the MR sample, their IJK-to-RAS matrix, and each
    frame's labels from the engine directly (what the Slicer side must reproduce)."""
    env = make_scene()
    volume = load_volume(env, MR, "MR source")
    k0, j0, i0 = 6, 8, 12  # an 8 x 72 x 96 crop around the organs (keeps the tests quick)
    image = np.ascontiguousarray(convert.volume_array(volume)[k0:k0 + 8, j0:j0 + 72, i0:i0 + 96])
    ijk_to_ras = matrix(volume)
    ijk_to_ras[:3, 3] += ijk_to_ras[:3, :3] @ [i0, j0, k0]
    frames = [image, np.ascontiguousarray(image[:, :, ::-1]), (image * 0.6).astype(image.dtype)]
    geometry = Geometry.from_index_to_ras(ijk_to_ras, image.shape[::-1])
    segmenter = Segmenter(card, device="cpu")
    expected = [segmenter.segment(ImageVolume(frame, geometry)).labels for frame in frames]
    assert not np.array_equal(expected[0], expected[1])
    return types.SimpleNamespace(frames=frames, ijk_to_ras=ijk_to_ras, expected=expected)


# ------------------------------------------------------------------------------------------
# terminology
# ------------------------------------------------------------------------------------------
def test_terminology_file_agrees_with_known_structures():
    document = json.loads(TERMINOLOGY_FILE.read_text())
    assert document["SegmentationCategoryTypeContextName"] == TERMINOLOGY_CONTEXT
    categories = document["SegmentationCodes"]["Category"]
    in_file = {}
    for category in categories:
        for term_type in category["Type"]:
            key = (category["CodeValue"], term_type["CodingSchemeDesignator"], term_type["CodeValue"])
            if "Modifier" not in term_type:
                in_file[key + (None,)] = term_type
            for modifier in term_type.get("Modifier", []):
                in_file[key + (modifier["CodeValue"],)] = dict(modifier, _type=term_type)
    expected = {}
    for name, (code, modifier, color) in KNOWN_STRUCTURES.items():
        key = ("123037004", code.scheme, code.value, modifier.value if modifier else None)
        expected[key] = name
        assert key in in_file, f"{name}: {code} {modifier} is missing from {TERMINOLOGY_FILE.name}"
        entry = in_file[key]
        assert entry["3dSlicerLabel"] == name
        assert tuple(entry["recommendedDisplayRGBValue"]) == color, name
        assert entry["CodeMeaning"] == (modifier or code).meaning
        if modifier is not None:
            assert entry["_type"]["CodeMeaning"] == code.meaning
    assert set(in_file) == set(expected), "the terminology file has structures that KNOWN_STRUCTURES lacks"


def test_terminology_file_loads_in_slicer_with_every_code(env, logic):
    assert logic.segmentation.load_terminology() == TERMINOLOGY_CONTEXT
    assert logic.segmentation.load_terminology() == TERMINOLOGY_CONTEXT  # a second load is a no-op
    names = vtk.vtkStringArray()
    env.terminologies_logic.GetLoadedTerminologyNames(names)
    loaded = [names.GetValue(i) for i in range(names.GetNumberOfValues())]
    assert loaded.count(TERMINOLOGY_CONTEXT) == 1
    found = terminology_types(env.terminologies_logic, TERMINOLOGY_CONTEXT)
    for name, (code, modifier, color) in KNOWN_STRUCTURES.items():
        key = ("123037004", code.scheme, code.value) + ((modifier.scheme, modifier.value) if modifier else ())
        assert key in found, f"{name} not found in the loaded terminology"
        assert found[key] == (color, name)
        label = label_infos_for([name])[0]
        entry = parse_entry(env.terminologies_logic, slicer_terminology_entry(label))
        assert entry.GetTerminologyContextName() == TERMINOLOGY_CONTEXT
        assert slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(entry) == \
            slicer_terminology_entry(label)


# ------------------------------------------------------------------------------------------
# volumes and in-process segmentation
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [CT, MR], ids=["ct", "mr"])
def test_volume_to_image_equals_simpleitk_reading_of_the_file(env, path):
    volume = load_volume(env, path, "input")
    image = convert.volume_to_image(volume)
    reference = sitk.ReadImage(str(path))
    assert image.geometry.matches(Geometry.from_sitk(reference), tolerance=1e-5), (image.geometry, reference)
    assert np.array_equal(image.array, sitk.GetArrayFromImage(reference))
    assert image.array.shape == image.geometry.array_shape
    if path == CT:  # LPS direction (-1, -1, 1) is the identity in Slicer's RAS
        assert np.allclose(image.geometry.direction_matrix, np.diag([-1, -1, 1]))
        assert np.allclose(matrix(volume)[:3, :3], np.diag([3, 3, 3]))
    image.array[:] = 0  # a copy: the node's voxels are untouched
    assert convert.volume_array(volume).any()


def test_segment_gives_named_coloured_tagged_segments_on_the_volume_grid(ct, card):
    node = ct.segmentation
    assert node.GetName() == "CT DIN segmentation"
    assert ct.env.scene.IsNodePresent(node) and node.GetDisplayNode() is not None
    assert_segments_match_card(node, card.labels, ct.env.terminologies_logic)
    assert node.GetSegmentation().GetNumberOfLayers() == 1
    assert reference_geometry(node) == volume_geometry_string(ct.volume)
    assert node.GetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole()) == ct.volume.GetID()
    assert ct.labels.shape == convert.volume_array(ct.volume).shape
    assert len(np.unique(ct.labels)) >= 3, "the random model should still produce several labels"


def test_segment_voxels_equal_the_cli_output_for_the_same_file(ct, cli_outputs):
    written = sitk.ReadImage(str(cli_outputs["nii"]))
    assert Geometry.from_sitk(written).matches(convert.volume_to_image(ct.volume).geometry, tolerance=1e-4)
    assert np.array_equal(sitk.GetArrayFromImage(written), ct.labels)


def test_labels_to_segmentation_keeps_every_model_label_and_maps_values(env, logic):
    volume = load_volume(env, MR, "MR")
    shape = convert.volume_array(volume).shape
    infos = [LabelInfo(value=2, name="a", color=(10, 20, 30), type=KNOWN_STRUCTURES["liver"][0]),
             LabelInfo(value=5, name="b", color=(40, 50, 60), type=KNOWN_STRUCTURES["spleen"][0]),
             LabelInfo(value=9, name="c", color=(70, 80, 90), type=KNOWN_STRUCTURES["aorta"][0])]
    labels = np.zeros(shape, np.uint8)
    labels[2:5, 10:30, 10:30] = 5
    labels[6:8, 40:50, 40:60] = 7  # not a model label: background
    node = logic.segmentation.labels_to_segmentation(labels, volume, infos, name="partial")
    assert [segment_id for segment_id, _ in segments(node)] == ["Segment_2", "Segment_5", "Segment_9"]
    exported = convert.segmentation_to_labels(node, volume, infos)
    assert np.array_equal(exported, np.where(labels == 5, 5, 0))
    for segment_id, _ in segments(node):
        mask = convert.segmentation_to_labels(node, volume, [i for i in infos if f"Segment_{i.value}" == segment_id])
        assert mask.any() == (segment_id == "Segment_5")
    before = node_ids(env.scene)
    with pytest.raises(InputError):
        logic.segmentation.labels_to_segmentation(labels[:-1], volume, infos)
    with pytest.raises(InputError):
        logic.segmentation.labels_to_segmentation(labels[:-1], volume, infos, output=node)
    assert node_ids(env.scene) == before
    assert np.array_equal(convert.segmentation_to_labels(node, volume, infos), exported)
    assert not logic.segmentation.can_undo_replace(node)


def test_segment_refuses_a_constant_volume_and_adds_nothing(env, logic, card_path):
    volume = load_volume(env, MR, "flat")
    set_volume_voxels(volume, np.zeros(convert.volume_array(volume).shape, np.int16), matrix(volume))
    before = node_ids(env.scene)
    with pytest.raises(InputError, match="constant"):
        logic.segmentation.segment(volume, SegmentOptions(model=card_path, device="cpu"))
    assert node_ids(env.scene) == before


# ------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------
def test_seg_nrrd_round_trip_through_slicer_and_slicerio(ct, card, tmp_path):
    import slicerio

    path = tmp_path / "ct.seg.nrrd"
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(True)
    assert storage.WriteData(ct.segmentation)

    env = make_scene()
    logic = new_logic(env)
    logic.segmentation.load_terminology()
    volume = load_volume(env, CT, "CT")
    node = read_seg_nrrd(env, path)
    assert_segments_match_card(node, card.labels, env.terminologies_logic)
    assert reference_geometry(node) == reference_geometry(ct.segmentation)
    assert np.array_equal(convert.segmentation_to_labels(node, volume, card.labels), ct.labels)

    read = slicerio.read_segmentation(str(path))
    assert np.array_equal(np.transpose(read["voxels"], (2, 1, 0)), ct.labels)
    assert np.allclose(read["ijkToLPS"], convert.volume_to_image(ct.volume).geometry.index_to_lps(), atol=1e-4)
    assert [s["name"] for s in read["segments"]] == [label.name for label in card.labels]
    assert [s["labelValue"] for s in read["segments"]] == [label.value for label in card.labels]
    for segment, label in zip(read["segments"], card.labels):
        terminology = segment["terminology"]
        assert terminology["contextName"] == TERMINOLOGY_CONTEXT
        assert terminology["type"] == label.type.to_list()
        assert terminology.get("typeModifier") == (label.modifier.to_list() if label.modifier else None)


def test_cli_seg_nrrd_is_read_by_slicer_with_names_colours_tags_and_geometry(ct, card, cli_outputs):
    env = make_scene()
    logic = new_logic(env)
    logic.segmentation.load_terminology()
    volume = load_volume(env, CT, "CT")
    node = read_seg_nrrd(env, cli_outputs["seg"])
    assert_segments_match_card(node, card.labels, env.terminologies_logic)
    assert np.array_equal(convert.segmentation_to_labels(node, volume, card.labels), ct.labels)
    labelmap = slicer.vtkOrientedImageData()
    node.GetBinaryLabelmapRepresentation("Segment_5", labelmap)
    image_to_world = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(image_to_world)
    assert np.allclose(convert.matrix_to_numpy(image_to_world), matrix(volume), atol=1e-4)
    assert node.GetSegmentation().GetNumberOfLayers() == 1


# ------------------------------------------------------------------------------------------
# replace and undo
# ------------------------------------------------------------------------------------------
def test_replace_keeps_the_node_and_its_display_and_undo_restores_the_previous_content(env, logic, card_path, card):
    volume = load_volume(env, MR, "MR")
    node = logic.segmentation.segment(volume, SegmentOptions(model=card_path, device="cpu"))
    display = node.GetDisplayNode()
    display.SetOpacity(0.3)
    first = convert.segmentation_to_labels(node, volume, card.labels)
    count = env.scene.GetNumberOfNodes()
    assert not logic.segmentation.can_undo_replace(node)

    replaced = logic.segmentation.segment(volume, SegmentOptions(model=card_path, device="cpu", enhancement_method="gamma"), output=node)
    second = convert.segmentation_to_labels(node, volume, card.labels)
    assert replaced is node and node.GetDisplayNode() is display and display.GetOpacity() == pytest.approx(0.3)
    assert env.scene.GetNumberOfNodes() == count
    assert not np.array_equal(first, second), "gamma enhancement should change the random model's output"
    assert logic.segmentation.can_undo_replace(node)

    assert logic.segmentation.undo_last_replace(node)
    assert np.array_equal(convert.segmentation_to_labels(node, volume, card.labels), first)
    logic.segmentation.load_terminology()
    assert_segments_match_card(node, card.labels, env.terminologies_logic)
    assert node.GetDisplayNode() is display
    assert not logic.segmentation.undo_last_replace(node)


def test_show_3d_creates_closed_surfaces(env, logic):
    volume = load_volume(env, MR, "MR")
    labels = np.zeros(convert.volume_array(volume).shape, np.uint8)
    labels[5:12, 20:50, 20:60] = 1
    node = logic.segmentation.labels_to_segmentation(labels, volume, label_infos_for(["liver", "spleen"]))
    assert logic.segmentation.show_3d(node)
    assert node.GetSegmentation().ContainsRepresentation("Closed surface")
    assert node.GetDisplayNode().GetVisibility3D()
    surface = vtk.vtkPolyData()
    node.GetClosedSurfaceRepresentation("Segment_1", surface)
    assert surface.GetNumberOfPoints() > 0


# ------------------------------------------------------------------------------------------
# background job
# ------------------------------------------------------------------------------------------
def test_job_completes_with_progress_and_matches_the_synchronous_result(ct, card, card_path, tmp_path):
    scene = ct.env.scene
    before = node_ids(scene)
    job = ct.logic.segmentation.create_job(ct.volume, SegmentOptions(model=card_path, device="cpu"), temp_root=str(tmp_path))
    job.start()
    fractions = []
    deadline = time.monotonic() + 240
    while job.poll():
        fractions.append(job.fraction)
        assert node_ids(scene) == before, "the scene must not change while the job runs"
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(0.05)
    assert job.state == "succeeded", job.error or "\n".join(job.log_lines)
    assert job.runner.returncode == 0 and job.fraction == 1.0 and job.elapsed > 0
    assert any(0 < f < 1 for f in fractions) and fractions == sorted(fractions), fractions
    assert job.log_lines[0].startswith("$ ") and "--progress json" in job.log_lines[0]
    assert job.read_new_log_lines() and not job.read_new_log_lines()
    node = job.finish()
    try:
        assert job.finish() is node
        assert not job.runner.temp_dir.exists()
        assert node_ids(scene) == before + node_ids_added(scene, before)
        assert np.array_equal(convert.segmentation_to_labels(node, ct.volume, card.labels), ct.labels)
        assert_segments_match_card(node, card.labels, ct.env.terminologies_logic)
        assert reference_geometry(node) == reference_geometry(ct.segmentation)
    finally:
        remove_node(scene, node)


def remove_node(scene, node):
    """Remove a node with its display and storage nodes (as Slicer's Data module does)."""
    dependents = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    dependents += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    scene.RemoveNode(node)
    for dependent in dependents:
        if dependent is not None:
            scene.RemoveNode(dependent)


def node_ids_added(scene, before):
    return [node_id for node_id in node_ids(scene) if node_id not in before]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_job_cancel_stops_the_process_and_leaves_the_scene_as_it_was(ct, card_path, tmp_path):
    scene = ct.env.scene
    before = node_ids(scene)
    job = ct.logic.segmentation.create_job(ct.volume, SegmentOptions(model=card_path, device="cpu"), temp_root=str(tmp_path))
    job.start()
    pid = job.runner.process.pid
    deadline = time.monotonic() + 120
    while job.poll() and job.fraction == 0.0:  # cancel in the middle of the network stage
        assert time.monotonic() < deadline, "no progress reported"
        time.sleep(0.05)
    assert job.runner.running, f"the job ended before it could be cancelled: {job.state} {job.error}"
    assert job.runner.temp_dir.exists()
    started = time.monotonic()
    job.cancel()
    assert time.monotonic() - started < 0.2, "cancel must not wait for the process (it runs on the GUI thread)"
    assert job.state == "cancelled" and not job.poll()
    assert job.runner.ended(timeout=job.runner.GRACE_SECONDS + 10), "the process or its folder outlived the cancel"
    if os.name != "nt":
        # 130: the CLI unwound on SIGTERM (its temporary files removed); negative: killed
        assert job.runner.process.returncode == 130 or job.runner.process.returncode < 0, \
            f"the process ended by itself (status {job.runner.process.returncode})"
        assert not _group_alive(pid), "a process of the job's group is still running"
    assert not job.runner.temp_dir.exists()
    assert node_ids(scene) == before
    with pytest.raises(RuntimeError):
        job.finish()
    assert node_ids(scene) == before


def test_job_with_a_bad_input_reports_the_cli_error_and_adds_nothing(env, logic, card_path, tmp_path):
    volume = load_volume(env, MR, "Flat MR")
    set_volume_voxels(volume, np.full(convert.volume_array(volume).shape, 7, np.int16), matrix(volume))
    before = node_ids(env.scene)
    job = logic.segmentation.create_job(volume, SegmentOptions(model=card_path, device="cpu"), temp_root=str(tmp_path)).start()
    assert job.wait(timeout=120)
    assert job.state == "failed" and job.runner.returncode == 2
    assert "constant" in job.error and "\n" not in job.error
    assert job.error.startswith("Flat MR:"), job.error  # the temporary file's path is not shown
    assert any(line.startswith("dinseg: error: ") for line in job.log_lines)
    assert not job.runner.temp_dir.exists()
    with pytest.raises(RuntimeError, match="constant"):
        job.finish()
    assert node_ids(env.scene) == before


# ------------------------------------------------------------------------------------------
# enhancement preview
# ------------------------------------------------------------------------------------------
def test_preview_has_the_input_geometry_and_enhanced_values(ct, card, card_path):
    scene = ct.env.scene
    before = node_ids(scene)
    enhanced = ct.logic.preview.enhance(ct.volume, method="clahe", strength=1.0, model=card_path)
    plain = ct.logic.preview.enhance(ct.volume, method="none", model=card_path)
    try:
        assert enhanced.GetName() == "CT enhanced (clahe)" and plain.GetName() == "CT enhanced (none)"
        assert np.allclose(matrix(enhanced), matrix(ct.volume))
        assert enhanced.GetImageData().GetDimensions() == ct.volume.GetImageData().GetDimensions()
        values, original = convert.volume_array(enhanced), convert.volume_array(ct.volume)
        assert 0 <= values.min() and values.max() <= 1000 and values.std() > 10
        assert not np.allclose(values, original)
        low, high = card.preprocessing.normalization.low, card.preprocessing.normalization.high
        window = np.clip((original - low) / (high - low), 0, 1) * 1000
        assert np.allclose(convert.volume_array(plain), window, atol=0.05)  # "none" = the card's normalisation
        assert np.abs(values - window).mean() > 20  # CLAHE changed it
        display = enhanced.GetDisplayNode()
        assert (display.GetWindow(), display.GetLevel()) == pytest.approx((1000, 500))
        assert convert.volume_array(ct.volume).dtype == np.int32  # the input is untouched
    finally:
        for node in (enhanced, plain):
            remove_node(scene, node)
    assert node_ids(scene) == before


def test_show_side_by_side_sets_views_and_links_them(env, logic):
    layout_logic = slicer.vtkMRMLLayoutLogic()
    layout_logic.SetMRMLScene(env.scene)
    slice_logics = []
    for name in ("Red", "Yellow", "Green"):
        slice_logic = slicer.vtkMRMLSliceLogic()
        slice_logic.SetMRMLScene(env.scene)
        slice_logic.AddSliceNode(name)
        slice_logics.append(slice_logic)
    slice_nodes = {s.GetLayoutName(): s for s in convert.nodes_by_class(env.scene, "vtkMRMLSliceNode")}
    slice_nodes["Red"].SetOrientation("Axial")
    slice_nodes["Yellow"].SetOrientation("Sagittal")
    volume = load_volume(env, MR, "MR")
    enhanced = logic.preview.enhance(volume, method="gamma")
    assert enhanced.GetName() == "MR enhanced (gamma)"
    plan = logic.preview.show_side_by_side(volume, enhanced)
    assert layout_logic.GetLayoutNode().GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView
    assert plan["layout"] == slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView
    composites = {c.GetLayoutName(): c for c in convert.nodes_by_class(env.scene, "vtkMRMLSliceCompositeNode")}
    assert composites["Red"].GetBackgroundVolumeID() == volume.GetID()
    assert composites["Yellow"].GetBackgroundVolumeID() == enhanced.GetID()
    assert all(c.GetLinkedControl() for c in composites.values())
    assert slice_nodes["Yellow"].GetOrientation() == slice_nodes["Red"].GetOrientation() == "Axial"


# ------------------------------------------------------------------------------------------
# sequences
# ------------------------------------------------------------------------------------------
def test_segment_sequence_gives_a_synchronised_segmentation_sequence(env, logic, card, card_path, cine):
    frames, ijk_to_ras, expected = cine.frames, cine.ijk_to_ras, cine.expected
    browser, sequence, proxy = add_cine_sequence(env, frames, ijk_to_ras)

    result = logic.segmentation.segment_sequence(browser, options=SegmentOptions(model=card_path, device="cpu"))
    assert result.GetNumberOfDataNodes() == 3
    assert [result.GetNthIndexValue(i) for i in range(3)] == [sequence.GetNthIndexValue(i) for i in range(3)]
    assert result.GetIndexName() == "time" and browser.IsSynchronizedSequenceNode(result, False)
    shown = browser.GetProxyNode(result)
    assert shown is not None and env.scene.IsNodePresent(shown) and shown.GetDisplayNode() is not None
    for i in range(3):
        browser.SetSelectedItemNumber(i)
        item = result.GetNthDataNode(i)
        assert [s.GetName() for _, s in segments(item)] == list(SYNAPSE_ORGANS)
        assert np.array_equal(convert.segmentation_to_labels(shown, proxy, card.labels), expected[i]), f"frame {i}"

    # the current frame only: other items stay as they are (frame 2 changes but is not segmented again)
    browser.SetSelectedItemNumber(1)
    for index in (1, 2):
        set_volume_voxels(sequence.GetNthDataNode(index), frames[0], ijk_to_ras)
    logic.segmentation.segment_sequence(browser, options=SegmentOptions(model=card_path, device="cpu"), all_frames=False, output_sequence=result)
    assert result.GetNumberOfDataNodes() == 3
    for i, labels in enumerate([expected[0], expected[0], expected[2]]):
        browser.SetSelectedItemNumber(i)
        assert np.array_equal(convert.segmentation_to_labels(shown, proxy, card.labels), labels), f"frame {i}"


def test_job_on_a_sequence_proxy_segments_all_frames(env, logic, card, card_path, cine, tmp_path):
    browser, sequence, proxy = add_cine_sequence(env, cine.frames, cine.ijk_to_ras)
    expected = cine.expected
    job = logic.segmentation.create_job(proxy, SegmentOptions(model=card_path, device="cpu"), all_frames=True, temp_root=str(tmp_path)).start()
    assert job.wait(timeout=240), "the job did not end"
    assert job.state == "succeeded", job.error
    result = job.finish()
    assert result.IsA("vtkMRMLSequenceNode") and result.GetNumberOfDataNodes() == 3
    shown = browser.GetProxyNode(result)
    for i in range(3):
        browser.SetSelectedItemNumber(i)
        assert np.array_equal(convert.segmentation_to_labels(shown, proxy, card.labels), expected[i]), f"frame {i}"


# ------------------------------------------------------------------------------------------
# the module file itself, with stand-ins for the GUI-only parts that slicer-core lacks
# ------------------------------------------------------------------------------------------
def load_module_script(monkeypatch, env, calls):
    """Import DINSegmentation.py with stand-ins for qt, slicer.i18n, slicer.ScriptedLoadableModule,
    slicer.parameterNodeWrapper and SampleData (Qt/GUI code that slicer-core does not have);
    the MRML side (slicer, vtk, slicer.util, the scene and module logics) is the real one."""
    import importlib.util

    qt = types.ModuleType("qt")
    qt.QTimer, qt.Qt = object, types.SimpleNamespace(ToolTipRole=3)
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr, i18n.translate = (lambda text: text), (lambda context, text: text)

    class ScriptedLoadableModuleLogic:  # the parts of Slicer's class that the logic relies on
        def __init__(self, parent=None):
            self.moduleName = type(self).__name__[:-len("Logic")]
            self.isSingletonParameterNode = True

        def getParameterNode(self):
            return slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    scripted.ScriptedLoadableModule = ScriptedLoadableModule
    scripted.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    scripted.ScriptedLoadableModuleWidget = type("ScriptedLoadableModuleWidget", (), {})
    scripted.ScriptedLoadableModuleTest = type("ScriptedLoadableModuleTest", (), {})
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.Choice = lambda choices: ("Choice", tuple(choices))
    wrapper.WithinRange = lambda low, high: ("WithinRange", low, high)
    sample_data = types.ModuleType("SampleData")
    sample_data.SampleDataLogic = types.SimpleNamespace(
        registerCustomSampleDataSource=lambda **kwargs: calls.append(("sample", kwargs)))
    for name, module in (("qt", qt), ("slicer.i18n", i18n), ("slicer.ScriptedLoadableModule", scripted),
                         ("slicer.parameterNodeWrapper", wrapper), ("SampleData", sample_data)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(slicer, "mrmlScene", env.scene, raising=False)
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(connect=lambda signal, slot: calls.append((signal, slot))),
                        raising=False)
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(
        terminologies=types.SimpleNamespace(logic=lambda: env.terminologies_logic),
        sequences=types.SimpleNamespace(logic=lambda: env.sequences_logic)), raising=False)
    spec = importlib.util.spec_from_file_location("DINSegmentation", Path(convert.__file__).resolve().parents[2] / "DINSegmentation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_module_file_describes_the_module_registers_samples_and_delegates_to_the_mrml_logic(env, monkeypatch):
    from urllib.request import url2pathname

    calls = []
    module = load_module_script(monkeypatch, env, calls)
    parent = types.SimpleNamespace()
    module.DINSegmentation(parent)
    assert parent.title == "DIN Segmentation" and parent.categories == ["Segmentation"]
    assert "arXiv:2509.05953" in parent.helpText and "Apache" in parent.acknowledgementText
    assert ("startupCompleted()", module.onStartupCompleted) in calls

    module.onStartupCompleted()  # registers the samples and loads the terminology
    samples = [kwargs for kind, kwargs in calls if kind == "sample"]
    assert [s["sampleName"] for s in samples] == ["DINAbdomenCT", "DINAbdomenMR"]
    for sample in samples:
        assert sample["uris"].startswith("file://") and sample["checksums"].startswith("SHA256:")
        assert Path(url2pathname(sample["uris"][len("file://"):])).is_file()
        assert Path(sample["thumbnailFileName"]).is_file()
    names = vtk.vtkStringArray()
    env.terminologies_logic.GetLoadedTerminologyNames(names)
    assert TERMINOLOGY_CONTEXT in [names.GetValue(i) for i in range(names.GetNumberOfValues())]

    logic = module.DINSegmentationLogic()
    assert logic.mrml.scene is env.scene and logic.moduleName == "DINSegmentation"
    volume = load_volume(env, MR, "MR")
    labels = np.zeros(convert.volume_array(volume).shape, np.uint8)
    labels[3:9, 20:40, 30:60] = 5
    node = logic.mrml.segmentation.labels_to_segmentation(labels, volume, label_infos_for(SYNAPSE_ORGANS))
    assert node.GetName() == "MR DIN segmentation" and not logic.mrml.segmentation.can_undo_replace(node)
    assert logic.mrml.segmentation.sequence_of(volume) == (None, None)
    assert not hasattr(logic, "segment"), "the module logic forwards nothing: the engine's API is logic.mrml"


# ------------------------------------------------------------------------------------------
# cardiac function
# ------------------------------------------------------------------------------------------
def _table_rows(table_node):
    table = table_node.GetTable()
    return {table.GetValue(row, 0).ToString(): table.GetValue(row, 1).ToDouble()
            for row in range(table.GetNumberOfRows())}


def test_cardiac_function_table_and_curve_from_segmentations_and_from_a_sequence(env, logic):
    from conftest import acdc_patient
    from dinseg.reports.cardiac import cardiac_function
    from dinseg.core.terminology import ACDC_STRUCTURES

    folder = acdc_patient(90)
    labels = label_infos_for(ACDC_STRUCTURES)
    volumes, truths = [], []
    for frame in (11, 4):  # ES first: ED is found as the frame of largest LV
        volumes.append(load_volume(env, folder / f"patient090_frame{frame:02d}.nii.gz", f"frame {frame}"))
        truths.append(sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"patient090_frame{frame:02d}_gt.nii.gz"))))
    segmentations = [logic.segmentation.labels_to_segmentation(truth, volume, labels) for truth, volume in zip(truths, volumes)]
    expected = cardiac_function(truths, volumes[0].GetSpacing(), labels)
    assert (expected.ed_frame, expected.es_frame) == (1, 0)

    result, table, chart = logic.reports.cardiac_function(segmentations, volumes, name="patient090")
    assert result.figures == pytest.approx(expected.figures)
    rows = _table_rows(table)
    assert rows["LV ejection fraction"] == pytest.approx(expected.figures["lv_ef_percent"])
    assert rows["LV myocardial mass (ED)"] == pytest.approx(expected.figures["lv_mass_g"])
    assert rows["ED frame (1 = first)"] == 2
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    series = chart.GetNthPlotSeriesNode(0)
    curve = series.GetTableNode().GetTable().GetColumnByName(series.GetYColumnName())
    assert [curve.GetValue(i) for i in range(curve.GetNumberOfTuples())] == pytest.approx(expected.volumes_ml["lv"])

    browser, sequence, _ = add_cine_sequence(env, [convert.volume_array(v) for v in volumes], matrix(volumes[0]))
    segmentation_sequence = logic.segmentation.store_sequence_segmentation(browser, sequence, dict(enumerate(truths)), labels)
    from_sequence, _, _ = logic.reports.cardiac_function_of_sequence(segmentation_sequence, sequence)
    assert from_sequence.figures == pytest.approx(expected.figures)


def test_cardiac_function_refuses_frames_on_other_grids_before_touching_the_scene(env, logic, cine, card):
    first = add_volume(env, cine.frames[0], cine.ijk_to_ras, "a")
    shifted = cine.ijk_to_ras.copy()
    shifted[0, 3] += 5
    second = add_volume(env, cine.frames[1], shifted, "b")
    segmentations = [logic.segmentation.labels_to_segmentation(labels, volume, card.labels)
                     for labels, volume in zip(cine.expected[:2], (first, second))]
    before = node_ids(env.scene)
    with pytest.raises(InputError, match="another grid"):
        logic.reports.cardiac_function(segmentations, [first, second])
    assert node_ids(env.scene) == before


def test_statistics_table_has_the_engine_numbers(env, logic, card):
    from conftest import SAMPLE_CT_LABELS
    from dinseg.reports.statistics import structure_statistics

    volume = load_volume(env, CT, "CT")
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_CT_LABELS)))
    segmentation = logic.segmentation.labels_to_segmentation(truth, volume, card.labels)
    table = logic.reports.statistics_table(segmentation, volume).GetTable()
    image = convert.volume_to_image(volume)
    expected = structure_statistics(truth, image.array, image.geometry, card.labels)
    assert table.GetNumberOfRows() == len(expected) == 8
    for row, want in enumerate(expected):
        assert table.GetValueByName(row, "structure").ToString() == want["structure"]
        for key in ("voxels", "volume_ml", "mean", "p95", "centroid_lps_x_mm"):
            assert table.GetValueByName(row, key).ToDouble() == pytest.approx(want[key]), key


def test_save_dicom_seg_from_a_segmentation_node_references_the_series(env, logic, card, card_path, tmp_path):
    pytest.importorskip("highdicom", reason="DICOM SEG needs highdicom")
    import pydicom

    from dinseg.apps.bench import write_dicom_series

    files = write_dicom_series(sitk.ReadImage(str(CT))[:, :, 80:90], tmp_path / "series")
    volume = load_volume(env, files[0], "CT series")
    assert volume.GetImageData().GetDimensions()[2] == 10
    segmentation = logic.segmentation.segment(volume, SegmentOptions(model=card_path, device="cpu"))
    labels = convert.segmentation_to_labels(segmentation, volume, card.labels)
    path = logic.reports.save_dicom_seg(segmentation, volume, [str(f) for f in reversed(files)], tmp_path / "seg.dcm",
                                model=card_path)
    seg = pydicom.dcmread(path)
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == pydicom.dcmread(files[0]).StudyInstanceUID
    frames = seg.pixel_array.reshape(-1, *labels.shape[1:])
    segment_of_frame = [f.SegmentIdentificationSequence[0].ReferencedSegmentNumber
                        for f in seg.PerFrameFunctionalGroupsSequence]
    names = {d.SegmentNumber: d.SegmentLabel for d in seg.SegmentSequence}
    value = {info.name: info.value for info in card.labels}
    assert sum(int(frame.sum()) for frame in frames) == int(np.count_nonzero(labels))
    assert all(frame.sum() > 0 for frame in frames) and len(set(segment_of_frame)) == len(names)
    assert {value[n] for n in names.values()} == set(np.unique(labels)) - {0}


# ------------------------------------------------------------------------------------------
# a result keeps its model: later saves and reports read the card from the node
# ------------------------------------------------------------------------------------------
def test_a_segmentation_keeps_its_models_card_whatever_is_selected_later(ct, card, tmp_path):
    from dinseg.models import find_model

    recorded = convert.model_of(ct.segmentation)
    assert (recorded.name, recorded.version, recorded.weights.sha256) == (card.name, card.version,
                                                                           card.weights.sha256)
    other = find_model("chaos-mr-light")  # what a user selects next, e.g. after picking an MR
    assert ct.logic.reports.card_for_saving(ct.segmentation).path == card.path
    assert ct.logic.reports.card_for_saving(ct.segmentation, model=other.path).name == "chaos-mr-light"


def test_a_segmentation_no_model_made_is_saved_only_with_a_named_model(env, logic, card):
    volume = load_volume(env, MR, "MR")
    labels = np.zeros(convert.volume_array(volume).shape, np.uint8)
    labels[3:9, 20:40, 30:60] = 1
    node = logic.segmentation.labels_to_segmentation(labels, volume, card.labels)
    assert convert.model_of(node) is None
    with pytest.raises(InputError, match="not made by a DIN model; name the model"):
        logic.reports.card_for_saving(node)
    stamped = logic.segmentation.labels_to_segmentation(labels, volume, card.labels, card=card)
    logic.segmentation.labels_to_segmentation(labels, volume, card.labels, output=stamped)  # replaced by hand
    assert convert.model_of(stamped) is None, "a replace without a model must not keep the old model's record"


def test_a_recorded_model_that_moved_is_found_by_name_and_version_or_reported(env, logic, card, tmp_path,
                                                                               monkeypatch):
    from dinseg.core.errors import ModelError
    from dinseg.models import import_models

    volume = load_volume(env, MR, "MR")
    labels = np.zeros(convert.volume_array(volume).shape, np.uint8)
    node = logic.segmentation.labels_to_segmentation(labels, volume, card.labels, card=card)
    monkeypatch.setenv("DINSEG_HOME", str(tmp_path / "home"))
    node.SetAttribute("DINSegmentation.modelCard", str(tmp_path / "moved" / "card.json"))
    with pytest.raises(ModelError, match=f"made with model {card.name} {card.version}, which is no longer installed"):
        convert.model_of(node)
    import_models(card.path.parent)  # the same model, installed in the user's folder
    assert convert.model_of(node).weights.sha256 == card.weights.sha256


def test_a_sequence_result_records_its_model_on_the_sequence_and_every_frame(env, logic, card):
    volume = load_volume(env, MR, "MR")
    frames = [convert.volume_array(volume)] * 2
    browser, sequence, _ = add_cine_sequence(env, frames, matrix(volume))
    labels = {0: np.zeros(frames[0].shape, np.uint8), 1: np.ones(frames[0].shape, np.uint8)}
    result = logic.segmentation.store_sequence_segmentation(browser, sequence, labels, card.labels, card=card)
    assert convert.model_of(result).name == card.name
    for index in range(result.GetNumberOfDataNodes()):
        assert convert.model_of(result.GetNthDataNode(index)).name == card.name


def test_dicom_seg_into_the_database_imports_a_copy_and_reports_a_failed_import(env, logic, card, card_path,
                                                                                 tmp_path):
    pytest.importorskip("highdicom", reason="DICOM SEG needs highdicom")
    import pydicom

    from dinseg.apps.bench import write_dicom_series

    files = write_dicom_series(sitk.ReadImage(str(CT))[:, :, 80:84], tmp_path / "series")
    volume = load_volume(env, files[0], "CT series")
    volume.SetAttribute("DICOM.instanceUIDs", " ".join(pydicom.dcmread(f).SOPInstanceUID for f in files))
    indexed = {pydicom.dcmread(f).SOPInstanceUID: str(f) for f in files}
    database = types.SimpleNamespace(fileForInstance=lambda uid: indexed.get(uid, ""))  # ctkDICOMDatabase's call
    segmentation = logic.segmentation.segment(volume, SegmentOptions(model=card_path, device="cpu"))
    imported, folders = tmp_path / "database", []

    def import_copy(folder):  # what DICOMUtils.importDicom(folder, copyFiles=True) does with the files
        folders.append(Path(folder))
        shutil.copytree(folder, imported)
        for copied in imported.iterdir():
            indexed[pydicom.dcmread(copied).SOPInstanceUID] = str(copied)
        return True

    path = logic.reports.save_dicom_seg_to_database(segmentation, volume, database, import_copy,
                                                    temp_root=str(tmp_path))
    seg = pydicom.dcmread(imported / path.name)
    assert seg.Modality == "SEG"
    assert [d.SegmentLabel for d in seg.SegmentSequence] == [
        info.name for info in card.labels if (convert.segmentation_to_labels(segmentation, volume, card.labels)
                                              == info.value).any()]
    assert not folders[0].exists(), "the temporary folder outlived the import"
    for failed_import in (lambda folder: False, lambda folder: True):  # refused; "imported" but not indexed
        with pytest.raises(RuntimeError, match="did not import"):
            logic.reports.save_dicom_seg_to_database(segmentation, volume, database, failed_import,
                                                     temp_root=str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["database", "series"], "a failed import left files"


def test_a_job_in_the_warm_worker_imports_the_same_labels_and_keeps_the_worker(ct, card, card_path, tmp_path):
    from dinseg.pipeline.worker import Worker

    worker = Worker(temp_root=str(tmp_path))
    scene = ct.env.scene
    try:
        pids = []
        for _ in range(2):
            job = ct.logic.segmentation.create_job(ct.volume, SegmentOptions(model=card_path, device="cpu"),
                                                   worker=worker).start()
            assert job.wait(timeout=240) and job.state == "succeeded", job.error
            pids.append(worker.process.pid)
            node = job.finish()
            try:
                assert np.array_equal(convert.segmentation_to_labels(node, ct.volume, card.labels), ct.labels)
                assert convert.model_of(node).path == card.path
            finally:
                remove_node(scene, node)
        assert pids[0] == pids[1], "the second run started a new process"
        assert list(tmp_path.iterdir()) == []
    finally:
        worker.close()
