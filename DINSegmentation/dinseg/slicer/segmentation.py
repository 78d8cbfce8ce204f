"""Segmentation in a MRML scene: volume nodes in, segmentation nodes (and sequences) out.

:class:`SegmentationLogic` segments in this process (console, scripts) or creates a
:class:`~dinseg.slicer.job.SegmentationJob` (the GUI's way: a child process with progress and
Cancel); it replaces a segmentation's content with an undo step, and segments volume sequences
into segmentation sequences that follow the sequence browser. Every result is stamped with its
model card (:func:`~dinseg.slicer.convert.stamp_model`), so later saves and reports use it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import slicer
import vtk

from ..core.errors import InputError
from ..core.io import ImageVolume, check_voxels
from ..core.terminology import TERMINOLOGY_CONTEXT, LabelInfo
from ..pipeline.options import SegmentOptions
from .convert import (build_segmentation, copy_parent_transform, copy_segmentation, ijk_to_ras, stamp_model,
                      volume_array_shape, volume_to_image)

if TYPE_CHECKING:
    from .job import SegmentationJob

log = logging.getLogger("dinseg")

TERMINOLOGY_FILE = (Path(__file__).resolve().parent.parent / "assets" / "terminology"
                    / "SegmentationCategoryTypeModifier-DINSegmentation.term.json")

ProgressCallback = Callable[[str, int, int], None]


def card_of(model, image: Optional[ImageVolume] = None):
    """A ModelCard from a card, a card path, a model folder or an installed model name; for
    ``model`` None, the installed model that fits ``image`` (its modality and anatomy)."""
    from ..pipeline.segmenter import model_for
    from ..models import ModelCard, find_model

    if model is None:
        if image is None:
            raise InputError("no model given and no image to choose one for")
        card, reason = model_for(image)
        log.info("model %s chosen: %s", card.name, reason)
        return card
    return model if isinstance(model, ModelCard) else find_model(model)


def frame_indices(browser_node, sequence, all_frames: bool) -> List[int]:
    """Item numbers to segment: all of ``sequence``'s, or the browser's current one."""
    if all_frames:
        return list(range(sequence.GetNumberOfDataNodes()))
    current = browser_node.GetSelectedItemNumber()
    return [min(max(current, 0), sequence.GetNumberOfDataNodes() - 1)]


class SegmentationLogic:
    """Segmenting in a MRML scene, without Qt.

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

    @staticmethod
    def card(model):
        """The model card for a name, card path or folder (ModelError if unknown)."""
        return card_of(model)

    @staticmethod
    def model_for_volume(volume_node):
        """The installed model card that fits this volume (its modality and anatomy): the module's default."""
        return card_of(None, volume_to_image(volume_node))

    def _get_segmenter(self, card, options: SegmentOptions, progress: Optional[ProgressCallback]):
        """The Segmenter for ``card`` and ``options``, kept loaded while they stay the same."""
        from ..pipeline.segmenter import Segmenter

        enhancement = options.enhancement_for(card)
        key = (str(card.path), card.name, card.version, card.weights.sha256,
               json.dumps(enhancement.to_dict(), sort_keys=True) if enhancement else None,
               options.replace(model=None, frame=None, strict=False))
        if self._segmenter is None or self._segmenter[0] != key:
            self._segmenter = None  # free the previous network first
            self._segmenter = (key, Segmenter(card, device=options.device, enhancement=enhancement,
                                              batch_size=options.batch_size,
                                              largest_component=options.largest_component,
                                              fill_holes=options.fill_holes, rotations=options.rotations,
                                              precision=options.precision))
        segmenter = self._segmenter[1]
        segmenter.progress = progress or (lambda stage, done, total: None)
        return segmenter

    def release_model(self) -> None:
        """Forget the loaded network (frees its memory)."""
        self._segmenter = None

    def segment(self, volume_node, options: Optional[SegmentOptions] = None, output=None,
                progress: Optional[ProgressCallback] = None):
        """Segment a scalar volume in this process; returns the segmentation node, stamped with its model.

        options: :class:`~dinseg.pipeline.options.SegmentOptions` (its ``model`` None: the model
        for the volume's modality and anatomy, see :meth:`model_for_volume`). output: None for a new node
        "<volume> DIN segmentation", or an existing segmentation node whose content is replaced
        (same node, display node kept; :meth:`undo_last_replace` brings the old content back).
        progress(stage, done, total) is called as slices are segmented.
        """
        from ..pipeline.segmenter import check_modality

        image = volume_to_image(volume_node)
        check_voxels(image.array, volume_node.GetName())
        options = options or SegmentOptions()
        card = card_of(options.model, image)
        check_modality(image, card, strict=options.strict, name=volume_node.GetName())
        segmenter = self._get_segmenter(card, options, progress)
        result = segmenter.segment(image)
        return self.labels_to_segmentation(result.labels, volume_node, card.labels, output=output, card=card)

    def labels_to_segmentation(self, labels: np.ndarray, volume_node, label_infos: Sequence[LabelInfo],
                               output=None, name: Optional[str] = None, card=None):
        """Put a (z, y, x) labelmap on ``volume_node``'s grid into a segmentation node.

        Builds the complete segmentation first (nothing half-filled reaches the scene), then
        creates a node (``output`` None; named ``name`` or "<volume> DIN segmentation") or
        replaces ``output``'s content, keeping a backup for :meth:`undo_last_replace`.
        The node's reference geometry is the volume's; it gets the volume's parent transform.
        card: the model card that made ``labels``, recorded on the node (see
        :func:`~dinseg.slicer.convert.model_of`); None clears a previous record.
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
            stamp_model(node, card)
        finally:
            node.EndModify(was_modifying)
        return node

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

    @staticmethod
    def show_3d(segmentation_node) -> bool:
        """Create the closed-surface representation and show it in 3D views."""
        ok = bool(segmentation_node.CreateClosedSurfaceRepresentation())
        display = segmentation_node.GetDisplayNode()
        if display is not None:
            display.SetVisibility3D(True)
        return ok

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

    def segment_sequence(self, browser_node, volume_sequence_node=None, options: Optional[SegmentOptions] = None,
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
        options = options or SegmentOptions()
        card = card_of(options.model, None if options.model is not None else
                       volume_to_image(sequence.GetNthDataNode(0)))
        frames = frame_indices(browser_node, sequence, all_frames)
        segmenter = self._get_segmenter(card, options, None)
        results = {}
        for count, index in enumerate(frames):
            frame = sequence.GetNthDataNode(index)
            image = volume_to_image(frame)
            check_voxels(image.array, f"{sequence.GetName()} frame {index + 1}")
            if progress is not None:
                segmenter.progress = lambda stage, done, total, c=count: progress(
                    stage, c * total + done, len(frames) * total)
            results[index] = segmenter.segment(image).labels
        return self.store_sequence_segmentation(browser_node, sequence, results, card.labels, output_sequence,
                                                card=card)

    def store_sequence_segmentation(self, browser_node, volume_sequence, labels_by_frame: Dict[int, np.ndarray],
                                    label_infos: Sequence[LabelInfo], output_sequence=None, card=None):
        """Write per-frame labelmaps into a segmentation sequence synchronised with the browser.

        labels_by_frame: volume-sequence item number -> (z, y, x) labels on that frame's grid.
        All items are built before the scene is touched. card: the model that made the labels,
        recorded on the sequence and on each item (see :func:`~dinseg.slicer.convert.model_of`).
        """
        items = []
        for index, labels in sorted(labels_by_frame.items()):
            frame = volume_sequence.GetNthDataNode(index)
            if tuple(np.shape(labels)) != volume_array_shape(frame):
                raise InputError(f"frame {index + 1}: labels of shape {np.shape(labels)} do not fit the frame")
            node = slicer.vtkMRMLSegmentationNode()
            copy_segmentation(build_segmentation(labels, ijk_to_ras(frame), label_infos), node.GetSegmentation())
            stamp_model(node, card)
            items.append((volume_sequence.GetNthIndexValue(index), node))
        if output_sequence is None:
            output_sequence = self.scene.AddNewNodeByClass("vtkMRMLSequenceNode",
                                                           f"{volume_sequence.GetName()} DIN segmentation")
            output_sequence.SetIndexName(volume_sequence.GetIndexName())
            output_sequence.SetIndexUnit(volume_sequence.GetIndexUnit())
            output_sequence.SetIndexType(volume_sequence.GetIndexType())
        stamp_model(output_sequence, card)
        for index_value, node in items:
            output_sequence.SetDataNodeAtValue(node, index_value)
        if not browser_node.IsSynchronizedSequenceNode(output_sequence, True):
            browser_node.AddSynchronizedSequenceNode(output_sequence)
        self.sequences_logic.UpdateProxyNodesFromSequences(browser_node)
        proxy = browser_node.GetProxyNode(output_sequence)
        if proxy is not None and proxy.GetDisplayNode() is None:
            proxy.CreateDefaultDisplayNodes()
        return output_sequence

    def create_job(self, volume_node, options: Optional[SegmentOptions] = None, output=None,
                   all_frames: bool = False, python: Optional[str] = None,
                   temp_root: Optional[str] = None, worker=None) -> "SegmentationJob":
        """A :class:`~dinseg.slicer.job.SegmentationJob` for this volume (a sequence proxy: its frames), not
        started. worker: a :class:`~dinseg.pipeline.worker.Worker` (the warm engine) to run it in, instead
        of a new process."""
        from .job import SegmentationJob

        return SegmentationJob(self, volume_node, options, output=output, all_frames=all_frames, python=python,
                               temp_root=temp_root, worker=worker)
