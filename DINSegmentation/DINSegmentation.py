"""DIN Segmentation: organ segmentation in 3D Slicer with the Dual Interaction Network.

The work is done by the ``dinseg`` engine next to this file: ``dinseg.slicer.logic`` holds the MRML
logic (tested headless against slicer-core), ``dinseg.apps.cli`` runs the network in a child
process for the GUI. This file is Slicer's scripted-module shell: module description,
parameter node, widget, logic wrapper and self-test. Python 3.9 syntax (Slicer 5.8); nothing
heavy is imported at load time (torch, SimpleITK and the engine are imported on first use).
"""

import logging
import os
from typing import Annotated, Optional

import qt
import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODEL = "btcv-ct-light"
DEVICE_CHOICES = ["auto", "cpu", "cuda"]
ENHANCEMENT_CHOICES = ["model default", "none", "clahe", "gamma", "unsharp"]
#: parameters the widget synchronises itself (the model list is only known at run time)
MANUALLY_SYNCED_PARAMETERS = ("model",)

#: bundled sample images (TotalSegmentator test data, Apache-2.0): (sample name, file, SHA-256)
SAMPLES = (
    ("DINAbdomenCT", "abdomen_ct.nii.gz", "dbd3ae6d614d1d7ef3a46925c30c70038ed52da6b37fdd6afdc7b9b71387e3e1"),
    ("DINAbdomenMR", "abdomen_mr.nii.gz", "209b46efaff595dd54a9332872e17a722b62654bbb68dbd89acd5090701bbd4f"),
)


#
# DINSegmentation
#


class DINSegmentation(ScriptedLoadableModule):
    """Module description (Slicer's ScriptedLoadableModule)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("DIN Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations", "SegmentEditor", "Sequences", "Terminologies"]
        self.parent.contributors = ["DINSegmentation developers (https://github.com/dinsegmentation)"]
        self.parent.helpText = _("""
<p>Segments abdominal organs (CT, MR) and cardiac structures (cine MR) with the
<b>Dual Interaction Network (DIN)</b>, a 2D network that reads each slice twice, as acquired and
contrast-enhanced, and lets the two streams exchange information through cross-image attention.</p>
<p><b>Use:</b> choose the input volume and a model (hover a model for its classes, training data and
measured accuracy), optionally preview the contrast enhancement the network sees (original and
enhanced side by side, linked views), and click <b>Segment</b>. The network runs in the background
(click again to cancel); the result is a segmentation with named, coloured segments and SNOMED-CT
terminology. Choose an existing output segmentation to replace its content (<b>Undo replace</b>
brings it back). <b>Show 3D</b> builds surfaces; <b>Edit in Segment Editor</b> opens the result for
correction. For a volume sequence (cine), <b>All frames</b> segments every frame into a segmentation
sequence; with the cardiac model, the LV and RV volumes, ejection fractions and LV mass then appear
as a table and a volume curve. Each new input volume gets the installed model for its modality and
anatomy (CT, abdominal MR, short-axis cine); you may choose another. Without a GPU, segmentation runs
on the CPU.</p>
<p>Scripting: <code>logic = slicer.util.getModuleLogic("DINSegmentation")</code>, then
<code>logic.mrml.segmentation.segment(volumeNode)</code> (the model chosen for the volume; a
<code>dinseg.SegmentOptions(model="NAME")</code> as second argument chooses another). Documentation:
<a href="https://github.com/dinsegmentation/SlicerDINSegmentation">github.com/dinsegmentation/SlicerDINSegmentation</a>.</p>
<p><b>Please cite:</b> Noh, Jeon and Park, "Dual Interaction Network with Cross-Image Attention for Medical
Image Segmentation", Pattern Recognition Letters 197 (2025) 332-338,
<a href="https://arxiv.org/abs/2509.05953">arXiv:2509.05953</a>.</p>
""")
        self.parent.acknowledgementText = _("""
