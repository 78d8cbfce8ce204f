"""A segmentation of a volume node in a child process, imported into the scene when it ends.

:class:`SegmentationJob` writes the volume (or a sequence's frames) to a temporary file, runs
:class:`dinseg.pipeline.job.SegmentationProcess` (``dinseg segment`` in a child process, no
MRML), and on :meth:`SegmentationJob.finish` imports the labels as a segmentation (or a
segmentation sequence) stamped with its model card. Nothing waits on the GUI thread.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence

import numpy as np
import slicer

from ..core.errors import InputError
from ..pipeline.job import JobState, SegmentationProcess
from ..pipeline.options import SegmentOptions
from .convert import nodes_by_class, volume_array_shape, volume_to_image
from .segmentation import card_of, frame_indices

if TYPE_CHECKING:
    from .segmentation import SegmentationLogic


def default_python() -> str:
    """The Python to run the CLI with: Slicer's PythonSlicer inside Slicer, else this interpreter."""
    if hasattr(slicer, "app"):
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


class SegmentationJob:
    """Segment a volume node in a child process: :class:`dinseg.pipeline.job.SegmentationProcess` plus the scene.

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

    def __init__(self, logic: "SegmentationLogic", volume_node, options: Optional[SegmentOptions] = None,
                 output=None, all_frames: bool = False, python: Optional[str] = None,
                 temp_root: Optional[str] = None, extra_args: Sequence[str] = (), worker=None):
        self.logic = logic
        self.volume_node = volume_node
        options = options or SegmentOptions()
        self.card = card_of(options.model, None if options.model is not None else volume_to_image(volume_node))
        self.output = output
        self.browser, self.sequence = logic.sequence_of(volume_node)
        self.all_frames = bool(all_frames and self.sequence is not None)
        self.result = None
        self._frame = None
        self._finished = False
        input_name = volume_node.GetName() or "input volume"
        if worker is not None:  # the warm engine: the model stays loaded between runs
            self.runner = worker.segment(self.card, options, input_name=input_name)
        else:
            self.runner = SegmentationProcess(self.card, options, python=python or default_python(),
                                              temp_root=temp_root, extra_args=extra_args, input_name=input_name)

    # -- the run itself is the runner's ------------------------------------------------------
    @property
    def state(self) -> str:
        return JobState.FINISHED if self._finished else self.runner.state

    @property
    def fraction(self) -> float:
        return self.runner.fraction

    @property
    def stage(self) -> str:
        return self.runner.stage

    @property
    def error(self) -> Optional[str]:
        return self.runner.error

    @property
    def elapsed(self) -> float:
        return self.runner.elapsed

    @property
    def log_lines(self) -> List[str]:
        return self.runner.log_lines

    def read_new_log_lines(self) -> List[str]:
        return self.runner.read_new_log_lines()

    def poll(self) -> bool:
        """Handle the child's output so far; True while it runs (call it from a timer)."""
        return self.runner.poll()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Poll until the run ends (True) or ``timeout`` seconds pass (False); not for a GUI thread."""
        return self.runner.wait(timeout)

    def cancel(self) -> None:
        """Stop the run without waiting (see :meth:`SegmentationProcess.cancel`); the scene is untouched."""
        self.runner.cancel()

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
            from ..core.io import write_image

            write_image(path, np.stack([image.array for image in images]), first.geometry, frame_spacing=1.0,
                        compress=False)
            return
        self._frame = None if self.sequence is None else \
            frame_indices(self.browser, self.sequence, False)[0]
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
                    output_sequence=self._output_sequence(), card=self.card)
            elif self._frame is not None:
                self.result = self.logic.store_sequence_segmentation(
                    self.browser, self.sequence, {self._frame: labels}, self.card.labels,
                    output_sequence=self._output_sequence(), card=self.card)
            else:
                if self.volume_node.GetScene() is None:
                    raise RuntimeError("the input volume was removed from the scene")
                output = self.output if (self.output is not None and self.output.GetScene() is not None
                                         and self.output.IsA("vtkMRMLSegmentationNode")) else None
                self.result = self.logic.labels_to_segmentation(labels, self.volume_node, self.card.labels,
                                                                output=output, card=self.card)
            self._finished = True
            return self.result
        finally:
            self.runner.remove_temp_dir()

    def _output_sequence(self):
        """The segmentation sequence to fill: ``output`` if it is one, else a new one."""
        if self.output is not None and self.output.IsA("vtkMRMLSequenceNode"):
            return self.output
        if self.output is not None and self.browser is not None:
            for sequence in nodes_by_class(self.logic.scene, "vtkMRMLSequenceNode"):
                if self.browser.GetProxyNode(sequence) is self.output:
                    return sequence
        return None
