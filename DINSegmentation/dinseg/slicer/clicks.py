"""Click correction in a MRML scene: positive and negative clicks as markups points, each one
correcting a segment at once, undone click by click.

:class:`ClickCorrectionLogic` keeps the refiner loaded (the warm engine for clicks: a click costs
a crop through a small network, in this process, no start-up). A session belongs to one segment
of one segmentation on one volume; its clicks live in two point lists ("+" green, "-" red) that
the user sees and can remove. The corrected segment stays an ordinary segment: Segment Editor
edits it as any other. Segments the corrected one takes voxels from are updated too; no other
segment changes. A positive click only adds to the segment, a negative one only removes from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import slicer

from ..core.errors import InputError
from ..core.terminology import LabelInfo
from ..core.terminology import segment_id as segment_id_of
from .convert import ijk_to_ras, model_of, oriented_labelmap, segmentation_to_labels, volume_to_image

#: display colours of the two point lists (RGB 0..1)
POSITIVE_COLOR = (0.1, 0.85, 0.2)
NEGATIVE_COLOR = (0.95, 0.15, 0.1)


@dataclass
class ClickSession:
    """One segment being corrected: its nodes, the point lists, and what each click changed."""

    volume: object
    segmentation: object
    segment_id: str
    #: label value -> segment ID, in the order segmentation_to_labels gives the values
    segment_ids: Dict[int, str]
    label_infos: Optional[List[LabelInfo]]
    positive: object
    negative: object
    #: the volume as the engine's image, read once (its modality set): the refiner normalises it once too
    image: object = None
    #: per click: (was it positive, {segment ID: (z, y, x) bool mask before the click})
    history: List[Tuple[bool, Dict[str, np.ndarray]]] = field(default_factory=list)


class ClickCorrectionLogic:
    """Correct segments with clicks; scene: the vtkMRMLScene; refiner_card: a refiner card path
    (None: the bundled refiner), loaded on the first click and kept."""

    def __init__(self, scene, refiner_card=None):
        self.scene = scene
        self.refiner_card = refiner_card
        self._refiner = None
        self.session: Optional[ClickSession] = None

    @property
    def refiner(self):
        if self._refiner is None:
            from ..interactive.refiner import Refiner
            from ..pipeline.refine import bundled_refiner

            self._refiner = Refiner(self.refiner_card or bundled_refiner())
        return self._refiner

    def start(self, volume_node, segmentation_node, segment_id: str) -> ClickSession:
        """Begin correcting ``segment_id``: two empty point lists named after the segment."""
        segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
        if segment is None:
            raise InputError(f"{segmentation_node.GetName()} has no segment {segment_id!r}")
        self.end()
        card = model_of(segmentation_node)
        segmentation = segmentation_node.GetSegmentation()
        infos = [info for info in card.labels if segmentation.GetSegment(segment_id_of(info)) is not None] \
            if card is not None else []
        if segment_id in [segment_id_of(info) for info in infos]:  # the model's values, segments Segment_<value>
            ids = {info.value: segment_id_of(info) for info in infos}
        else:  # any segmentation: the i-th segment is label i + 1 (segmentation_to_labels without infos)
            infos = None
            ids = {i + 1: segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())}
        lists = []
        for sign, color in (("+", POSITIVE_COLOR), ("-", NEGATIVE_COLOR)):
            points = self.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"{segment.GetName()} {sign} clicks")
            points.CreateDefaultDisplayNodes()
            display = points.GetDisplayNode()
            if display is not None:
                display.SetSelectedColor(*color)
                display.SetColor(*color)
            lists.append(points)
        image = volume_to_image(volume_node)
        image.modality = image.modality or (card.modality if card is not None else None)
        if image.modality is None:
            from ..pipeline.segmenter import guess_modality

            image.modality = guess_modality(image.array)
        self.session = ClickSession(volume_node, segmentation_node, segment_id, ids, infos, lists[0], lists[1],
                                    image)
        return self.session

    def add_click(self, ras, positive: bool = True) -> int:
        """Place a click at ``ras`` (RAS mm, Slicer's world) and correct the segment; returns its voxels.
        Nothing changes on an error (the point is not kept)."""
        session = self._need_session()
        points = session.positive if positive else session.negative
        points.AddControlPoint(float(ras[0]), float(ras[1]), float(ras[2]), "+" if positive else "-")
        return self.correct_last(positive)

    def correct_last(self, positive: bool) -> int:
        """Correct the segment after a point was added to the positive (or negative) list, by
        :meth:`add_click` or by the user placing it in a view; returns the segment's voxels. On an
        error the point is removed and the segment is as it was."""
        session = self._need_session()
        points = session.positive if positive else session.negative
        try:
            return self._correct(positive)
        except Exception:
            points.RemoveNthControlPoint(points.GetNumberOfControlPoints() - 1)
            raise

    def undo(self) -> bool:
        """Take back the last click: its point and what it changed; False if there is none."""
        session = self._need_session()
        if not session.history:
            return False
        positive, before = session.history.pop()
        # the corrected segment first, so that the segments it took voxels from get them back
        self._set_masks({segment: before[segment] for segment in sorted(before, key=lambda s: s != session.segment_id)})
        points = session.positive if positive else session.negative
        points.RemoveNthControlPoint(points.GetNumberOfControlPoints() - 1)
        return True

    def end(self, keep_points: bool = False) -> None:
        """Finish the session (the segment stays as corrected); the point lists are removed unless kept."""
        session, self.session = self.session, None
        if session is not None and not keep_points:
            for points in (session.positive, session.negative):
                if points.GetScene() is not None:
                    self.scene.RemoveNode(points)

    # -- internals ---------------------------------------------------------------------------
    def _need_session(self) -> ClickSession:
        if self.session is None:
            raise InputError("no segment to correct: start a click session first")
        return self.session

    def _clicks_lps(self, points) -> List[Tuple[float, float, float]]:
        lps = []
        for i in range(points.GetNumberOfControlPoints()):
            x, y, z = points.GetNthControlPointPosition(i)
            lps.append((-x, -y, z))
        return lps

    def _correct(self, positive: bool) -> int:
        session = self.session
        labels = segmentation_to_labels(session.segmentation, session.volume, session.label_infos)
        value = next(v for v, segment in session.segment_ids.items() if segment == session.segment_id)
        refined = self.refiner.refine(session.image, labels, value, self._clicks_lps(session.positive),
                                      self._clicks_lps(session.negative), space="lps")
        # a click changes the structure its way only: a positive click adds, a negative one removes
        # (the refiner redraws the crop; without this a click can move boundaries far from it)
        if positive:
            refined = np.where((refined == value) & (labels != value), value, labels).astype(labels.dtype)
        else:
            refined = np.where((labels == value) & (refined != value), refined, labels).astype(labels.dtype)
        differs = labels != refined
        changed = np.unique(np.concatenate([labels[differs], refined[differs]]))
        before = {session.segment_ids[int(v)]: labels == v for v in changed if v != 0}
        after = {session.segment_ids[int(v)]: refined == v for v in changed if v != 0}
        # segments that lose voxels first, so that the corrected one can take them (one shared layer)
        order = sorted(after, key=lambda segment: segment == session.segment_id)
        self._set_masks({segment: after[segment] for segment in order})
        session.history.append((positive, before))
        return int((refined == value).sum())

    def _set_masks(self, masks: Dict[str, np.ndarray]) -> None:
        """Give each segment exactly its (z, y, x) bool mask, in the given order."""
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        session = self.session
        matrix = ijk_to_ras(session.volume)
        for segment_id, mask in masks.items():
            image = oriented_labelmap(mask.astype(np.uint8), matrix)
            if not logic.SetBinaryLabelmapToSegment(image, session.segmentation, segment_id, logic.MODE_REPLACE,
                                                    image.GetExtent()):
                raise RuntimeError(f"could not update segment {segment_id}")