This module implements the Dual Interaction Network of Noh, Jeon and Park (Pattern Recognition Letters 2025).
The bundled sample images and their reference labels come from the test data of
<a href="https://github.com/wasserth/TotalSegmentator">TotalSegmentator</a> (Apache License 2.0).
Built on 3D Slicer, PyTorch and the SlicerPyTorch extension.
""")
        slicer.app.connect("startupCompleted()", onStartupCompleted)


def onStartupCompleted():
    """After Slicer has started: register the sample data and load our terminology."""
    try:
        registerSampleData()
    except Exception:
        logging.exception("DINSegmentation: could not register sample data")
    try:
        loadTerminology()
    except Exception:
        logging.exception("DINSegmentation: could not load the terminology")


def samplePath(fileName):
    return os.path.join(MODULE_DIR, "dinseg", "assets", "sample", fileName)


def registerSampleData():
    """Add the bundled CT and MR samples to the Sample Data module (local file:// URIs)."""
    import pathlib

    import SampleData

    category = "DIN Segmentation"
    if hasattr(SampleData.SampleDataLogic, "registerCustomSampleDataCategory"):  # Slicer 5.12+
        SampleData.SampleDataLogic.registerCustomSampleDataCategory(category, title=_("DIN Segmentation"))
    thumbnail = os.path.join(MODULE_DIR, "Resources", "Icons", "DINSegmentation.png")
    for sampleName, fileName, sha256 in SAMPLES:
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category=category,
            sampleName=sampleName,
            thumbnailFileName=thumbnail,
            uris=pathlib.Path(samplePath(fileName)).as_uri(),
            fileNames=sampleName + ".nii.gz",
            checksums="SHA256:" + sha256,
            nodeNames=sampleName,
            loadFileTypes="VolumeFile",
        )


def loadTerminology():
    """Load our SegmentationCategoryTypeModifier-DINSegmentation.term.json into the Terminologies logic."""
    from dinseg.slicer.logic import DINSegmentationMRMLLogic

    return DINSegmentationMRMLLogic(slicer.mrmlScene).segmentation.load_terminology(
        slicer.modules.terminologies.logic())


#
# DINSegmentationParameterNode
#


