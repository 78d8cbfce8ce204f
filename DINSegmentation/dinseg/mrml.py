"""3D Slicer (MRML) side of the engine: volume nodes in, segmentation nodes out.

Needs Slicer's MRML: desktop 3D Slicer, or Kitware's ``slicer-core`` wheel (headless, used by
the tests). Everything here is plain Python over MRML: no Qt, no ``slicer.app``, so the same
code runs in the Slicer GUI (through ``DINSegmentation.DINSegmentationLogic``), in Slicer's
Python console, in ``Slicer --no-main-window --python-script`` and in pytest.

torch, SimpleITK and monai are imported inside the functions that need them, never at import
time: loading this module must stay cheap (Slicer imports it at startup to load terminology).

Three ways to segment:

* :meth:`DINSegmentationMRMLLogic.segment`: synchronous, in this process (console, scripts);
* :class:`SegmentationJob`: the GUI's way; :class:`dinseg.job.SegmentationProcess` (no MRML) runs
  ``python -m dinseg.cli segment`` in a child
  process, reports progress through :meth:`SegmentationJob.poll` and can be cancelled;
* :meth:`DINSegmentationMRMLLogic.segment_sequence`: every frame (or the current one) of a
  volume sequence into a segmentation sequence synchronised with the sequence browser.

Conventions: numpy arrays are (z, y, x) = (K, J, I) as in ``slicer.util.arrayFromVolume``;
the engine's :class:`~dinseg.geometry.Geometry` is LPS, Slicer's matrices are RAS.
Segment IDs are ``Segment_<label value>``, as in the ``.seg.nrrd`` files the CLI writes.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from .errors import InputError
from .geometry import Geometry
from .io import ImageVolume, check_voxels
from .job import JobState, SegmentationProcess
from .terminology import GENERIC_STRUCTURE, TERMINOLOGY_CONTEXT, LabelInfo, segment_id, slicer_terminology_entry

log = logging.getLogger("dinseg")

TERMINOLOGY_FILE = (Path(__file__).resolve().parent / "assets" / "terminology"
                    / "SegmentationCategoryTypeModifier-DINSegmentation.term.json")
#: display range of enhanced preview volumes (enhanced values 0..1 are scaled to it)
PREVIEW_RANGE = (0.0, 1000.0)
BINARY_LABELMAP = "Binary labelmap"

ProgressCallback = Callable[[str, int, int], None]


# --------------------------------------------------------------------------------------------
# volumes <-> engine images
# --------------------------------------------------------------------------------------------
def matrix_to_numpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def ijk_to_ras(volume_node) -> vtk.vtkMatrix4x4:
    """The volume's IJK-to-RAS matrix (its own, parent transforms not applied)."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix


def volume_array(volume_node) -> np.ndarray:
    """A (z, y, x) COPY of a scalar volume's voxels (an InputError for an empty or vector volume)."""
    name = volume_node.GetName() or volume_node.GetID() or "volume"
    image = volume_node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"{name}: the volume has no voxels")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"{name}: has {image.GetNumberOfScalarComponents()} components per voxel "
                         "(colour or vector volume); a scalar volume is needed")
    dims = image.GetDimensions()
    scalars = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return np.array(scalars.reshape(dims[::-1]), copy=True)


def set_volume_voxels(node, array: np.ndarray, ijk_to_ras_matrix) -> None:
    """Give a volume node the voxels of a (z, y, x) array and a 4x4 IJK-to-RAS matrix (nested lists or array)."""
    image = vtk.vtkImageData()
    image.SetDimensions(*array.shape[::-1])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True))
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(ijk_to_ras_matrix[row][column]))
    node.SetIJKToRASMatrix(matrix)
    node.SetAndObserveImageData(image)


def volume_to_image(volume_node) -> ImageVolume:
    """A scalar volume node as the engine's :class:`~dinseg.io.ImageVolume`.

    The array is a copy, (z, y, x); the geometry (LPS) comes from the node's IJKToRAS matrix,
    so it equals what SimpleITK reports for the file the volume was loaded from. A parent
    transform is not applied (the output segmentation gets the same parent transform).
    """
    array = volume_array(volume_node)
    geometry = Geometry.from_index_to_ras(matrix_to_numpy(ijk_to_ras(volume_node)), array.shape[::-1])
    return ImageVolume(array=array, geometry=geometry)


def copy_parent_transform(source, target) -> None:
    """Put ``target`` under the same parent transform as ``source`` (if both are in a scene)."""
    if hasattr(source, "GetTransformNodeID") and hasattr(target, "SetAndObserveTransformNodeID"):
        if source.GetScene() is not None and target.GetScene() is source.GetScene():
            target.SetAndObserveTransformNodeID(source.GetTransformNodeID())


# --------------------------------------------------------------------------------------------
# labels <-> segmentations
# --------------------------------------------------------------------------------------------
def segment_terminology(segment) -> str:
    """A segment's ``TerminologyEntry`` tag ("" if none); Slicer 5.8 has no GetTerminology()."""
    if hasattr(segment, "GetTerminology"):
        return segment.GetTerminology()
    value = vtk.reference("")
    return str(value) if segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), value) else ""


def _oriented_labelmap(labels: np.ndarray, ijk_to_ras_matrix: vtk.vtkMatrix4x4):
    """(z, y, x) uint8 array on the grid of ``ijk_to_ras_matrix`` -> vtkOrientedImageData."""
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(*labels.shape[::-1])
    image.SetImageToWorldMatrix(ijk_to_ras_matrix)
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(labels, dtype=np.uint8).ravel(), deep=True,
                                         array_type=vtk.VTK_UNSIGNED_CHAR)
    image.GetPointData().SetScalars(scalars)
    return image


