"""MRML nodes <-> the engine's arrays: volume nodes as :class:`~dinseg.core.io.ImageVolume`,
(z, y, x) labelmaps as complete segmentations, and the model a segmentation came from.

Conventions: numpy arrays are (z, y, x) = (K, J, I) as in ``slicer.util.arrayFromVolume``;
the engine's :class:`~dinseg.core.geometry.Geometry` is LPS, Slicer's matrices are RAS.
Segment IDs are ``Segment_<label value>``, as in the ``.seg.nrrd`` files the CLI writes.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ..core.errors import InputError
from ..core.geometry import Geometry
from ..core.io import ImageVolume
from ..core.terminology import GENERIC_STRUCTURE, LabelInfo, segment_id, slicer_terminology_entry

BINARY_LABELMAP = "Binary labelmap"
#: node attributes naming the model card a segmentation was made with (read back by :func:`model_of`)
MODEL_ATTRIBUTES = ("DINSegmentation.modelName", "DINSegmentation.modelVersion", "DINSegmentation.modelCard",
                    "DINSegmentation.weightsSHA256")


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
    """A scalar volume node as the engine's :class:`~dinseg.core.io.ImageVolume`.

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


def segment_terminology(segment) -> str:
    """A segment's ``TerminologyEntry`` tag ("" if none); Slicer 5.8 has no GetTerminology()."""
    if hasattr(segment, "GetTerminology"):
        return segment.GetTerminology()
    value = vtk.reference("")
    return str(value) if segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), value) else ""


def oriented_labelmap(labels: np.ndarray, ijk_to_ras_matrix: vtk.vtkMatrix4x4):
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
    image = oriented_labelmap(layer_values, ijk_to_ras_matrix)
    segmentation = slicer.vtkSegmentation()
    segmentation.SetSourceRepresentationName(BINARY_LABELMAP)
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
    reference = oriented_labelmap(np.zeros(volume_array_shape(reference_volume), np.uint8),
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


def volume_array_shape(volume_node):
    """(z, y, x) shape of a volume's voxel array."""
    image = volume_node.GetImageData()
    if image is None:
        raise InputError(f"{volume_node.GetName()}: the volume has no voxels")
    return tuple(image.GetDimensions()[::-1])


def nodes_by_class(scene, class_name: str) -> List[Any]:
    return [scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name))]


def stamp_model(node, card) -> None:
    """Record on ``node`` (a segmentation or sequence node) which model card made its content
    (``card`` None: remove the record, e.g. for labels that no model made)."""
    for attribute in MODEL_ATTRIBUTES:
        node.RemoveAttribute(attribute)
    if card is not None:
        values = (card.name, card.version, str(card.path or ""), card.weights.sha256)
        for attribute, value in zip(MODEL_ATTRIBUTES, values):
            node.SetAttribute(attribute, value)


def model_of(node):
    """The ModelCard recorded on ``node`` by :func:`stamp_model`, or None if it carries none.

    The card file it names is read if it still holds the same weights; otherwise the installed
    model of that name and version. A ModelError says the model is no longer installed.
    """
    from ..core.errors import ModelError
    from ..models import find_model, list_models, load_card

    name, version, path, sha256 = (node.GetAttribute(attribute) for attribute in MODEL_ATTRIBUTES)
    if not name:
        return None
    if path:
        try:
            card = load_card(path)
            if card.weights.sha256 == sha256:
                return card
        except ModelError:
            pass
    for card in list_models():
        if card.name == name and card.version == version:
            return card
    try:
        card = find_model(name)
    except ModelError:
        card = None
    raise ModelError(f"{node.GetName()}: was made with model {name} {version}, which is no longer installed"
                     + (f" (installed: {card.version})" if card else ""))