@parameterNodeWrapper
class DINSegmentationParameterNode:
    """The module's settings, saved with the scene.

    inputVolume - volume to segment (a sequence proxy volume for cine).
    model - installed model name (the widget fills its combo box from the installed cards).
    device - auto, cpu or cuda.
    enhancementMethod, enhancementStrength - enhancement for preview (and segmentation, when not "model default").
    outputSegmentation - None: create a new segmentation; a node: replace its content.
    largestComponent, fillHoles - label clean-up on top of what the model card asks for.
    allFrames - sequences: segment every frame (else the current one).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    model: str = DEFAULT_MODEL
    device: Annotated[str, Choice(DEVICE_CHOICES)] = "auto"
    enhancementMethod: Annotated[str, Choice(ENHANCEMENT_CHOICES)] = "model default"
    enhancementStrength: Annotated[float, WithinRange(0.0, 1.0)] = 1.0
    outputSegmentation: vtkMRMLSegmentationNode
    largestComponent: bool = False
    fillHoles: bool = False
    allFrames: bool = True


#
# DINSegmentationWidget
#


class DINSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel. Long work runs in a child process (SegmentationJob) polled by a QTimer."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._jobVolume = None
        self._modelChosenFor = None
        self._timer = None
        self._result = None
        self._previewNode = None
        self._worker = None  # the warm engine: one child process that keeps the model loaded

    # -- set-up ------------------------------------------------------------------------------
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DINSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = DINSegmentationLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onJobTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.previewButton.connect("clicked(bool)", self.onPreviewButton)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.undoReplaceButton.connect("clicked(bool)", self.onUndoReplaceButton)
        self.ui.show3DButton.connect("clicked(bool)", self.onShow3DButton)
        self.ui.editInSegmentEditorButton.connect("clicked(bool)", self.onEditInSegmentEditorButton)
        self.ui.saveDicomSegButton.connect("clicked(bool)", self.onSaveDicomSegButton)
        self.ui.positiveClickButton.connect("toggled(bool)", lambda on: self.onClickModeToggled(True, on))
        self.ui.negativeClickButton.connect("toggled(bool)", lambda on: self.onClickModeToggled(False, on))
        self.ui.undoClickButton.connect("clicked(bool)", self.onUndoClickButton)
        self.ui.doneClicksButton.connect("clicked(bool)", self.onDoneClicksButton)
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.setValue(0)

        self.populateModels()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.cancelJob(kill=True)
        if self._worker is not None:
            self._worker.stop()  # never waits: the child ends with its process group
            self._worker = None
        self.removeObservers()

    def enter(self) -> None:
        if self._job is None:
            self.populateModels()  # models may have been imported since
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelJob(kill=True)
        self.onDoneClicksButton()
        self.setParameterNode(None)
        self._result = None
        self._previewNode = None
        self.logic.mrml.segmentation.forget_undo()

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[DINSegmentationParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # widgets with a "SlicerParameterName" property in the .ui are bound here
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self.updateGUIFromParameterNode()

    # -- models ------------------------------------------------------------------------------
    def populateModels(self) -> None:
        """Fill the model combo box from the installed model cards (tooltip: the card's summary)."""
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        try:
            from dinseg.models import newest_models

            for card in newest_models():
                combo.addItem(f"{card.name} ({card.version})", card.name)
                combo.setItemData(combo.count - 1, card.summary(), qt.Qt.ToolTipRole)
        except ImportError as error:  # PyTorch not installed yet: offer the default model by name
            logging.info("DINSegmentation: cannot list models yet (%s)", error)
            combo.addItem(DEFAULT_MODEL, DEFAULT_MODEL)
            combo.setItemData(0, _("PyTorch will be installed on first use."), qt.Qt.ToolTipRole)
        if combo.count == 0:
            combo.addItem(_("(no models installed)"), "")
        combo.blockSignals(wasBlocked)

    def onModelSelected(self, index) -> None:
        if self._parameterNode is not None and index >= 0:
            self._parameterNode.model = self.ui.modelComboBox.itemData(index) or ""

    def _selectModelInCombo(self, name) -> None:
        combo = self.ui.modelComboBox
        index = combo.findData(name)
        if index < 0 and name:
            combo.addItem(name, name)  # a model named in a saved scene but not installed here
            index = combo.count - 1
        if index >= 0 and combo.currentIndex != index:
            wasBlocked = combo.blockSignals(True)
            combo.currentIndex = index
            combo.blockSignals(wasBlocked)
        summary = (combo.itemData(index, qt.Qt.ToolTipRole) or "") if index >= 0 else ""
        combo.toolTip = summary
        self.ui.modelInfoLabel.text = summary

    # -- GUI state ---------------------------------------------------------------------------
    def _chooseModelFor(self, volume) -> None:
        """A newly chosen input volume gets the installed model for its modality and anatomy."""
        if volume is self._modelChosenFor:
            return
        import importlib.util

        self._modelChosenFor = volume
        if volume is None or importlib.util.find_spec("torch") is None:
            return
        try:
            self._parameterNode.model = self.logic.mrml.segmentation.model_for_volume(volume).name
        except Exception as error:  # an empty or odd volume: keep the user's choice
            logging.info("DINSegmentation: no model chosen for %s (%s)", volume.GetName(), error)

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None:
            return
        self._chooseModelFor(p.inputVolume)
        self._selectModelInCombo(p.model)
        running = self._job is not None
        hasInput = p.inputVolume is not None
        self.ui.segmentButton.enabled = running or (hasInput and bool(p.model))
        self.ui.previewButton.enabled = hasInput and not running
        browser = self.logic.mrml.segmentation.sequence_of(p.inputVolume)[0] if hasInput else None
        self.ui.allFramesCheckBox.enabled = browser is not None and not running
        self.ui.undoReplaceButton.enabled = not running and self.logic.mrml.segmentation.can_undo_replace(
            p.outputSegmentation)
        result = self._resultSegmentation()
        self.ui.show3DButton.enabled = result is not None and not running
        self.ui.editInSegmentEditorButton.enabled = result is not None and not running
        fromDicom = self._jobVolume is not None and bool(self._jobVolume.GetAttribute("DICOM.instanceUIDs"))
        self.ui.saveDicomSegButton.enabled = result is not None and not running and fromDicom
        self._updateClickSegments(result if not running else None)

    def _resultSegmentation(self):
        """The segmentation node of the last successful run, if it is still in the scene."""
        result = self._result
        if result is None or not slicer.mrmlScene.IsNodePresent(result):
            return None
        if result.IsA("vtkMRMLSequenceNode"):
            browser = self.logic.mrml.segmentation.sequences_logic.GetFirstBrowserNodeForSequenceNode(result)
            return browser.GetProxyNode(result) if browser else None
        return result

    # -- preview -----------------------------------------------------------------------------
    def onPreviewButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to preview the enhancement."), waitCursor=True):
            if not self.logic.ensure("segment"):
                return
            p = self._parameterNode
            output = self._previewNode if self._previewNode is not None and \
                slicer.mrmlScene.IsNodePresent(self._previewNode) else None
            preview = self.logic.mrml.preview
            self._previewNode = preview.enhance(p.inputVolume, method=p.enhancementMethod,
                                                strength=p.enhancementStrength, model=p.model or None, output=output)
            plan = preview.side_by_side(p.inputVolume, self._previewNode)
            slicer.app.layoutManager().setLayout(plan["layout"])
            preview.show_side_by_side(p.inputVolume, self._previewNode)
            slicer.util.resetSliceViews()

    # -- segmentation ------------------------------------------------------------------------
    def onSegmentButton(self) -> None:
        if self._job is not None:
            self.cancelJob()
            self.ui.statusLabel.text = _("Cancelled.")
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the segmentation."), waitCursor=True):
            if not self.logic.ensure("segment"):
                return
            from dinseg.pipeline.options import SegmentOptions

            p = self._parameterNode
            self.ui.logTextEdit.clear()
            self.ui.progressBar.setValue(0)
            self.ui.elapsedLabel.text = ""
            self.ui.statusLabel.text = _("Starting...")
            self._jobVolume = p.inputVolume
            # the strength slider belongs to a chosen method: with "model default" it is not applied
            options = SegmentOptions.for_gui(p.enhancementMethod, p.enhancementStrength, model=p.model,
                                             device=p.device, largest_component=p.largestComponent or None,
                                             fill_holes=p.fillHoles or None)
            if self._worker is None:
                from dinseg.pipeline.worker import Worker
                from dinseg.slicer.job import default_python

                self._worker = Worker(python=default_python(), temp_root=slicer.app.temporaryPath)
            job = self.logic.mrml.segmentation.create_job(p.inputVolume, options, output=p.outputSegmentation,
                                                          all_frames=p.allFrames, worker=self._worker)
            job.start()
            self._job = job
            self.ui.segmentButton.text = _("Cancel")
            self._timer.start()
            self.updateGUIFromParameterNode()

    def onJobTimer(self) -> None:
        job = self._job
        if job is None:
            self._timer.stop()
            return
        running = job.poll()
        self.ui.progressBar.setValue(int(round(100 * job.fraction)))
        self.ui.statusLabel.text = job.stage
        self.ui.elapsedLabel.text = _("{seconds:.1f} s").format(seconds=job.elapsed)
        for line in job.read_new_log_lines():
            self.ui.logTextEdit.appendPlainText(line)
        if running:
            return
        self._timer.stop()
        self._job = None
        self.ui.segmentButton.text = _("Segment")
        try:
            if job.state == "succeeded":
                with slicer.util.tryWithErrorDisplay(_("Failed to import the segmentation."), waitCursor=True):
                    self._result = job.finish()
                    self._showResult(self._jobVolume)
                    self._showStatistics(job)
                    self._showCardiacFunction(job)
                    self.ui.statusLabel.text = _("Done in {seconds:.1f} s.").format(seconds=job.elapsed)
                    quality = getattr(job.runner, "quality", None) or {}
                    if quality.get("status") == "review" and quality.get("problems"):  # reports.quality: check first
                        for problem in quality["problems"]:
                            self.ui.logTextEdit.appendPlainText(_("Check: {problem}").format(problem=problem))
                        for note in quality["notes"]:
                            self.ui.logTextEdit.appendPlainText(_("Not checked: {note}").format(note=note))
                        self.ui.statusLabel.text = _("Done; check before use: {problems}").format(
                            problems="; ".join(quality["problems"]))
                        self.ui.logCollapsibleGroupBox.collapsed = False
            else:
                self.ui.statusLabel.text = _("Failed: {error}").format(error=job.error or job.state)
                self.ui.logCollapsibleGroupBox.collapsed = False
                slicer.util.errorDisplay(_("Segmentation failed: {error}").format(error=job.error or job.state))
        finally:
            self.updateGUIFromParameterNode()

    def _showResult(self, volume) -> None:
        segmentation = self._resultSegmentation()
        if segmentation is None:
            return
        if self._parameterNode is not None and not self._result.IsA("vtkMRMLSequenceNode"):
            self._parameterNode.outputSegmentation = segmentation  # a next run replaces it (with undo)
        display = segmentation.GetDisplayNode()
        if display is not None:
            display.SetVisibility(True)
        if volume is not None and slicer.mrmlScene.IsNodePresent(volume):
            slicer.util.setSliceViewerLayers(background=volume)

    def _showStatistics(self, job) -> None:
        """After a single volume: each structure's volume, intensities and position as a table."""
        if self._result.IsA("vtkMRMLSequenceNode"):
            return
        table = self.logic.mrml.reports.statistics_table(self._result, job.volume_node)
        slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()

    def _showCardiacFunction(self, job) -> None:
        """After a cine with a cardiac model: the function table and the volume curve (plot layout)."""
        if not job.all_frames or not job.card.is_cardiac:
            return
        _, table, chart = self.logic.mrml.reports.cardiac_function_of_sequence(self._result, job.sequence)
        slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView)
        slicer.modules.plots.logic().ShowChartInLayout(chart)
        slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()

    def cancelJob(self, kill=False) -> None:
        """Stop the running job without waiting for it (kill: end its process group at once)."""
        if self._timer is not None:
            self._timer.stop()
        job, self._job = self._job, None
        if job is not None:
            job.cancel()
            if kill:
                job.cancel()  # a second cancel kills the process group
            for line in job.read_new_log_lines():
                self.ui.logTextEdit.appendPlainText(line)
            self.ui.segmentButton.text = _("Segment")
            self.ui.progressBar.setValue(0)
            self.updateGUIFromParameterNode()

    # -- output ------------------------------------------------------------------------------
    def onUndoReplaceButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to undo."), waitCursor=True):
            if self.logic.mrml.segmentation.undo_last_replace(self._parameterNode.outputSegmentation):
                self.ui.statusLabel.text = _("Previous content restored.")
            self.updateGUIFromParameterNode()

    def onShow3DButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to show the segmentation in 3D."), waitCursor=True):
            segmentation = self._resultSegmentation()
            if segmentation is not None:
                self.logic.mrml.segmentation.show_3d(segmentation)
                layoutManager = slicer.app.layoutManager()
                if layoutManager is not None and layoutManager.threeDViewCount > 0:
                    layoutManager.threeDWidget(0).threeDView().resetFocalPoint()

    def onSaveDicomSegButton(self) -> None:
        """Write the result as DICOM SEG, coded with the model that made it, into the DICOM database."""
        with slicer.util.tryWithErrorDisplay(_("Failed to save as DICOM SEG."), waitCursor=True):
            if not self.logic.ensure("dicom-seg"):
                return
            from DICOMLib import DICOMUtils

            segmentation, volume = self._resultSegmentation(), self._jobVolume
            if segmentation is None:
                raise ValueError(_("There is no segmentation result to save."))
            # copyFiles: the database keeps its own copy, so the temporary folder can go
            path = self.logic.mrml.reports.save_dicom_seg_to_database(
                segmentation, volume, slicer.dicomDatabase,
                lambda folder: DICOMUtils.importDicom(folder, copyFiles=True),
                temp_root=slicer.app.temporaryPath)
            self.ui.statusLabel.text = _("Saved {name} to the DICOM database.").format(name=path.name)

    # -- correct with clicks -----------------------------------------------------------------
    def _updateClickSegments(self, segmentation) -> None:
        """The structures of the result in the click section's list; its buttons enabled with a result."""
        combo = self.ui.clickSegmentComboBox
        current = combo.currentData
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        if segmentation is not None:
            segments = segmentation.GetSegmentation()
            for i in range(segments.GetNumberOfSegments()):
                combo.addItem(segments.GetNthSegment(i).GetName(), segments.GetNthSegmentID(i))
            index = combo.findData(current)
            combo.currentIndex = max(index, 0)
        combo.blockSignals(wasBlocked)
        for widget in (combo, self.ui.positiveClickButton, self.ui.negativeClickButton):
            widget.enabled = segmentation is not None
        session = self.logic.mrml.clicks.session
        self.ui.undoClickButton.enabled = session is not None and bool(session.history)
        self.ui.doneClicksButton.enabled = session is not None

    def onClickModeToggled(self, positive, on) -> None:
        """A toggle on: left clicks in slice views place points of that sign, each correcting the structure."""
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        if not on:
            if not (self.ui.positiveClickButton.checked or self.ui.negativeClickButton.checked):
                interaction.SetCurrentInteractionMode(interaction.ViewTransform)
            return
        other = self.ui.negativeClickButton if positive else self.ui.positiveClickButton
        wasBlocked = other.blockSignals(True)
        other.checked = False
        other.blockSignals(wasBlocked)
        with slicer.util.tryWithErrorDisplay(_("Failed to start click correction."), waitCursor=True):
            if not self.logic.ensure("segment"):
                self.ui.positiveClickButton.checked = self.ui.negativeClickButton.checked = False
                return
            clicks = self.logic.mrml.clicks
            segmentation, segmentId = self._resultSegmentation(), self.ui.clickSegmentComboBox.currentData
            session = clicks.session
            if session is None or session.segmentation is not segmentation or session.segment_id != segmentId:
                self._stopObservingClicks()
                session = clicks.start(self._jobVolume or self._parameterNode.inputVolume, segmentation, segmentId)
                for points in (session.positive, session.negative):
                    self.addObserver(points, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onClickPlaced)
            points = session.positive if positive else session.negative
            selection = slicer.app.applicationLogic().GetSelectionNode()
            selection.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsFiducialNode")
            selection.SetActivePlaceNodeID(points.GetID())
            interaction.SetPlaceModePersistence(1)
            interaction.SetCurrentInteractionMode(interaction.Place)
            self.updateGUIFromParameterNode()

    def onClickPlaced(self, caller, event) -> None:
        session = self.logic.mrml.clicks.session
        if session is None:
            return
        with slicer.util.tryWithErrorDisplay(_("The click could not correct the structure."), waitCursor=True):
            voxels = self.logic.mrml.clicks.correct_last(caller is session.positive)
            self.ui.statusLabel.text = _("{name}: {voxels} voxels after {clicks} click(s).").format(
                name=self.ui.clickSegmentComboBox.currentText, voxels=voxels, clicks=len(session.history))
        self.updateGUIFromParameterNode()

    def onUndoClickButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to undo the click."), waitCursor=True):
            self.logic.mrml.clicks.undo()
        self.updateGUIFromParameterNode()

    def onDoneClicksButton(self) -> None:
        """End click correction: place mode off, the points removed, the segment kept as corrected."""
        self._stopObservingClicks()
        for button in (self.ui.positiveClickButton, self.ui.negativeClickButton):
            button.checked = False
        if self.logic is not None:
            self.logic.mrml.clicks.end()
        if self._parameterNode is not None:
            self.updateGUIFromParameterNode()

    def _stopObservingClicks(self) -> None:
        session = self.logic.mrml.clicks.session if self.logic is not None else None
        if session is not None:
            for points in (session.positive, session.negative):
                self.removeObserver(points, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onClickPlaced)

    def onEditInSegmentEditorButton(self) -> None:
        segmentation = self._resultSegmentation()
        if segmentation is None:
            return
        volume = self._jobVolume if self._jobVolume is not None else self._parameterNode.inputVolume
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.SegmentEditorWidget.editor
        editor.setSegmentationNode(segmentation)
        editor.setSourceVolumeNode(volume)