def build_segmentation(labels: np.ndarray, ijk_to_ras_matrix: vtk.vtkMatrix4x4,
                       label_infos: Sequence[LabelInfo]):
    """A complete, standalone ``vtkSegmentation`` (in no scene) from a labelmap.

    One segment per model label, in the card's order, even where the label is absent (an
    empty segment); IDs ``Segment_<value>``, names, colours and terminology tags from the card;
    all segments share one labelmap layer (as ImportLabelmapToSegmentationNode does with
    pre-created segment IDs: label value i+1 for the i-th segment). Voxels whose value is not a
    card label become background. The reference image geometry is the labelmap's grid.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InputError(f"labels must be a 3D (z, y, x) array, got shape {labels.shape}")
    # map card label values (any order, gaps allowed) to layer values 1..N
    lookup = np.zeros(256, dtype=np.uint8)
    for index, info in enumerate(label_infos):
        lookup[info.value] = index + 1
    layer_values = lookup[np.clip(labels, 0, 255).astype(np.uint8)]
    image = _oriented_labelmap(layer_values, ijk_to_ras_matrix)
    segmentation = slicer.vtkSegmentation()
    if hasattr(segmentation, "SetSourceRepresentationName"):
        segmentation.SetSourceRepresentationName(BINARY_LABELMAP)
    else:  # Slicer 5.8
        segmentation.SetMasterRepresentationName(BINARY_LABELMAP)
    segmentation.SetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
                                        slicer.vtkSegmentationConverter.SerializeImageGeometry(image))
    for index, info in enumerate(label_infos):
        segment = slicer.vtkSegment()
        segment.SetName(info.name)
        segment.SetColor(*info.color_float)
        segment.SetNameAutoGenerated(False)
        segment.SetColorAutoGenerated(False)
        segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), slicer_terminology_entry(info))
        segment.SetLabelValue(index + 1)
        segment.AddRepresentation(BINARY_LABELMAP, image)  # the same image object: one shared layer
        if not segmentation.AddSegment(segment, segment_id(info)):
            raise RuntimeError(f"could not add segment {info.name!r}")
    return segmentation


def copy_segmentation(source, target) -> None:
    """``target.DeepCopy(source)`` for vtkSegmentation, keeping each segment's name/colour
    "auto-generated" flags (vtkSegment.DeepCopy leaves them at their default, True, which would
    let Slicer rename or recolour our segments)."""
    target.DeepCopy(source)
    for index in range(source.GetNumberOfSegments()):
        segment = target.GetSegment(source.GetNthSegmentID(index))
        if segment is not None:
            segment.SetNameAutoGenerated(source.GetNthSegment(index).GetNameAutoGenerated())
            segment.SetColorAutoGenerated(source.GetNthSegment(index).GetColorAutoGenerated())


def segmentation_to_labels(segmentation_node, reference_volume, label_infos: Optional[Sequence[LabelInfo]] = None
                           ) -> np.ndarray:
    """The segments as one (z, y, x) uint8 labelmap on ``reference_volume``'s grid.

    With ``label_infos``: segment ``Segment_<value>`` gets that value (missing segments are
    skipped). Without: the i-th segment gets i + 1. Later segments win where segments overlap.
    """
    segmentation = segmentation_node.GetSegmentation()
    ids, values = vtk.vtkStringArray(), vtk.vtkIntArray()
    if label_infos is None:
        pairs = [(segmentation.GetNthSegmentID(i), i + 1) for i in range(segmentation.GetNumberOfSegments())]
    else:
        pairs = [(segment_id(info), info.value) for info in label_infos
                 if segmentation.GetSegment(segment_id(info)) is not None]
    for identifier, value in pairs:
        ids.InsertNextValue(identifier)
        values.InsertNextValue(value)
    reference = _oriented_labelmap(np.zeros(volume_array_shape(reference_volume), np.uint8),
                                   ijk_to_ras(reference_volume))
    shape = reference.GetDimensions()[::-1]
    if not pairs:
        return np.zeros(shape, np.uint8)
    merged = slicer.vtkOrientedImageData()
    ok = segmentation_node.GenerateMergedLabelmapForAllSegments(
        merged, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, reference, ids, values)
    if not ok:
        raise RuntimeError(f"{segmentation_node.GetName()}: could not export the segments as a labelmap")
    extent = merged.GetExtent()
    if extent[0::2] != (0, 0, 0) or tuple(extent[1::2]) != tuple(s - 1 for s in shape[::-1]):
        raise RuntimeError(f"unexpected merged labelmap extent {extent}")
    array = numpy_support.vtk_to_numpy(merged.GetPointData().GetScalars()).reshape(shape)
    return array.astype(np.uint8)


def segment_label_infos(segmentation_node) -> List[LabelInfo]:
    """Label infos named after the segments, valued as :func:`segmentation_to_labels` without
    ``label_infos`` values them (i-th segment -> i + 1): for engine functions that read names."""
    segmentation = segmentation_node.GetSegmentation()
    return [LabelInfo(value=i + 1, name=segmentation.GetNthSegment(i).GetName(), color=(0, 0, 0),
                      type=GENERIC_STRUCTURE) for i in range(segmentation.GetNumberOfSegments())]


def _card_of(model, image: Optional[ImageVolume] = None):
    """A ModelCard from a card, a card path, a model folder or an installed model name; for
    ``model`` None, the installed model that fits ``image`` (its modality and anatomy)."""
    from .infer import model_for
    from .models import ModelCard, find_model

    if model is None:
        if image is None:
            raise InputError("no model given and no image to choose one for")
        card, reason = model_for(image)
        log.info("model %s chosen: %s", card.name, reason)
        return card
    return model if isinstance(model, ModelCard) else find_model(model)


def _enhancement_from(card, enhancement):
    """segment()'s ``enhancement`` argument -> EnhanceConfig or None (the card's)."""
    from .preprocess import EnhanceConfig, override_enhancement

    if enhancement is None or isinstance(enhancement, EnhanceConfig):
        return enhancement
    if isinstance(enhancement, str):
        return override_enhancement(card.preprocessing.enhancement, enhancement)
    if isinstance(enhancement, dict):
        return EnhanceConfig.from_dict({**card.preprocessing.enhancement.to_dict(), **enhancement})
    raise TypeError(f"enhancement must be None, a method name, a dict or an EnhanceConfig, got {enhancement!r}")


# --------------------------------------------------------------------------------------------
# the logic
# --------------------------------------------------------------------------------------------
class DINSegmentationMRMLLogic:
    """Everything the DIN Segmentation module does to a MRML scene, without Qt.

    scene: the vtkMRMLScene to work in (``slicer.mrmlScene`` in Slicer). The module logics it
    needs (Sequences, Terminologies) are passed in, or found through ``slicer.modules`` when
    running inside Slicer.
    """

    def __init__(self, scene, sequences_logic=None, terminologies_logic=None):
        self.scene = scene
        self._sequences_logic = sequences_logic
        self._terminologies_logic = terminologies_logic
        self._undo: Dict[str, Any] = {}          # segmentation node ID -> vtkSegmentation backup
        self._segmenter = None                   # (key, Segmenter): weights stay loaded between calls
        self._training = None

    # -- module logics -----------------------------------------------------------------------
    @staticmethod
    def _module_logic(name: str):
        modules = getattr(slicer, "modules", None)
        module = getattr(modules, name.lower(), None) if modules is not None else None
        return module.logic() if module is not None else None

    @property
    def sequences_logic(self):
        logic = self._sequences_logic or self._module_logic("Sequences")
        if logic is None:
            raise RuntimeError("the Sequences module logic is not available")
        return logic

    @property
    def terminologies_logic(self):
        logic = self._terminologies_logic or self._module_logic("Terminologies")
        if logic is None:
            raise RuntimeError("the Terminologies module logic is not available")
        return logic

    # -- terminology -------------------------------------------------------------------------
    def load_terminology(self, terminologies_logic=None) -> str:
        """Load our ``.term.json`` into the Terminologies logic (once); returns its context name."""
        logic = terminologies_logic or self.terminologies_logic
        names = vtk.vtkStringArray()
        logic.GetLoadedTerminologyNames(names)
        if TERMINOLOGY_CONTEXT in [names.GetValue(i) for i in range(names.GetNumberOfValues())]:
            return TERMINOLOGY_CONTEXT
        name = logic.LoadTerminologyFromFile(str(TERMINOLOGY_FILE))
        if name != TERMINOLOGY_CONTEXT:
            raise RuntimeError(f"{TERMINOLOGY_FILE}: loaded as {name!r}, expected {TERMINOLOGY_CONTEXT!r}")
        return name

    # -- models ------------------------------------------------------------------------------
    @staticmethod
    def card(model):
        """The model card for a name, card path or folder (ModelError if unknown)."""
        return _card_of(model)

    @staticmethod
    def model_for_volume(volume_node):
        """The installed model card that fits this volume (its modality and anatomy): the module's default."""
        return _card_of(None, volume_to_image(volume_node))

    def _get_segmenter(self, card, device: str, enhancement, largest_component: Optional[bool],
                       fill_holes: Optional[bool],
                       progress: Optional[ProgressCallback]):
        from .infer import Segmenter

        key = (str(card.path), card.name, card.version, card.weights.sha256, device,
               json.dumps(enhancement.to_dict(), sort_keys=True) if enhancement else None,
               largest_component, fill_holes)
        if self._segmenter is None or self._segmenter[0] != key:
            self._segmenter = None  # free the previous network first
            self._segmenter = (key, Segmenter(card, device=device, enhancement=enhancement,
                                              largest_component=largest_component, fill_holes=fill_holes))
        segmenter = self._segmenter[1]
        segmenter.progress = progress or (lambda stage, done, total: None)
        return segmenter

    def release_model(self) -> None:
        """Forget the loaded network (frees its memory)."""
        self._segmenter = None

    # -- synchronous segmentation ------------------------------------------------------------
    def segment(self, volume_node, model=None, device: str = "auto", enhancement=None,
                largest_component: Optional[bool] = None, fill_holes: Optional[bool] = None, output=None,
                progress: Optional[ProgressCallback] = None):
        """Segment a scalar volume in this process; returns the segmentation node.

        model: installed name, card path or ModelCard (None: the model for the volume's modality
        and anatomy, see :meth:`model_for_volume`). enhancement: None (the card's), a method
        name, a dict of EnhanceConfig fields, or an EnhanceConfig. output: None for a new node
        "<volume> DIN segmentation", or an existing segmentation node whose content is replaced
        (same node, display node kept; :meth:`undo_last_replace` brings the old content back).
        progress(stage, done, total) is called as slices are segmented.
        """
        from .infer import check_modality

        image = volume_to_image(volume_node)
        check_voxels(image.array, volume_node.GetName())
        card = _card_of(model, image)
        check_modality(image, card, name=volume_node.GetName())
        segmenter = self._get_segmenter(card, device, _enhancement_from(card, enhancement),
                                        largest_component, fill_holes, progress)
        result = segmenter.segment(image)
        return self.labels_to_segmentation(result.labels, volume_node, card.labels, output=output)

    def labels_to_segmentation(self, labels: np.ndarray, volume_node, label_infos: Sequence[LabelInfo],
                               output=None, name: Optional[str] = None):
        """Put a (z, y, x) labelmap on ``volume_node``'s grid into a segmentation node.

        Builds the complete segmentation first (nothing half-filled reaches the scene), then
        creates a node (``output`` None; named ``name`` or "<volume> DIN segmentation") or
        replaces ``output``'s content, keeping a backup for :meth:`undo_last_replace`.
        The node's reference geometry is the volume's; it gets the volume's parent transform.
        """
        expected = volume_array_shape(volume_node)
        if tuple(np.shape(labels)) != expected:
            raise InputError(f"labels of shape {np.shape(labels)} do not fit volume "
                             f"{volume_node.GetName()} of shape {expected}")
        segmentation = build_segmentation(labels, ijk_to_ras(volume_node), label_infos)
        if output is None:
            node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                name or f"{volume_node.GetName()} DIN segmentation")
            node.CreateDefaultDisplayNodes()
        else:
            node = output
            backup = slicer.vtkSegmentation()
            copy_segmentation(node.GetSegmentation(), backup)
            self._undo[node.GetID()] = backup
        was_modifying = node.StartModify()
        try:
            copy_segmentation(segmentation, node.GetSegmentation())
            if volume_node.GetScene() is not None and volume_node.GetScene() is node.GetScene():
                node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
            copy_parent_transform(volume_node, node)
        finally:
            node.EndModify(was_modifying)
        return node

    # -- replace / undo ----------------------------------------------------------------------
    def can_undo_replace(self, segmentation_node) -> bool:
        return segmentation_node is not None and segmentation_node.GetID() in self._undo

    def undo_last_replace(self, segmentation_node) -> bool:
        """Give ``segmentation_node`` back the content it had before the last replace; False if none."""
        if not self.can_undo_replace(segmentation_node):
            return False
        backup = self._undo.pop(segmentation_node.GetID())
        copy_segmentation(backup, segmentation_node.GetSegmentation())
        return True

    def forget_undo(self) -> None:
        """Drop all replace backups (e.g. when the scene is closed)."""
        self._undo.clear()

    # -- display helpers ---------------------------------------------------------------------
    @staticmethod
    def show_3d(segmentation_node) -> bool:
        """Create the closed-surface representation and show it in 3D views."""
        ok = bool(segmentation_node.CreateClosedSurfaceRepresentation())
        display = segmentation_node.GetDisplayNode()
        if display is not None:
            display.SetVisibility3D(True)
        return ok

    # -- enhancement preview -----------------------------------------------------------------
    def preview(self, volume_node, method: str = "clahe", strength: float = 1.0, model=None, output=None):
        """A new volume "<name> enhanced (<method>)": what the network's enhanced branch sees.

        Intensities are normalised as the model card says (``model`` None: 0.5..99.5 percentile
        of the volume, and the default EnhanceConfig), the engine's ``enhance()`` is applied
        slice by slice and the 0..1 result is scaled to 0..1000 for display. With a model,
        slices are taken along the model's canonical slice axis (axial for abdominal models),
        without it along K; slices keep their native resolution (the network sees them
        resampled to the card's spacing). The output has exactly the input's geometry.
        ``output``: an existing scalar volume node to overwrite instead of a new one.
        """
        import torch

        from .enhance import EnhanceConfig, enhance
        from .preprocess import Normalization, normalize, override_enhancement

        image = volume_to_image(volume_node)
        check_voxels(image.array, volume_node.GetName())
        if model is not None:
            card = _card_of(model)
            bounds = card.preprocessing.normalization.bounds(image.array)
            base = card.preprocessing.enhancement
            reorientation = card.preprocessing.reorientation(image.geometry)
        else:
            bounds = Normalization("percentile", 0.5, 99.5).bounds(image.array)
            base = EnhanceConfig()
            reorientation = None
        config = override_enhancement(base, method, strength) or base
        slices = reorientation.to_canonical(image.array) if reorientation else image.array
        enhanced = np.empty(slices.shape, dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, slices.shape[0], 16):
                chunk = normalize(np.ascontiguousarray(slices[start:start + 16]), bounds)
                enhanced[start:start + 16] = enhance(torch.from_numpy(chunk).unsqueeze(1), config).squeeze(1).numpy()
        values = reorientation.from_canonical(enhanced) if reorientation else enhanced
        values = np.ascontiguousarray(values * (PREVIEW_RANGE[1] - PREVIEW_RANGE[0]) + PREVIEW_RANGE[0],
                                      dtype=np.float32)
        name = f"{volume_node.GetName()} enhanced ({config.method})"
        node = output or self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        if output is not None:
            node.SetName(name)
        image_data = vtk.vtkImageData()
        image_data.SetDimensions(*values.shape[::-1])
        image_data.GetPointData().SetScalars(numpy_support.numpy_to_vtk(values.ravel(), deep=True,
                                                                        array_type=vtk.VTK_FLOAT))
        node.SetIJKToRASMatrix(ijk_to_ras(volume_node))
        node.SetAndObserveImageData(image_data)
        copy_parent_transform(volume_node, node)
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        if display is not None:
            display.AutoWindowLevelOff()
            display.SetWindowLevelMinMax(*PREVIEW_RANGE)
        return node

    def side_by_side(self, original, enhanced) -> Dict[str, Any]:
        """What the widget needs to compare two volumes: layout id and each view's background.

        The widget switches the layout (``slicer.app.layoutManager().setLayout(plan["layout"])``)
        and then calls :meth:`show_side_by_side` with the same volumes.
        """
        return {"layout": slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView,
                "views": {"Red": original.GetID(), "Yellow": enhanced.GetID()}, "linked": True}

    def show_side_by_side(self, original, enhanced) -> Dict[str, Any]:
        """Red view = original, Yellow view = enhanced, same orientation, linked slice views.

        Works on MRML nodes only (layout node, slice and slice composite nodes), so the same
        call works headless; views that do not exist (yet) are skipped.
        """
        plan = self.side_by_side(original, enhanced)
        layout = self.scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
        if layout is not None and layout.GetViewArrangement() != plan["layout"]:
            layout.SetViewArrangement(plan["layout"])
        slice_nodes = {node.GetLayoutName(): node for node in _nodes_by_class(self.scene, "vtkMRMLSliceNode")}
        if "Red" in slice_nodes and "Yellow" in slice_nodes:
            slice_nodes["Yellow"].SetOrientation(slice_nodes["Red"].GetOrientation())
        for composite in _nodes_by_class(self.scene, "vtkMRMLSliceCompositeNode"):
            volume_id = plan["views"].get(composite.GetLayoutName())
            if volume_id is not None:
                composite.SetBackgroundVolumeID(volume_id)
                composite.SetForegroundVolumeID(None)
            composite.SetLinkedControl(True)
            composite.SetHotLinkedControl(True)
        return plan

    # -- volume sequences --------------------------------------------------------------------
    def sequence_of(self, volume_node):
        """(browser, volume sequence) if ``volume_node`` is the proxy of a sequence browser, else (None, None)."""
        if volume_node is None or volume_node.GetScene() is None:
            return None, None
        try:
            logic = self.sequences_logic
        except RuntimeError:
            return None, None
        browser = logic.GetFirstBrowserNodeForProxyNode(volume_node)
        if browser is None:
            return None, None
        return browser, browser.GetSequenceNode(volume_node)

    def segment_sequence(self, browser_node, volume_sequence_node=None, model=None, device: str = "auto",
                         enhancement=None, largest_component: Optional[bool] = None, fill_holes: Optional[bool] = None,
                         all_frames: bool = True, output_sequence=None,
                         progress: Optional[ProgressCallback] = None):
        """Segment the frames of a volume sequence into a segmentation sequence.

        all_frames False: only the browser's current frame (the other items of
        ``output_sequence`` are kept). The result sequence has the volume sequence's index
        values, is synchronised with ``browser_node``, and its proxy node (the segmentation
        shown for the current frame) is ``browser_node.GetProxyNode(result)``.
        Returns the segmentation sequence node.
        """
        sequence = volume_sequence_node or browser_node.GetMasterSequenceNode()
        if sequence is None or sequence.GetNumberOfDataNodes() == 0:
            raise InputError(f"{browser_node.GetName()}: the sequence has no frames")
        card = _card_of(model, None if model is not None else volume_to_image(sequence.GetNthDataNode(0)))
        frames = self._frame_indices(browser_node, sequence, all_frames)
        segmenter = self._get_segmenter(card, device, _enhancement_from(card, enhancement),
                                        largest_component, fill_holes, None)
        results = {}
        for count, index in enumerate(frames):
            frame = sequence.GetNthDataNode(index)
            image = volume_to_image(frame)
            check_voxels(image.array, f"{sequence.GetName()} frame {index + 1}")
            if progress is not None:
                segmenter.progress = lambda stage, done, total, c=count: progress(
                    stage, c * total + done, len(frames) * total)
            results[index] = segmenter.segment(image).labels
        return self.store_sequence_segmentation(browser_node, sequence, results, card.labels, output_sequence)

    @staticmethod
    def _frame_indices(browser_node, sequence, all_frames: bool) -> List[int]:
        if all_frames:
            return list(range(sequence.GetNumberOfDataNodes()))
        current = browser_node.GetSelectedItemNumber()
        return [min(max(current, 0), sequence.GetNumberOfDataNodes() - 1)]

    def store_sequence_segmentation(self, browser_node, volume_sequence, labels_by_frame: Dict[int, np.ndarray],
                                    label_infos: Sequence[LabelInfo], output_sequence=None):
        """Write per-frame labelmaps into a segmentation sequence synchronised with the browser.

        labels_by_frame: volume-sequence item number -> (z, y, x) labels on that frame's grid.
        All items are built before the scene is touched.
        """
        items = []
        for index, labels in sorted(labels_by_frame.items()):
            frame = volume_sequence.GetNthDataNode(index)
            if tuple(np.shape(labels)) != volume_array_shape(frame):
                raise InputError(f"frame {index + 1}: labels of shape {np.shape(labels)} do not fit the frame")
            node = slicer.vtkMRMLSegmentationNode()
            copy_segmentation(build_segmentation(labels, ijk_to_ras(frame), label_infos), node.GetSegmentation())
            items.append((volume_sequence.GetNthIndexValue(index), node))
        if output_sequence is None:
            output_sequence = self.scene.AddNewNodeByClass("vtkMRMLSequenceNode",
                                                           f"{volume_sequence.GetName()} DIN segmentation")
            output_sequence.SetIndexName(volume_sequence.GetIndexName())
            output_sequence.SetIndexUnit(volume_sequence.GetIndexUnit())
            output_sequence.SetIndexType(volume_sequence.GetIndexType())
        for index_value, node in items:
            output_sequence.SetDataNodeAtValue(node, index_value)
        if not browser_node.IsSynchronizedSequenceNode(output_sequence, True):
            browser_node.AddSynchronizedSequenceNode(output_sequence)
        self.sequences_logic.UpdateProxyNodesFromSequences(browser_node)
        proxy = browser_node.GetProxyNode(output_sequence)
        if proxy is not None and proxy.GetDisplayNode() is None:
            proxy.CreateDefaultDisplayNodes()
        return output_sequence

    # -- DICOM SEG ---------------------------------------------------------------------------
    @staticmethod
    def dicom_source_files(volume_node, database=None) -> List[str]:
        """The DICOM files a volume was loaded from (Slicer's DICOM database), [] if none."""
        uids = (volume_node.GetAttribute("DICOM.instanceUIDs") or "").split()
        if not uids or database is None:
            return []
        files = [database.fileForInstance(uid) for uid in uids]
        return [f for f in files if f]

    def save_dicom_seg(self, segmentation_node, volume_node, source_files: Sequence[str], path, model=None):
        """Write the segmentation as a DICOM SEG referencing the volume's source series (``source_files``,
        any order); segments are named and coded as the model card says (``model`` None: the volume's model)."""
        from .dicomseg import order_by_slice, write_dicom_seg

        image = volume_to_image(volume_node)
        card = _card_of(model, image)
        image.source_files = order_by_slice(source_files, image.geometry)
        labels = segmentation_to_labels(segmentation_node, volume_node, card.labels)
        write_dicom_seg(path, labels, image, card.labels, card.name, card.version)
        return Path(path)

    # -- statistics --------------------------------------------------------------------------
    def statistics_table(self, segmentation_node, volume_node, name: Optional[str] = None):
        """A table node of each segment's volume, intensity statistics, centroid (LPS) and bounding
        box on the volume's grid (the numbers of ``dinseg segment --statistics``)."""
        from .statistics import structure_statistics

        infos = segment_label_infos(segmentation_node)
        image = volume_to_image(volume_node)
        rows = structure_statistics(segmentation_to_labels(segmentation_node, volume_node), image.array,
                                    image.geometry, infos)
        table = self.scene.AddNewNodeByClass("vtkMRMLTableNode", name or f"{segmentation_node.GetName()} statistics")
        columns = [key for key in rows[0] if key not in ("label", "frame")]
        for key in columns:
            column = vtk.vtkStringArray() if key == "structure" else vtk.vtkDoubleArray()
            column.SetName(key)
            for row in rows:
                value = row[key]
                column.InsertNextValue(value if key == "structure" else (np.nan if value is None else float(value)))
            table.AddColumn(column)
        return table

    # -- cardiac function --------------------------------------------------------------------
    def cardiac_function(self, segmentation_nodes: Sequence[Any], volume_nodes: Sequence[Any],
                         ed_frame: Optional[int] = None, es_frame: Optional[int] = None,
                         height_cm: Optional[float] = None, weight_kg: Optional[float] = None,
                         name: str = "DIN cardiac function"):
        """Cardiac function of segmented frames, shown as a table and a volume curve.

        segmentation_nodes[i] segments volume_nodes[i] (frames in time order: a cine's
        frames, or an ED and an ES volume); segments are recognised by name (right ventricle,
        myocardium, left ventricle). All volumes must share one grid. ed_frame / es_frame are
        0-based (default: largest / smallest LV). Everything is computed before the scene is
        touched. Returns (CardiacFunction, table node, plot chart node).
        """
        from .cardiac import cardiac_function

        if len(segmentation_nodes) != len(volume_nodes):
            raise InputError(f"{len(segmentation_nodes)} segmentations for {len(volume_nodes)} volumes")
        if not volume_nodes:
            raise InputError("no frames: cardiac function needs an ED and an ES frame at least")
        grid = volume_to_image(volume_nodes[0]).geometry
        for volume in volume_nodes[1:]:
            if not volume_to_image(volume).geometry.matches(grid):
                raise InputError(f"{volume.GetName()}: lies on another grid than {volume_nodes[0].GetName()}; "
                                 "the frames must come from one acquisition")
        infos = segment_label_infos(segmentation_nodes[0])
        labels = [segmentation_to_labels(node, volume) for node, volume in zip(segmentation_nodes, volume_nodes)]
        result = cardiac_function(labels, grid.spacing, infos, ed_frame=ed_frame, es_frame=es_frame,
                                  height_cm=height_cm, weight_kg=weight_kg)
        table, chart = self.show_cardiac_function(result, name)
        return result, table, chart

    def cardiac_function_of_sequence(self, segmentation_sequence, volume_sequence, **options):
        """:meth:`cardiac_function` of every frame of a segmentation sequence (from
        :meth:`segment_sequence`) and its volume sequence; frames matched by index value."""
        segmentations, volumes = [], []
        for index in range(volume_sequence.GetNumberOfDataNodes()):
            value = volume_sequence.GetNthIndexValue(index)
            segmentation = segmentation_sequence.GetDataNodeAtValue(value)
            if segmentation is None:
                raise InputError(f"{volume_sequence.GetName()}: frame {index + 1} is not segmented; segment all frames")
            segmentations.append(segmentation)
            volumes.append(volume_sequence.GetNthDataNode(index))
        return self.cardiac_function(segmentations, volumes, **options)

    def show_cardiac_function(self, result, name: str = "DIN cardiac function"):
        """A table node of the figures and a plot chart of LV and RV volume per frame (new nodes)."""
        table = self.scene.AddNewNodeByClass("vtkMRMLTableNode", name)
        columns = [vtk.vtkStringArray(), vtk.vtkDoubleArray(), vtk.vtkStringArray(), vtk.vtkDoubleArray()]
        for column, title in zip(columns, ("quantity", "value", "unit", "per m2 body surface")):
            column.SetName(title)
        rows = [("ED frame (1 = first)", result.ed_frame + 1, "", None),
                ("ES frame (1 = first)", result.es_frame + 1, "", None)]
        rows += [(label, result.figures.get(key), unit, result.indexed(key)) for key, label, unit in result.ROWS]
        for label, value, unit, indexed in rows:
            columns[0].InsertNextValue(label)
            columns[1].InsertNextValue(np.nan if value is None else float(value))
            columns[2].InsertNextValue(unit)
            columns[3].InsertNextValue(np.nan if indexed is None else float(indexed))
        for column in columns:
            table.AddColumn(column)

        curves = self.scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} volumes")
        frame_column = vtk.vtkDoubleArray()
        frame_column.SetName("frame")
        for frame in range(result.frames):
            frame_column.InsertNextValue(frame + 1)
        curves.AddColumn(frame_column)
        chart = self.scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{name} chart")
        chart.SetTitle("ventricular volume over the cardiac cycle")
        chart.SetXAxisTitle("frame (1 = first)")
        chart.SetYAxisTitle("volume (mL)")
        for key, title, colour in (("lv", "LV volume (mL)", (0.84, 0.15, 0.16)),
                                   ("rv", "RV volume (mL)", (0.12, 0.47, 0.71))):
            if key not in result.volumes_ml:
                continue
            column = vtk.vtkDoubleArray()
            column.SetName(title)
            for value in result.volumes_ml[key]:
                column.InsertNextValue(value)
            curves.AddColumn(column)
            series = self.scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} {key.upper()}")
            series.SetAndObserveTableNodeID(curves.GetID())
            series.SetXColumnName("frame")
            series.SetYColumnName(title)
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            series.SetColor(*colour)
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
        return table, chart

    # -- background job ----------------------------------------------------------------------
    def create_job(self, volume_node, model=None, device: str = "auto",
                   enhancement_method: Optional[str] = None, enhancement_strength: Optional[float] = None,
                   largest_component: Optional[bool] = None, fill_holes: Optional[bool] = None, output=None,
                   all_frames: bool = False, python: Optional[str] = None,
                   temp_root: Optional[str] = None) -> "SegmentationJob":
        """A :class:`SegmentationJob` for this volume (a sequence proxy: its frames), not started."""
        return SegmentationJob(self, volume_node, model=model, device=device, enhancement_method=enhancement_method,
                               enhancement_strength=enhancement_strength, largest_component=largest_component,
                               fill_holes=fill_holes, output=output, all_frames=all_frames, python=python,
                               temp_root=temp_root)

    # -- training ----------------------------------------------------------------------------
    def train(self, config, progress=None, resume: bool = False) -> Dict[str, Any]:
        """Train a DIN model (blocking), with :class:`dinseg.train.DINTrainingLogic`.

        config: a TrainConfig, a dict of its fields, or a YAML/JSON file. Returns the training
        summary ({"best_card", "last_card", "best_dice", "epochs"}); the cards can be passed as
        ``model`` to :meth:`segment`. :meth:`cancel_training` (e.g. from a progress callback)
        stops at the next step.
        """
        from .train import DINTrainingLogic, TrainConfig

        if isinstance(config, TrainConfig):
            pass
        elif isinstance(config, dict):
            config = TrainConfig.from_dict(config)
        else:
            config = TrainConfig.from_file(config)
        self._training = DINTrainingLogic(config, progress=progress, resume=resume)
        try:
            return self._training.run()
        finally:
            self._training = None

    def cancel_training(self) -> None:
        if self._training is not None:
            self._training.cancel()


