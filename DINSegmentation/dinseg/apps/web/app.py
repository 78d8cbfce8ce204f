"""The DIN workflow in the browser, on trame-slicer: open, preview, segment in the background, correct, save.

One trame server holds one MRML scene (trame-slicer's :class:`SlicerApp`), shared by every tab
that opens the page. The engine does the work: :mod:`dinseg.core.io` reads and checks images,
:class:`dinseg.slicer.logic.DINSegmentationMRMLLogic` previews the enhancement and, through
:class:`dinseg.slicer.logic.SegmentationJob` (the child-process :class:`dinseg.pipeline.job.SegmentationProcess`),
segments and imports the labels; trame-slicer's Segment Editor effects edit the result.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import slicer
from trame.app import get_server
from trame.decorators import TrameApp, change
from trame.widgets import client, html
from trame.widgets import vuetify3 as v3
from trame_server.utils.asynchronous import create_task
from trame_slicer import module as trame_slicer_module
from trame_slicer.app.logic.segmentation import SegmentEditorLogic
from trame_slicer.app.ui import ControlButton, ViewerLayout
from trame_slicer.app.ui.segmentation import SegmentEditorToolbarUI, SegmentEditorUI, SegmentEditorUndoRedoUI
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

from ...pipeline.options import ENHANCEMENT_METHODS, MODEL_DEFAULT, SegmentOptions
from ...slicer.convert import segmentation_to_labels, volume_to_image
from ...slicer.logic import DINSegmentationMRMLLogic
from ...core.errors import DinsegError, InputError, OutputError
from ...pipeline.job import JobState
from ...pipeline.worker import Worker
from ...core.terminology import segment_id
from ...core.samples import SAMPLES
from .files import DataFolder, UploadArea
from .scene import add_image

log = logging.getLogger("dinseg")

AXIAL_LAYOUT = "Axial"
SIDE_BY_SIDE_LAYOUT = "Original | enhanced"
SHARED_SESSION_NOTE = ("One shared session: every tab that opens this page with its token sees and edits "
                       "the same scene.")
UPLOAD_CHUNK_BYTES = 1 << 20

#: the browser sends a file in slices of UPLOAD_CHUNK_BYTES: begin (name, size) -> id, chunks, end
UPLOAD_SCRIPT = """
window.dinsegUpload = async function (file, triggers) {
  if (!file) { return; }
  const id = await trame.trigger(triggers.begin, [file.name, file.size]);
  if (!id) { return; }
  for (let offset = 0; offset < file.size; offset += %d) {
    const bytes = new Uint8Array(await file.slice(offset, offset + %d).arrayBuffer());
    if (!(await trame.trigger(triggers.chunk, [id, bytes]))) { return; }
  }
  await trame.trigger(triggers.end, [id]);
};
""" % (UPLOAD_CHUNK_BYTES, UPLOAD_CHUNK_BYTES)


def card_tooltip(card) -> str:
    """What a user should know before choosing a model: classes, modality, training data, measured metrics."""
    classes = ", ".join(label.name for label in card.labels)
    training = card.training.get("data", "training data not recorded")
    measured = card.metrics.get("summary", "no measured metrics")
    return (f"{card.name} {card.version}: {classes}. Modality {card.modality} {card.anatomy}".rstrip()
            + f". Trained on: {training}. Measured: {measured}")


def device_choices() -> List[str]:
    """The devices this server can run the network on."""
    import torch

    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices += ["cuda"] + [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


@TrameApp()
class DinsegWebApp:
    """The page and its server-side state (one scene for every connected tab)."""

    def __init__(self, server, data_folder: DataFolder, uploads: UploadArea):
        from ...models import list_models

        self.server = server
        self.data_folder = data_folder
        self.uploads = uploads
        server.enable_module(trame_slicer_module)
        self.slicer_app = SlicerApp()
        self.sequences_logic = self.slicer_app.register_module_logic(slicer.vtkSlicerSequencesLogic(),
                                                                     logic_name="Sequences")
        register_rca_factories(self.slicer_app.view_manager, server)
        self.segment_editor_logic = SegmentEditorLogic(server, self.slicer_app)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, server)
        red = ViewLayoutDefinition.axial_view()
        yellow = ViewLayoutDefinition.slice_view("Axial", label="Yellow", color="#EFD64D")
        self.layout_manager.register_layout_dict({
            AXIAL_LAYOUT: Layout(LayoutDirection.Vertical, [red]),
            SIDE_BY_SIDE_LAYOUT: Layout(LayoutDirection.Horizontal, [red, yellow]),
        })
        self.logic = DINSegmentationMRMLLogic(self.slicer_app.scene, sequences_logic=self.sequences_logic,
                                                   terminologies_logic=self.slicer_app.terminologies_logic)
        self.logic.segmentation.load_terminology()
        self.slicer_app.segmentation_editor.segmentation_modified.connect(self._schedule_structure_table)

        self.cards = {card.name: card for card in list_models()}
        self.volume = None            # the volume node shown (a cine: its proxy node)
        self.browser = None           # the cine's sequence browser
        self.image = None             # the engine image the volume was made from
        self.input_path: Optional[Path] = None   # the data-folder file it came from (for "save next to it")
        self.card = None              # the model of the shown segmentation
        self.segmentation = None      # the segmentation node shown (a cine: the proxy of its sequence)
        self.segmentation_sequence = None
        self.enhanced = None
        self.job = None
        self.worker = Worker(temp_root=uploads.folder)  # the warm engine: models stay loaded between runs
        self._table_task = None

        state = self.state
        state.trame__title = "DIN Segmentation"
        state.update({
            "message": "", "message_type": "info", "shared_session_note": SHARED_SESSION_NOTE,
            "data_files": data_folder.image_files(), "data_path": None,
            "models": [{"title": name, "value": name} for name in self.cards], "model": None,
            "model_tooltip": "Load an image: the model that fits it is chosen.", "model_reason": "",
            "devices": device_choices(), "device": "auto",
            "methods": [MODEL_DEFAULT, *ENHANCEMENT_METHODS], "method": MODEL_DEFAULT, "strength": 1.0,
            "volume_name": "", "volume_loaded": False, "frame_count": 0, "frame": 1, "all_frames": True,
            "job_running": False, "job_progress": 0, "job_stage": "", "job_elapsed": "",
            "structures": [], "cardiac_rows": [], "has_result": False, "can_save_next_to_input": False,
            "click_structures": [], "click_structure": None, "click_mode": "", "click_count": 0,
            "download_name": "segmentation.seg.nrrd", "labels_download_name": "labels.nii.gz",
            "layout": AXIAL_LAYOUT, "layouts": [AXIAL_LAYOUT, SIDE_BY_SIDE_LAYOUT],
            "max_upload_mb": uploads.max_bytes / 1e6,
        })
        self._build_ui()
        self.layout_manager.set_layout(AXIAL_LAYOUT)

    @property
    def state(self):
        return self.server.state

    # -- messages ----------------------------------------------------------------------------
    def _say(self, text: str, kind: str = "info") -> None:
        self.state.message, self.state.message_type = text, kind
        if kind == "error":
            log.warning("%s", text)

    # -- opening images ----------------------------------------------------------------------
    def load_sample(self) -> None:
        self._open(SAMPLES["abdomen-ct"], "abdomen-ct (bundled sample)", from_data_folder=False)

    def open_data_file(self) -> None:
        try:
            path = self.data_folder.resolve(self.state.data_path or "")
        except InputError as error:
            self._say(str(error), "error")
            return
        self._open(path, self.state.data_path, from_data_folder=True)

    def upload_begin(self, name: str, size: int):
        try:
            return self.uploads.begin(str(name), int(size))
        except InputError as error:
            self._say(str(error), "error")
            return None

    def upload_chunk(self, upload_id: str, chunk) -> bool:
        try:
            self.uploads.append(str(upload_id), bytes(chunk))
            return True
        except InputError as error:
            self._say(str(error), "error")
            return False

    def upload_end(self, upload_id: str) -> None:
        try:
            path = self.uploads.finish(str(upload_id))
        except InputError as error:
            self._say(str(error), "error")
            return
        self._open(path, path.name if path.is_file() else f"{path.name} (DICOM series)",
                   from_data_folder=False)

    def _open(self, path: Path, label: str, from_data_folder: bool) -> None:
        """Read and check the image with the engine, then replace the scene's content with it."""
        from ...pipeline.segmenter import model_for
        from ...core.io import read_volume

        try:
            image = read_volume(path)
        except DinsegError as error:
            self._say(str(error).replace(str(path), label), "error")
            return
        self._cancel_job()
        self._end_clicks()
        self.slicer_app.scene.Clear()
        self.logic.segmentation.forget_undo()
        self.segmentation = self.segmentation_sequence = self.enhanced = self.card = None
        name = Path(label).name.split(".")[0] or "volume"
        self.volume, self.browser = add_image(self.slicer_app.scene, self.sequences_logic, image, name)
        self.image, self.input_path = image, (path if from_data_folder else None)
        self.layout_manager.set_layout(AXIAL_LAYOUT)
        self.state.layout = AXIAL_LAYOUT
        self.slicer_app.display_manager.show_volume_in_slice_background(self.volume)
        self.slicer_app.display_manager.reset_views()
        card, reason = model_for(image)
        self.state.update({
            "volume_name": label, "volume_loaded": True, "frame_count": image.frames if self.browser else 0,
            "frame": 1, "model": card.name, "model_reason": f"chosen for this image: {reason}",
            "structures": [], "cardiac_rows": [], "has_result": False, "can_save_next_to_input": False,
            "job_progress": 0, "job_stage": "", "job_elapsed": "",
        })
        self._say(f"opened {label}: {' x '.join(str(n) for n in image.array.shape[::-1])} voxels", "success")

    @change("model")
    def _on_model(self, model, **_):
        card = self.cards.get(model)
        self.state.model_tooltip = card_tooltip(card) if card else ""

    @change("frame")
    def _on_frame(self, frame, **_):
        if self.browser is not None:
            self.browser.SetSelectedItemNumber(max(int(frame) - 1, 0))
            self._schedule_structure_table()

    @change("layout")
    def _on_layout(self, layout, **_):
        self.layout_manager.set_layout(layout)

    # -- enhancement preview -----------------------------------------------------------------
    def preview(self) -> None:
        if not self._need_volume():
            return
        method = self.state.method if self.state.method != MODEL_DEFAULT else \
            self.cards[self.state.model].preprocessing.enhancement.method
        try:
            self.enhanced = self.logic.preview.enhance(self.volume, method=method, strength=float(self.state.strength),
                                                       model=self.cards[self.state.model], output=self.enhanced)
        except DinsegError as error:
            self._say(str(error), "error")
            return
        self.state.layout = SIDE_BY_SIDE_LAYOUT
        self.layout_manager.set_layout(SIDE_BY_SIDE_LAYOUT)
        self.logic.preview.show_side_by_side(self.volume, self.enhanced)
        self.slicer_app.display_manager.reset_views()
        self._say(f"left: original; right: what the network's second encoder sees ({method}, strength "
                  f"{float(self.state.strength):g})", "success")

    # -- segmentation in the background ------------------------------------------------------
    def segment(self) -> None:
        if not self._need_volume() or self.job is not None:
            return
        try:
            options = SegmentOptions.for_gui(self.state.method, float(self.state.strength),
                                             model=self.cards[self.state.model], device=self.state.device)
            self.job = self.logic.segmentation.create_job(
                self.volume, options, all_frames=bool(self.state.all_frames),
                output=self.segmentation_sequence or self.segmentation, worker=self.worker)
            self.job.start()
        except DinsegError as error:
            self.job = None
            self._say(str(error), "error")
            return
        self.state.update({"job_running": True, "job_progress": 0, "job_stage": "starting", "job_elapsed": ""})
        self._say(f"segmenting with {self.job.card.name} on {self.state.device}")
        create_task(self._follow_job(self.job))

    async def _follow_job(self, job) -> None:
        """Poll the child process from the event loop: the page stays live while it runs."""
        while job.poll():
            with self.state:
                self.state.job_progress = round(100 * job.fraction)
                self.state.job_stage = job.stage
                self.state.job_elapsed = f"{job.elapsed:.1f} s"
            await asyncio.sleep(0.2)
        if job is not self.job:  # cancelled, or replaced by a new image
            return
        with self.state:
            self.job = None
            self.state.job_running = False
            self.state.job_elapsed = f"{job.elapsed:.1f} s"
            if job.runner.state != JobState.SUCCEEDED:
                self.state.job_stage = "failed"
                self._say(f"the segmentation failed: {job.error}", "error")
                return
            try:
                result = job.finish()
            except (DinsegError, RuntimeError) as error:
                self._say(f"the segmentation could not be imported: {error}", "error")
                return
            self._show_result(result, job.card)
            self.state.job_stage = "done"
            quality = getattr(job.runner, "quality", None) or {}
            if quality.get("status") == "review":  # reports.quality: say what to check before trusting it
                self._say(f"segmented with {job.card.name}; check before use: " + "; ".join(quality["reasons"]),
                          "warning")
            else:
                self._say(f"segmented in {job.elapsed:.1f} s with {job.card.name}", "success")

    def cancel(self) -> None:
        if self._cancel_job():
            self.state.update({"job_running": False, "job_stage": "cancelled", "job_progress": 0})
            self._say("cancelled; the scene is as it was")

    def _cancel_job(self) -> bool:
        job, self.job = self.job, None
        if job is None:
            return False
        job.cancel()
        return True

    def _show_result(self, result, card) -> None:
        """Hand the segmentation to the Segment Editor and fill the tables."""
        self.card = card
        if result.IsA("vtkMRMLSequenceNode"):
            self.segmentation_sequence = result
            self.segmentation = self.browser.GetProxyNode(result)
        else:
            self.segmentation = result
        self.slicer_app.segmentation_editor.set_active_segmentation(self.segmentation, self.volume)
        stem = (Path(self.state.volume_name).name.split(".")[0] or "segmentation").replace(" ", "_")
        self.state.update({"has_result": True, "download_name": f"{stem}.seg.nrrd",
                           "labels_download_name": f"{stem}_labels.nii.gz",
                           "can_save_next_to_input": self.input_path is not None})
        self._update_structure_table()
        self._update_cardiac_function()
        self._jump_to_structures()
        self._end_clicks()
        names = [label.name for label in card.labels]
        self.state.update({"click_structures": names, "click_structure": names[0] if names else None})

    def _jump_to_structures(self) -> None:
        """Put the slice views through the middle of what was segmented (not an empty slice of the scan)."""
        found = np.argwhere(self._current_labels() > 0)
        if not len(found):
            return
        k, j, i = found.mean(axis=0)
        ras = volume_to_image(self.volume).geometry.index_to_ras() @ np.array([i, j, k, 1.0])
        for index in range(self.slicer_app.scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
            self.slicer_app.scene.GetNthNodeByClass(index, "vtkMRMLSliceNode").JumpSliceByOffsetting(*ras[:3])

    # -- correct with clicks -----------------------------------------------------------------
    def click_mode(self, sign: str) -> None:
        """"+" or "-": left clicks in a slice view place points of that sign, each correcting the chosen
        structure at once; the same sign again stops placing."""
        if self.segmentation is None or self.state.click_structure is None:
            self._say("segment first: click correction works on a result", "error")
            return
        if self.state.click_mode == sign:
            self.slicer_app.markups_logic.disable_place_mode()
            self.state.click_mode = ""
            return
        clicks = self.logic.clicks
        info = next(label for label in self.card.labels if label.name == self.state.click_structure)
        session = clicks.session
        try:
            if session is None or session.segmentation is not self.segmentation or \
                    session.segment_id != segment_id(info):
                self._end_clicks()
                session = clicks.start(self.volume, self.segmentation, segment_id(info))
                for points in (session.positive, session.negative):
                    points.AddObserver(slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self._on_click_placed)
                self._centre_views_on(self.segmentation, info)
        except DinsegError as error:
            self._say(str(error), "error")
            return
        self.slicer_app.markups_logic.place_node(session.positive if sign == "+" else session.negative,
                                                 persistent=True)
        self.state.update({"click_mode": sign, "click_count": len(session.history)})
        self._say(f"click in a slice view: {'+ adds to' if sign == '+' else '- removes from'} {info.name}")

    def _on_click_placed(self, caller, _event) -> None:
        session = self.logic.clicks.session
        if session is None:
            return
        with self.state:
            try:
                voxels = self.logic.clicks.correct_last(caller is session.positive)
            except DinsegError as error:
                self._say(str(error), "error")
                return
            self.state.click_count = len(session.history)
            self._update_structure_table()
            self._say(f"{self.state.click_structure}: {voxels} voxels after {len(session.history)} click(s)",
                      "success")

    def undo_click(self) -> None:
        if self.logic.clicks.session is not None and self.logic.clicks.undo():
            self.state.click_count = len(self.logic.clicks.session.history)
            self._update_structure_table()
            self._say("last click undone")

    def _end_clicks(self) -> None:
        """Stop click correction: place mode off and the points removed; the structure stays as corrected."""
        if self.logic.clicks.session is not None:
            self.slicer_app.markups_logic.disable_place_mode()
            self.logic.clicks.end()
        self.state.update({"click_mode": "", "click_count": 0})

    def end_clicks(self) -> None:
        self._end_clicks()
        self._say("click correction done: the structure stays as corrected")

    def _centre_views_on(self, segmentation, info) -> None:
        """Slice views centred on the structure (its voxel nearest its centroid), for the first click."""
        mask = segmentation_to_labels(segmentation, self.volume, [info]) == info.value
        found = np.argwhere(mask)
        if not len(found):
            return
        nearest = found[np.argmin(((found - found.mean(axis=0)) ** 2).sum(axis=1))]
        k, j, i = nearest
        ras = volume_to_image(self.volume).geometry.index_to_ras() @ np.array([i, j, k, 1.0])
        for index in range(self.slicer_app.scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
            self.slicer_app.scene.GetNthNodeByClass(index, "vtkMRMLSliceNode").JumpSliceByCentering(*ras[:3])

    # -- numbers -----------------------------------------------------------------------------
    def _schedule_structure_table(self, *_args) -> None:
        """Recount after edits (once, shortly after the last change: a stroke modifies many times)."""
        if self.segmentation is None or (self._table_task is not None and not self._table_task.done()):
            return

        async def later():
            await asyncio.sleep(0.3)
            with self.state:
                self._update_structure_table()

        self._table_task = create_task(later())

    def _current_labels(self) -> np.ndarray:
        return segmentation_to_labels(self.segmentation, self.volume, self.card.labels)

    def _update_structure_table(self) -> None:
        """Each structure's voxels, volume and mean intensity in the shown frame (the engine's statistics)."""
        from ...reports.statistics import structure_statistics

        if self.segmentation is None or self.card is None:
            return
        image = volume_to_image(self.volume)
        rows = structure_statistics(self._current_labels(), image.array, image.geometry, self.card.labels)
        colours = {info.name: "#%02x%02x%02x" % tuple(info.color) for info in self.card.labels}
        self.state.structures = [
            {"name": row["structure"], "color": colours.get(row["structure"], "#888888"), "voxels": row["voxels"],
             "volume_ml": f"{row['volume_ml']:.1f}", "mean": "" if row["mean"] is None else f"{row['mean']:.0f}"}
            for row in rows]

    def _update_cardiac_function(self) -> None:
        """The cardiac function table, for a cine segmented in all its frames by a cardiac model."""
        self.state.cardiac_rows = []
        if self.segmentation_sequence is None or self.segmentation_sequence.GetNumberOfDataNodes() < 2:
            return
        if not self.card.is_cardiac:
            return
        try:
            result, _table, _chart = self.logic.reports.cardiac_function_of_sequence(
                self.segmentation_sequence, self.browser.GetMasterSequenceNode())
        except DinsegError as error:
            self._say(f"no cardiac function: {error}", "error")
            return
        rows = [{"quantity": "ED / ES frame", "value": f"{result.ed_frame + 1} / {result.es_frame + 1}"}]
        rows += [{"quantity": label, "value": "n/a" if result.figures.get(key) is None else
                  f"{result.figures[key]:.1f} {unit}"} for key, label, unit in result.ROWS]
        self.state.cardiac_rows = rows

    # -- saving ------------------------------------------------------------------------------
    def _write_segmentation(self, path: Path) -> None:
        """The shown segmentation (with the user's edits) as a .seg.nrrd or a labelmap, written atomically."""
        from ...core.io import atomic_output, write_image

        if str(path).lower().endswith(".seg.nrrd"):
            with atomic_output(path) as temporary:
                storage = slicer.vtkMRMLSegmentationStorageNode()  # Slicer's own writer: every segment, as edited
                storage.SetFileName(str(temporary))
                if not storage.WriteData(self.segmentation):
                    raise OutputError(f"{path.name}: Slicer could not write the segmentation")
        else:
            write_image(path, self._current_labels(), volume_to_image(self.volume).geometry)

    def _download(self, name: str):
        if self.segmentation is None:
            self._say("nothing to save yet: segment first", "error")
            return None
        with tempfile.TemporaryDirectory(dir=self.uploads.folder) as folder:
            path = Path(folder) / name
            try:
                self._write_segmentation(path)
            except DinsegError as error:
                self._say(str(error), "error")
                return None
            return self.server.protocol.addAttachment(path.read_bytes())

    def download_segmentation(self):
        return self._download(self.state.download_name)

    def download_labels(self):
        return self._download(self.state.labels_download_name)

    def save_next_to_input(self) -> None:
        if self.segmentation is None or self.input_path is None:
            self._say("only a result of an image opened from the data folder can be saved there; download it",
                      "error")
            return
        base = self.input_path if self.input_path.is_file() else self.input_path / "segmentation"
        stem = base.name.split(".")[0]
        try:
            target = self.data_folder.writable_target(base.with_name(f"{stem}.seg.nrrd"))
            self._write_segmentation(target)
        except DinsegError as error:
            self._say(str(error), "error")
            return
        self.state.data_files = self.data_folder.image_files()
        self._say(f"wrote {target.relative_to(self.data_folder.root).as_posix()} in the data folder", "success")

    def _need_volume(self) -> bool:
        if self.volume is None:
            self._say("open an image first", "error")
            return False
        return True

    # -- the page ----------------------------------------------------------------------------
    def _build_ui(self) -> None:
        with ViewerLayout(self.server, title="DIN Segmentation", is_drawer_visible=True) as layout:
            layout.typed_state.data.active_tool = "DinPanel"
            tool = layout.typed_state.name.active_tool
            client.Script(UPLOAD_SCRIPT)
            with layout.appbar:
                v3.VChip("shared session", id="dinseg-shared-session", size="small", color="warning",
                         variant="tonal", classes="mx-2", title=SHARED_SESSION_NOTE)
            with layout.toolbar:
                self._tool_button(layout, "DinPanel", "mdi-brain", "DIN segmentation")
                self._tool_button(layout, "SegmentEditorUI", "mdi-layers-edit", "segments and effects")
            with layout.drawer:
                with html.Div(v_if=f"{tool} === 'DinPanel'", classes="pa-2"):
                    self._build_panel()
                editor = SegmentEditorUI(v_if=(f"{tool} === 'SegmentEditorUI'",))
                self.segment_editor_logic.set_ui(editor)
            with layout.toolbar:
                SegmentEditorToolbarUI(editor_ui=editor)
            with layout.undo_redo:
                SegmentEditorUndoRedoUI(editor_ui=editor)
            with layout.content:
                self.layout_manager.initialize_layout_grid(layout)
            self.ui = layout

    @staticmethod
    def _tool_button(layout, tool: str, icon: str, name: str) -> None:
        names = layout.typed_state.name
        ControlButton(icon=icon, name=name, classes="mt-1", active=(f"{names.active_tool} === '{tool}'",),
                      click=f"{names.active_tool} = '{tool}'; {names.is_drawer_visible} = true")

    def _build_panel(self) -> None:
        ctrl = self.server.controller
        v3.VAlert(v_if="message", text=("message",), type=("message_type",), density="compact",
                  id="dinseg-message", classes="mb-2", style="word-break: break-word;")
        v3.VAlert(text=("shared_session_note",), type="warning", variant="tonal", density="compact",
                  classes="mb-2 text-caption")
        # open
        html.Div("1. Open an image", classes="text-subtitle-2")
        v3.VFileInput(label="Upload (NIfTI, NRRD, MHA, zipped DICOM)", density="compact", id="dinseg-upload",
                      hide_details=True, prepend_icon="mdi-upload",
                      change=(f"window.dinsegUpload($event.target.files[0], {{begin: '{ctrl.trigger_name(self.upload_begin)}', "
                              f"chunk: '{ctrl.trigger_name(self.upload_chunk)}', "
                              f"end: '{ctrl.trigger_name(self.upload_end)}'}}); $event.target.value = null"))
        with html.Div(classes="d-flex align-center mt-2"):
            v3.VCombobox(v_model=("data_path",), items=("data_files",), label="file in the data folder",
                         density="compact", hide_details=True, id="dinseg-data-path")
            v3.VBtn("Open", click=self.open_data_file, id="dinseg-open-data", size="small", classes="ml-1")
        v3.VBtn("Load the bundled CT", click=self.load_sample, id="dinseg-load-sample", size="small", block=True,
                variant="tonal", classes="mt-2")
        html.Div("{{ volume_name }}", v_if="volume_loaded", classes="text-caption mt-1", id="dinseg-volume-name")
        # model and device
        html.Div("2. Model and device", classes="text-subtitle-2 mt-3")
        with v3.VTooltip(location="right", max_width=420):
            with v3.Template(v_slot_activator="{ props }"):
                v3.VSelect(v_bind="props", v_model=("model",), items=("models",), label="model", density="compact",
                           hide_details=True, id="dinseg-model")
            html.Span("{{ model_tooltip }}")
        html.Div("{{ model_reason }}", classes="text-caption")
        v3.VSelect(v_model=("device",), items=("devices",), label="device", density="compact", hide_details=True,
                   classes="mt-2", id="dinseg-device")
        # enhancement
        html.Div("3. Enhancement preview", classes="text-subtitle-2 mt-3")
        v3.VSelect(v_model=("method",), items=("methods",), label="method", density="compact", hide_details=True)
        v3.VSlider(v_model=("strength",), min=0, max=1, step=0.05, label="strength", density="compact",
                   hide_details=True, thumb_label=True)
        v3.VBtn("Preview enhancement", click=self.preview, disabled=("!volume_loaded",), size="small", block=True,
                variant="tonal", id="dinseg-preview")
        v3.VSelect(v_model=("layout",), items=("layouts",), label="views", density="compact", hide_details=True,
                   classes="mt-2")
        # segment
        html.Div("4. Segment", classes="text-subtitle-2 mt-3")
        v3.VCheckbox(v_if="frame_count > 1", v_model=("all_frames",), label="all frames", density="compact",
                     hide_details=True)
        v3.VSlider(v_if="frame_count > 1", v_model=("frame",), min=1, max=("frame_count",), step=1,
                   label="frame", thumb_label=True, density="compact", hide_details=True)
        v3.VBtn("Segment", v_if="!job_running", click=self.segment, disabled=("!volume_loaded",), color="primary",
                block=True, id="dinseg-segment")
        v3.VBtn("Cancel", v_else=True, click=self.cancel, color="error", block=True, id="dinseg-cancel")
        v3.VProgressLinear(v_if="job_running", model_value=("job_progress",), height=6, classes="mt-1")
        html.Div("{{ job_stage }} {{ job_elapsed }}", classes="text-caption", id="dinseg-job-status")
        # results
        with v3.VTable(v_if="structures.length", density="compact", classes="mt-2 text-caption",
                       id="dinseg-structures"):
            with html.Thead():
                with html.Tr():
                    for title in ("structure", "voxels", "mL", "mean"):
                        html.Th(title)
            with html.Tbody():
                with html.Tr(v_for="row in structures", key="row.name", raw_attrs=[':data-structure="row.name"']):
                    with html.Td():
                        html.Span("&#9632; ", style=("{color: row.color}",))
                        html.Span("{{ row.name }}")
                    html.Td("{{ row.voxels }}", classes="voxels")
                    html.Td("{{ row.volume_ml }}")
                    html.Td("{{ row.mean }}")
        with v3.VTable(v_if="cardiac_rows.length", density="compact", classes="mt-2 text-caption",
                       id="dinseg-cardiac"):
            with html.Tbody():
                with html.Tr(v_for="row in cardiac_rows", key="row.quantity"):
                    html.Td("{{ row.quantity }}")
                    html.Td("{{ row.value }}")
        # correct with clicks
        with html.Div(v_if="has_result", id="dinseg-clicks"):
            html.Div("Correct with clicks", classes="text-subtitle-2 mt-3")
            v3.VSelect(v_model=("click_structure",), items=("click_structures",), label="structure",
                       density="compact", hide_details=True, id="dinseg-click-structure")
            with html.Div(classes="d-flex flex-wrap ga-1 mt-1"):
                v3.VBtn("+ add", click=(self.click_mode, "['+']"), size="small", id="dinseg-click-positive",
                        color=("click_mode === '+' ? 'success' : undefined",))
                v3.VBtn("- remove", click=(self.click_mode, "['-']"), size="small", id="dinseg-click-negative",
                        color=("click_mode === '-' ? 'error' : undefined",))
                v3.VBtn("undo click", click=self.undo_click, size="small", disabled=("!click_count",),
                        id="dinseg-click-undo")
                v3.VBtn("done", click=self.end_clicks, size="small", id="dinseg-click-done")
        # save
        html.Div("5. Save", classes="text-subtitle-2 mt-3")
        with html.Div(classes="d-flex flex-wrap ga-1"):
            v3.VBtn(".seg.nrrd", disabled=("!has_result",), size="small", id="dinseg-download-seg",
                    prepend_icon="mdi-download",
                    click=f"utils.download(download_name, trigger('{ctrl.trigger_name(self.download_segmentation)}'), "
                          "'application/octet-stream')")
            v3.VBtn("labelmap", disabled=("!has_result",), size="small", id="dinseg-download-labels",
                    prepend_icon="mdi-download",
                    click=f"utils.download(labels_download_name, trigger('{ctrl.trigger_name(self.download_labels)}'), "
                          "'application/octet-stream')")
            v3.VBtn("next to the input", disabled=("!can_save_next_to_input",), size="small", id="dinseg-save-next",
                    prepend_icon="mdi-content-save", click=self.save_next_to_input)


def serve(data: str, host: str = "127.0.0.1", port: int = 8080, max_upload_mb: float = 4096,
          token: Optional[str] = None, certfile: Optional[str] = None, keyfile: Optional[str] = None) -> int:
    """Run the web front end until interrupted; the temporary folder is removed when it stops.

    token: every request must carry it (see :mod:`.access`); None serves without one (loopback
    only, checked by the command). certfile / keyfile: serve HTTPS.
    """
    from .access import token_middleware

    data_folder = DataFolder(data)
    uploads = UploadArea(int(max_upload_mb * 1e6))
    app = None
    try:
        server = get_server("dinseg-web", client_type="vue3")
        started = time.monotonic()
        app = DinsegWebApp(server, data_folder, uploads)
        scheme = "https" if certfile else "http"

        def bind(web_server):
            if token is not None:
                web_server.app.middlewares.append(token_middleware(token, secure=bool(certfile)))
            if certfile:
                import ssl

                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.load_cert_chain(certfile, keyfile)
                web_server.config["ssl"] = context

        def ready(**_):
            address = f"{scheme}://{host}:{server.port}/" + (f"?token={token}" if token else "")
            print(f"dinseg web: serving {data_folder.root} at {address} "
                  f"(ready in {time.monotonic() - started:.1f} s; Ctrl-C stops)", file=sys.stderr, flush=True)

        server.controller.on_server_bind.add(bind)
        server.controller.on_server_ready.add(ready)
        server.start(host=host, port=port, open_browser=False, show_connection_info=False, timeout=0)
    finally:
        if app is not None:
            app._cancel_job()
            app.worker.close()
        uploads.close()
    return 0