#
# DINSegmentationLogic
#


class DINSegmentationLogic(ScriptedLoadableModuleLogic):
    """Slicer's module logic: the parameter node, the packages each feature needs, and the
    engine's MRML logic (:class:`dinseg.slicer.logic.DINSegmentationMRMLLogic`) for the scene.

    The MRML logic lives in the engine package so that it runs and is tested outside Slicer;
    this file does not import it at load time. From the Python console::

        logic = slicer.util.getModuleLogic("DINSegmentation")
        if logic.ensure("segment"):
            node = logic.mrml.segmentation.segment(volume)
    """

    def __init__(self) -> None:
        self._mrml = None
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return DINSegmentationParameterNode(super().getParameterNode())

    @property
    def mrml(self):
        """The engine's MRML logic for ``slicer.mrmlScene`` (segmentation, preview, reports)."""
        if self._mrml is None or self._mrml.scene is not slicer.mrmlScene:
            from dinseg.slicer.logic import DINSegmentationMRMLLogic

            self._mrml = DINSegmentationMRMLLogic(slicer.mrmlScene)
        return self._mrml

    # -- dependencies (on first use, never at import) ------------------------------------------
    @staticmethod
    def ensure(feature) -> bool:
        """Make sure the packages of ``feature`` ("segment", "dicom-seg", "train"; the table is
        ``dinseg.core.dependencies``) are installed at their minimum versions, asking before
        installing anything; False if the user declines. PyTorch comes through the PyTorch extension."""
        from dinseg.core.dependencies import requirement, unmet_for

        missing = unmet_for(feature)
        if not missing:
            return True
        names = [name for name, _version in missing]
        described = ", ".join(f"{name} {version} (needs {requirement(name)})" if version else requirement(name)
                              for name, version in missing)
        if not slicer.util.confirmOkCancelDisplay(
                _("DIN Segmentation needs these Python packages: {packages}. Install them now?").format(
                    packages=described), windowTitle=_("Install Python packages")):
            return False
        if "torch" in names:
            DINSegmentationLogic._installTorch(requirement("torch"))
            names.remove("torch")
        if names:
            slicer.util.pip_install(" ".join(requirement(name) for name in names))
        still = [name for name, _version in unmet_for(feature)]
        if still:
            raise RuntimeError(_("Could not install {packages}; restart Slicer and try again.").format(
                packages=", ".join(still)))
        return True

    @staticmethod
    def _installTorch(torchRequirement) -> None:
        """PyTorch through the PyTorch extension, which picks the build for this computer's GPU."""
        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError(_("DIN Segmentation needs the PyTorch extension: install 'PyTorch' in the "
                                 "Extensions Manager and restart Slicer.")) from None
        version = torchRequirement.split(">=", 1)[1]
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                              torchVersionRequirement=">=" + version)
        if torch is None:
            raise RuntimeError(_("PyTorch could not be installed."))