def volume_array_shape(volume_node):
    """(z, y, x) shape of a volume's voxel array."""
    image = volume_node.GetImageData()
    if image is None:
        raise InputError(f"{volume_node.GetName()}: the volume has no voxels")
    return tuple(image.GetDimensions()[::-1])


def _nodes_by_class(scene, class_name: str) -> List[Any]:
    return [scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name))]


# --------------------------------------------------------------------------------------------
# background segmentation through the CLI
# --------------------------------------------------------------------------------------------
def default_python() -> str:
    """The Python to run the CLI with: Slicer's PythonSlicer inside Slicer, else this interpreter."""
    if hasattr(slicer, "app"):
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


class SegmentationJob:
    """Segment a volume node in a child process: :class:`dinseg.job.SegmentationProcess` plus the scene.

    Typical use (the widget drives :meth:`poll` from a ``qt.QTimer``)::

        job = SegmentationJob(logic, volume).start()
        while job.poll():                 # parse progress; True while the process runs
            show(job.fraction, job.stage, job.read_new_log_lines(), job.elapsed)
        node = job.finish()               # import the result (raises if the job failed)

    State, progress, log, :meth:`poll`, :meth:`wait` and :meth:`cancel` are those of the
    process (``job.runner``); the scene is not touched until :meth:`finish`. A sequence proxy
    volume with ``all_frames`` is written as a 4D image, segmented in one run, and imported as a
    segmentation sequence (``all_frames`` False: the current frame only).
    """

    def __init__(self, logic: DINSegmentationMRMLLogic, volume_node, model=None, device: str = "auto",
                 enhancement_method: Optional[str] = None, enhancement_strength: Optional[float] = None,
                 largest_component: Optional[bool] = None, fill_holes: Optional[bool] = None, output=None,
                 all_frames: bool = False, python: Optional[str] = None, temp_root: Optional[str] = None,
                 extra_args: Sequence[str] = ()):
        from .preprocess import chosen_method

        self.logic = logic
        self.volume_node = volume_node
        self.card = _card_of(model, None if model is not None else volume_to_image(volume_node))
        self.output = output
        self.browser, self.sequence = logic.sequence_of(volume_node)
        self.all_frames = bool(all_frames and self.sequence is not None)
        self.result = None
        self._frame = None
        self._finished = False
        self.runner = SegmentationProcess(
            self.card, device=device, enhancement_method=chosen_method(enhancement_method),
            enhancement_strength=enhancement_strength, largest_component=largest_component, fill_holes=fill_holes,
            python=python or default_python(), temp_root=temp_root, extra_args=extra_args,
            input_name=volume_node.GetName() or "input volume")

    def __getattr__(self, name: str):
        """Everything about the run itself (state, fraction, stage, error, poll, cancel, ...) is the runner's."""
        if name == "runner":
            raise AttributeError(name)
        return getattr(self.runner, name)

    @property
    def state(self) -> str:
        return JobState.FINISHED if self._finished else self.runner.state

    def start(self) -> "SegmentationJob":
        """Write the input to a temporary folder and launch the CLI."""
        if self.runner.state != JobState.CREATED:
            raise RuntimeError(f"the job was already started ({self.runner.state})")
        path = self.runner.prepare(input_name="input-frames.nrrd" if self.all_frames else "input-volume.nrrd")
        try:
            self._write_input(path)
        except Exception:
            self.runner.remove_temp_dir()
            raise
        self.runner.start()
        return self

    def _write_input(self, path: Path) -> None:
        if self.all_frames:
            frames = [self.sequence.GetNthDataNode(i) for i in range(self.sequence.GetNumberOfDataNodes())]
            images = [volume_to_image(frame) for frame in frames]
            first = images[0]
            for number, image in enumerate(images[1:], start=2):
                if not image.geometry.matches(first.geometry):
                    raise InputError(f"{self.sequence.GetName()}: frame {number} has another geometry than "
                                     "frame 1; segment the frames one by one")
            from .io import write_image

            write_image(path, np.stack([image.array for image in images]), first.geometry, frame_spacing=1.0,
                        compress=False)
            return
        self._frame = None if self.sequence is None else \
            DINSegmentationMRMLLogic._frame_indices(self.browser, self.sequence, False)[0]
        volume = self.volume_node if self._frame is None else self.sequence.GetNthDataNode(self._frame)
        volume_array_shape(volume)
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()  # standalone: the scene is not touched
        storage.SetFileName(str(path))
        storage.SetUseCompression(False)
        if not storage.WriteData(volume):
            raise RuntimeError(f"{self.volume_node.GetName()}: could not write the volume to {path}")

    def finish(self):
        """Import the result into the scene; returns the segmentation node (or sequence node).

        Raises RuntimeError with :attr:`error` if the job failed or was cancelled.
        """
        if self._finished:
            return self.result
        if self.runner.state == JobState.RUNNING:
            raise RuntimeError("the segmentation is still running")
        try:
            labels = self.runner.read_result()
            if self.all_frames:
                if labels.ndim != 4 or labels.shape[0] != self.sequence.GetNumberOfDataNodes():
                    raise RuntimeError(f"unexpected result of shape {labels.shape} for "
                                       f"{self.sequence.GetNumberOfDataNodes()} frames")
                self.result = self.logic.store_sequence_segmentation(
                    self.browser, self.sequence, dict(enumerate(labels)), self.card.labels,
                    output_sequence=self._output_sequence())
            elif self._frame is not None:
                self.result = self.logic.store_sequence_segmentation(
                    self.browser, self.sequence, {self._frame: labels}, self.card.labels,
                    output_sequence=self._output_sequence())
            else:
                if self.volume_node.GetScene() is None:
                    raise RuntimeError("the input volume was removed from the scene")
                output = self.output if (self.output is not None and self.output.GetScene() is not None
                                         and self.output.IsA("vtkMRMLSegmentationNode")) else None
                self.result = self.logic.labels_to_segmentation(labels, self.volume_node, self.card.labels,
                                                                output=output)
            self._finished = True
            return self.result
        finally:
            self.runner.remove_temp_dir()

    def _output_sequence(self):
        """The segmentation sequence to fill: ``output`` if it is one, else a new one."""
        if self.output is not None and self.output.IsA("vtkMRMLSequenceNode"):
            return self.output
        if self.output is not None and self.browser is not None:
            for sequence in _nodes_by_class(self.logic.scene, "vtkMRMLSequenceNode"):
                if self.browser.GetProxyNode(sequence) is self.output:
                    return sequence
        return None
