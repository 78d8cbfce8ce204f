"""The DIN Segmentation module's MRML logic: four parts with explicit methods.

``DINSegmentationMRMLLogic(scene)`` is what the Slicer module, the web front end and Python
console users hold::

    logic = DINSegmentationMRMLLogic(slicer.mrmlScene)
    node = logic.segmentation.segment(volume)                       # in this process
    job = logic.segmentation.create_job(volume).start()             # in a child process
    enhanced = logic.preview.preview(volume, method="clahe")
    table = logic.reports.statistics_table(node, volume)
    logic.clicks.start(volume, node, "Segment_6")                   # correct the pancreas with clicks
    logic.clicks.add_click(ras_point, positive=True)

Training touches no MRML: it is :class:`dinseg.training.train.DINTrainingLogic`.
"""

from __future__ import annotations

from .clicks import ClickCorrectionLogic
from .preview import EnhancementPreviewLogic
from .reports import ReportLogic
from .segmentation import SegmentationLogic


class DINSegmentationMRMLLogic:
    """Segmentation, enhancement preview, reports and click correction for one MRML scene (no Qt).

    scene: the vtkMRMLScene (``slicer.mrmlScene`` in Slicer); sequences_logic and
    terminologies_logic: Slicer's module logics, found through ``slicer.modules`` when omitted.
    """

    def __init__(self, scene, sequences_logic=None, terminologies_logic=None):
        self.scene = scene
        self.segmentation = SegmentationLogic(scene, sequences_logic, terminologies_logic)
        self.preview = EnhancementPreviewLogic(scene)
        self.reports = ReportLogic(scene)
        self.clicks = ClickCorrectionLogic(scene)