#
# DINSegmentationTest
#


class DINSegmentationTest(ScriptedLoadableModuleTest):
    """Segments the bundled CT sample with the bundled model on the CPU."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_DINSegmentation_CT()

    def test_DINSegmentation_CT(self):
        import time

        import SampleData

        from dinseg.slicer import convert
        from dinseg.core.errors import ModelError
        from dinseg.models import find_model
        from dinseg.core.terminology import SYNAPSE_ORGANS, slicer_terminology_entry

        self.delayDisplay("Loading the CT sample")
        registerSampleData()
        volume = SampleData.downloadSample("DINAbdomenCT")
        self.assertIsNotNone(volume)
        try:
            card = find_model(DEFAULT_MODEL)
        except ModelError as error:
            self.fail(str(error))

        logic = DINSegmentationLogic()
        self.assertEqual(logic.mrml.segmentation.load_terminology(slicer.modules.terminologies.logic()),
                         "Segmentation category and type - DINSegmentation")
        self.delayDisplay("Segmenting on the CPU")
        start = time.time()
        from dinseg.pipeline.options import SegmentOptions

        self.assertTrue(logic.ensure("segment"))
        segmentation = logic.mrml.segmentation.segment(volume, SegmentOptions(model=card, device="cpu"))
        seconds = time.time() - start  # reported, not asserted: timings belong in benchmarks

        segments = segmentation.GetSegmentation()
        names = [segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())]
        self.assertEqual(names, list(SYNAPSE_ORGANS))
        terminologies = slicer.modules.terminologies.logic()
        for index, label in enumerate(card.labels):
            tag = convert.segment_terminology(segments.GetNthSegment(index))
            self.assertEqual(tag, slicer_terminology_entry(label))
            entry = slicer.vtkSlicerTerminologyEntry()
            self.assertTrue(terminologies.DeserializeTerminologyEntry(tag, entry))
            self.assertEqual(entry.GetTypeObject().GetCodeValue(), label.type.value)

        labels = convert.segmentation_to_labels(segmentation, volume, card.labels)
        counts = {label.name: int((labels == label.value).sum()) for label in card.labels}
        for name, count in counts.items():
            self.assertGreater(count, 0, f"{name} is empty")
        self.assertEqual(max(counts, key=counts.get), "liver", f"voxel counts: {counts}")
        # the bundled model was trained on this scan: a regression guard, not an accuracy claim
        import SimpleITK as sitk

        reference = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(
            MODULE_DIR, "dinseg", "assets", "sample", "abdomen_ct_totalsegmentator_labels.nii.gz")))
        for label in card.labels:
            predicted, expected = labels == label.value, reference == label.value
            dice = 2 * (predicted & expected).sum() / (predicted.sum() + expected.sum())
            self.assertGreater(dice, 0.75, f"{label.name}: Dice {dice:.3f} against TotalSegmentator")
        self.delayDisplay(f"Test passed ({seconds:.1f} s)")
