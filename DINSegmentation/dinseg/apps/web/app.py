"""The DIN workflow in the browser, on trame-slicer: open, preview, segment in the background, correct, save.

One trame server holds one MRML scene (trame-slicer's :class:`SlicerApp`), shared by every tab
that opens the page. The engine does the work: :mod:`dinseg.core.io` reads and checks images,
:class:`dinseg.slicer.logic.DINSegmentationMRMLLogic` previews the enhancement and, through
:class:`dinseg.slicer.logic.SegmentationJob` (the child-process :class:`dinseg.pipeline.job.SegmentationProcess`),
segments and imports the labels; trame-slicer's Segment Editor effects edit the result. A saved
segmentation (``.seg.nrrd``, labelmap or DICOM SEG) can be opened onto the image it was made on and
edited again.
The views (one plane, four-up with 3D, original | enhanced) carry orientation letters, slice numbers
and window/level (:mod:`.display`); segments take the display colours of :mod:`dinseg.core.colors`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import slicer
from trame.app import get_server
from trame.decorators import TrameApp, change
from trame.widgets import client, html
from trame.widgets import vuetify3 as v3
from trame_server.utils.asynchronous import create_task
from trame_slicer import module as trame_slicer_module
from trame_slicer.app.logic.segmentation import SegmentEditorLogic
from trame_slicer.app.ui import ControlButton, ViewerLayout, create_vertical_slice_view_gutter_ui
from trame_slicer.app.ui.segmentation import SegmentEditorToolbarUI, SegmentEditorUI, SegmentEditorUndoRedoUI
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.segmentation import SegmentationEffectNoTool
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition
from vtkmodules.vtkCommonCore import vtkCommand

from ...pipeline.options import ENHANCEMENT_METHODS, MODEL_DEFAULT, SegmentOptions
from ...slicer.convert import segmentation_to_labels, volume_to_image
from ...slicer.logic import DINSegmentationMRMLLogic
from ...core.errors import DinsegError, InputError, OutputError, in_plain_words
from ...pipeline.job import JobState
from ...pipeline.worker import Worker
from ...core.colors import hex_color, structure_color
from ...core.terminology import KNOWN_STRUCTURES, LabelInfo, segment_id
from ...core.samples import SAMPLES
from .dicom_seg import is_dicom_seg, read_dicom_seg
from .display import (CT_PRESETS, auto_window_level, orientation_letters, set_window_level, slice_number,
                      window_level_text)
from .files import DataFolder, UploadArea
from .scene import add_image

log = logging.getLogger("dinseg")

AXIAL_LAYOUT, SAGITTAL_LAYOUT, CORONAL_LAYOUT, THREE_D_LAYOUT = "Axial", "Sagittal", "Coronal", "3D"
FOUR_UP_LAYOUT = "Four-up"
SIDE_BY_SIDE_LAYOUT = "Original | enhanced"
#: the layouts offered before an enhancement preview exists (then also SIDE_BY_SIDE_LAYOUT)
IMAGE_LAYOUTS = [AXIAL_LAYOUT, SAGITTAL_LAYOUT, CORONAL_LAYOUT, THREE_D_LAYOUT, FOUR_UP_LAYOUT]
#: library phrases of an unreadable file, and what they mean to the user
SHARED_SESSION_NOTE = ("One shared session: every tab that opens this page with its token sees and edits "
                       "the same scene.")
UPLOAD_CHUNK_BYTES = 1 << 20
#: the views are fitted to the image this long after the browser last resized one
FIT_DELAY_S = 0.2
#: how often the data folder's listing is read again
DATA_FOLDER_POLL_S = 3.0
#: compact rows, so that the structures table (the colours' legend) and Save fit 1280 x 720
PANEL_STYLE = (".dinseg-legend td, .dinseg-legend th { height: 22px !important; padding: 0 6px !important; } "
               ".v-expansion-panel-text__wrapper { padding: 4px 8px 8px !important; }")

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


def card_summary(card) -> str:
    """What a user should know before choosing a model: classes, modality, training data, measured metrics."""
    classes = ", ".join(label.name for label in card.labels)
    training = card.training.get("data", "training data not recorded")
    measured = card.metrics.get("summary", "no measured metrics")
    return (f"{card.name} {card.version}: {classes}. Modality {card.modality} {card.anatomy}".rstrip()
            + f". Trained on: {training}. Measured: {measured}")


def display_infos(infos: Sequence[LabelInfo]) -> List[LabelInfo]:
    """Segments read from a file with the code and display colour dinseg gives their names."""
    shown = []
    for info in infos:
        if info.name in KNOWN_STRUCTURES:
            code, modifier, color = KNOWN_STRUCTURES[info.name]
            shown.append(LabelInfo(value=info.value, name=info.name, color=color, type=code, modifier=modifier))
        else:
            shown.append(LabelInfo(value=info.value, name=info.name, color=structure_color(info.name, info.value),
                                   type=info.type, category=info.category, modifier=info.modifier))
    return shown


def stage_in_words(stage: str) -> str:
    """The job's stage for the page: its first seconds are spent reading the image and loading the model."""
    return "reading the image, loading the model" if stage == "starting" else stage


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
        register_rca_factories(self.slicer_app.view_manager, server, slice_view_ui_f=self._slice_view_ui)
        self.segment_editor_logic = SegmentEditorLogic(server, self.slicer_app)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, server)
        self._fit_task = None
        self._last_resize = 0.0
        self.state.update({f"annotation_{name}": {} for name in ("Red", "Yellow", "Green")})
        red, yellow = ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.sagittal_view()
        green, three_d = ViewLayoutDefinition.coronal_view(), ViewLayoutDefinition.threed_view()
        self.layout_manager.register_layout_dict({
            AXIAL_LAYOUT: Layout(LayoutDirection.Vertical, [red]),
            SAGITTAL_LAYOUT: Layout(LayoutDirection.Vertical, [yellow]),
            CORONAL_LAYOUT: Layout(LayoutDirection.Vertical, [green]),
            THREE_D_LAYOUT: Layout(LayoutDirection.Vertical, [three_d]),
            FOUR_UP_LAYOUT: Layout(LayoutDirection.Horizontal, [Layout(LayoutDirection.Vertical, [red, green]),
                                                                 Layout(LayoutDirection.Vertical, [yellow, three_d])]),
            SIDE_BY_SIDE_LAYOUT: Layout(LayoutDirection.Horizontal, [red, yellow]),
        })
        self.logic = DINSegmentationMRMLLogic(self.slicer_app.scene, sequences_logic=self.sequences_logic,
                                                   terminologies_logic=self.slicer_app.terminologies_logic)
        self.logic.segmentation.load_terminology()
        self.slicer_app.segmentation_editor.segmentation_modified.connect(self._schedule_structure_table)
        self.slicer_app.segmentation_editor.active_effect_name_changed.connect(self._on_effect_changed)

        self.cards = {card.name: card for card in list_models()}
        self.volume = None            # the volume node shown (a cine: its proxy node)
        self.browser = None           # the cine's sequence browser
        self.image = None             # the engine image the volume was made from
        self.input_path: Optional[Path] = None   # the data-folder file it came from (for "save next to it")
        self.card = None              # the model of the shown segmentation (None: opened from a file)
        self.labels: List[LabelInfo] = []   # the structures of the shown segmentation
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
            "model_summary": "", "model_reason": "", "show_model_summary": False,
            "devices": device_choices(), "device": "auto",
            "methods": [MODEL_DEFAULT, *ENHANCEMENT_METHODS], "method": MODEL_DEFAULT, "strength": 1.0,
            "volume_name": "", "volume_loaded": False, "frame_count": 0, "frame": 1, "all_frames": True,
            "job_running": False, "job_progress": 0, "job_stage": "", "job_elapsed": "",
            "structures": [], "cardiac_rows": [], "has_result": False, "can_save_next_to_input": False,
            "click_structures": [], "click_structure": None, "click_mode": "", "click_count": 0,
            "download_name": "segmentation.seg.nrrd", "labels_download_name": "labels.nii.gz",
            "layout": AXIAL_LAYOUT, "layouts": IMAGE_LAYOUTS, "modality": "", "window_level": "",
            "presets": list(CT_PRESETS), "open_sections": ["open"], "upload_key": 0, "save_message": "",
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

    async def watch_data_folder(self) -> None:
        """Read the data folder again every few seconds, so that files added since the page opened
        are listed; the list is sent only when it changed (a new list resets a field being typed in)."""
        while True:
            await asyncio.sleep(DATA_FOLDER_POLL_S)
            files = await asyncio.to_thread(self.data_folder.image_files)
            if files != list(self.state.data_files):
                with self.state:
                    self.state.data_files = files

    def _chosen_data_file(self) -> Optional[Path]:
        try:
            return self.data_folder.resolve(self.state.data_path or "")
        except InputError as error:
            self._say(str(error), "error")
            return None

    def open_data_file(self) -> None:
        """Open the chosen file: an image, or a ``.seg.nrrd`` onto the image shown."""
        path = self._chosen_data_file()
        if path is None:
            return
        if path.name.lower().endswith(".seg.nrrd") or is_dicom_seg(path):
            self._open_segmentation(path, self.state.data_path)
        else:
            self._open(path, self.state.data_path, from_data_folder=True)

    def open_data_segmentation(self) -> None:
        """Open the chosen file (a ``.seg.nrrd`` or labelmap) as a segmentation of the image shown."""
        path = self._chosen_data_file()
        if path is not None:
            self._open_segmentation(path, self.state.data_path)

    def _refuse_upload(self, error: DinsegError) -> None:
        """Say why, and empty the upload field (a refused file's name is not left shown)."""
        self._say(str(error), "error")
        self.state.upload_key += 1

    def upload_begin(self, name: str, size: int):
        try:
            return self.uploads.begin(str(name), int(size))
        except InputError as error:
            self._refuse_upload(error)
            return None

    def upload_chunk(self, upload_id: str, chunk) -> bool:
        try:
            self.uploads.append(str(upload_id), bytes(chunk))
            return True
        except InputError as error:
            self._refuse_upload(error)
            return False

    def upload_end(self, upload_id: str) -> None:
        try:
            path = self.uploads.finish(str(upload_id))
        except InputError as error:
            self._refuse_upload(error)
            return
        if path.name.lower().endswith(".seg.nrrd") or is_dicom_seg(path):
            opened = self._open_segmentation(path, path.name)
        else:
            opened = self._open(path, path.name if path.is_file() else f"{path.name} (DICOM series)",
                                from_data_folder=False)
        if opened:
            self.state.data_path = None   # the data-folder field no longer names what is shown
        else:
            self.state.upload_key += 1

    def _open(self, path: Path, label: str, from_data_folder: bool) -> bool:
        """Read and check the image with the engine, then replace the scene's content with it."""
        from ...pipeline.segmenter import model_for
        from ...core.io import read_volume

        try:
            image = read_volume(path)
        except DinsegError as error:
            self._say(in_plain_words(str(error).replace(str(path), label)), "error")
            return False
        self._cancel_job()
        self._end_clicks()
        self.slicer_app.scene.Clear()
        self.logic.segmentation.forget_undo()
        undo_stack = self.slicer_app.segmentation_editor.undo_stack
        if undo_stack is not None:
            undo_stack.clear()   # nothing of the previous image can be undone or redone
        self.segmentation = self.segmentation_sequence = self.enhanced = self.card = None
        self.labels = []
        name = Path(label).name.split(".")[0] or "volume"
        self.volume, self.browser = add_image(self.slicer_app.scene, self.sequences_logic, image, name)
        self.image, self.input_path = image, (path if from_data_folder else None)
        card, reason = model_for(image)
        modality = (image.modality or card.modality or "").upper()
        self.volume.GetDisplayNode().AddObserver(vtkCommand.ModifiedEvent, self._on_window_level_changed)
        if modality == "CT":
            set_window_level(self.volume, *CT_PRESETS["abdomen"])
        else:
            auto_window_level(self.volume)
        self.state.update({
            "volume_name": label, "volume_loaded": True, "frame_count": image.frames if self.browser else 0,
            "frame": 1, "model": card.name, "model_reason": f"chosen for this image: {reason}",
            "structures": [], "cardiac_rows": [], "has_result": False, "can_save_next_to_input": False,
            "job_progress": 0, "job_stage": "", "job_elapsed": "", "modality": modality, "save_message": "",
            "layouts": IMAGE_LAYOUTS, "open_sections": ["model"],
        })
        self._show_layout(AXIAL_LAYOUT)
        self._set_pointer_mode()
        self._say(f"opened {label}: {' x '.join(str(n) for n in image.array.shape[::-1])} voxels", "success")
        return True

    def _open_segmentation(self, path: Path, label: str) -> bool:
        """Put a ``.seg.nrrd``, labelmap or DICOM SEG made on the shown image into the scene, ready to
        edit and save.

        The file must lie on the image's grid (same voxels, spacing, origin and directions; a DICOM
        SEG must reference the shown series' images); a labelmap's values mean the chosen model's
        structures.
        """
        from ...reports.segfile import read_labels

        if self.volume is None:
            self._say(f"{label}: open the image it was made on first, then the segmentation", "error")
            return False
        if self.browser is not None:
            self._say(f"{label}: a saved segmentation opens onto a 3D image; this image is a cine", "error")
            return False
        card = self.cards.get(self.state.model)
        try:
            if is_dicom_seg(path):
                labels, infos = read_dicom_seg(path, self.image, label)
                geometry = self.image.geometry   # the SEG references the series' own images
            else:
                labels, geometry, _frames, infos = read_labels(path, card.labels if card else [])
        except DinsegError as error:
            self._say(in_plain_words(str(error).replace(str(path), label)), "error")
            return False
        shape = self.image.array.shape
        if labels.shape != shape or not geometry.matches(self.image.geometry, tolerance=1e-3):
            sizes = [" x ".join(map(str, array_shape[::-1])) for array_shape in (labels.shape, shape)]
            self._say(f"{label}: lies on another grid than {self.state.volume_name} ({sizes[0]} vs {sizes[1]} voxels, "
                      "or another position); open the image it was made on", "error")
            return False
        self._cancel_job()
        self._end_clicks()
        if self.segmentation is not None:
            self.slicer_app.scene.RemoveNode(self.segmentation)
        infos = display_infos(infos)
        node = self.logic.segmentation.labels_to_segmentation(labels, self.volume, infos,
                                                              name=Path(label).name.split(".")[0])
        self.segmentation_sequence = None
        self._show_result(node, infos, card=None)
        self._say(f"opened {label} onto {self.state.volume_name}: {len(infos)} structures, ready to edit and save",
                  "success")
        return True

    @change("model")
    def _on_model(self, model, **_):
        card = self.cards.get(model)
        self.state.model_summary = card_summary(card) if card else ""

    @change("frame")
    def _on_frame(self, frame, **_):
        if self.browser is not None:
            self.browser.SetSelectedItemNumber(max(int(frame) - 1, 0))
            self._schedule_structure_table()

    @change("layout")
    def _on_layout(self, layout, **_):
        if layout != self.layout_manager.layout_id:
            self._show_layout(layout)

    # -- views ---------------------------------------------------------------------------------
    def _show_layout(self, layout: str) -> None:
        """Show a layout: Yellow is the sagittal view, or the enhanced image beside the original; every
        slice view fitted to the whole image; surfaces in 3D where a 3D view is shown."""
        self.layout_manager.set_layout(layout)
        self.state.layout = layout
        if self.volume is None:
            return
        if layout == SIDE_BY_SIDE_LAYOUT and self.enhanced is not None:
            self.logic.preview.show_side_by_side(self.volume, self.enhanced)
        else:
            for view in self.slicer_app.view_manager.get_slice_views():
                if view.get_singleton_tag() == "Yellow":
                    view.set_orientation("Sagittal")
                view.set_background_volume_id(self.volume.GetID())
        if layout in (THREE_D_LAYOUT, FOUR_UP_LAYOUT) and self.segmentation is not None:
            self.logic.segmentation.show_3d(self.segmentation)
        self._link_cursors()
        self._fit_views()

    def _link_cursors(self) -> None:
        """Shift + mouse move puts a small cross at that point in every view and moves the other
        planes through it (Slicer's crosshair)."""
        crosshair = self.slicer_app.scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        if crosshair is not None:
            crosshair.SetCrosshairMode(crosshair.ShowSmallBasic)
            crosshair.SetCrosshairBehavior(crosshair.OffsetJumpSlice)

    def _fit_views(self) -> None:
        """Every slice view shows the whole image; 3D views look at all of it."""
        for view in self.slicer_app.view_manager.get_slice_views():
            view.fit_view_to_content()   # (reset_view would also reset the orientation)
            view.schedule_render()
        for view in self.slicer_app.view_manager.get_threed_views():
            view.reset_view()
        self._update_annotations()

    def _schedule_fit(self, *_args) -> None:
        """Fit again once the browser has sized the views (a new layout or window size): 0.2 s after
        the last view was resized."""
        self._last_resize = time.monotonic()
        if self._fit_task is not None and not self._fit_task.done():
            return

        async def later():
            while time.monotonic() - self._last_resize < FIT_DELAY_S:
                await asyncio.sleep(FIT_DELAY_S)
            with self.state:
                self._fit_views()

        self._fit_task = create_task(later())

    def _slice_view_ui(self, server, view_id: str, view) -> None:
        """trame-slicer's slice view controls, with orientation letters, slice number and window/level."""
        create_vertical_slice_view_gutter_ui(server, view_id, view)
        key = f"annotation_{view_id}"
        self.state.setdefault(key, {})
        text = "position: absolute; color: #f5f5dc; font: 13px sans-serif; text-shadow: 0 0 3px #000;"
        with html.Div(style="position: absolute; inset: 0; pointer-events: none;", classes="dinseg-annotation",
                      raw_attrs=[f'data-view="{view_id}"']):
            for side, place in (("left", "left: 44px; top: 50%;"), ("right", "right: 8px; top: 50%;"),
                                ("top", "top: 4px; left: 50%;"), ("bottom", "bottom: 44px; left: 50%;")):
                html.Div(f"{{{{ {key}.{side} }}}}", classes=f"dinseg-side-{side}", style=text + place)
            html.Div(f"{{{{ {key}.slice }}}}", classes="dinseg-slice-number", style=text + "top: 4px; right: 8px;")
            html.Div(f"{{{{ {key}.window }}}}", classes="dinseg-view-window", style=text + "bottom: 44px; right: 8px;")
        view.modified.connect(self._annotate)
        view.interactor().AddObserver(vtkCommand.WindowResizeEvent, self._schedule_fit)

    def _annotate(self, view) -> None:
        """The view's orientation letters, slice number and window/level in its overlay."""
        key = f"annotation_{self.server.translator.translate_key(view.get_singleton_tag())}"
        volume_id = view.get_background_volume_id()
        volume = self.slicer_app.scene.GetNodeByID(volume_id) if volume_id else None
        if volume is None or view.get_view_node() is None:
            annotation = {}
        else:
            slice_node = view.get_view_node()
            number = slice_number(slice_node, volume)
            annotation = {**orientation_letters(slice_node), "window": window_level_text(volume),
                          "slice": slice_node.GetOrientation() + (f" {number[0]} / {number[1]}" if number else "")}
        if self.state[key] != annotation:
            with self.state:
                self.state[key] = annotation

    def _update_annotations(self) -> None:
        for view in self.slicer_app.view_manager.get_slice_views():
            self._annotate(view)

    # -- window/level ------------------------------------------------------------------------
    def _on_window_level_changed(self, *_args) -> None:
        with self.state:
            self.state.window_level = window_level_text(self.volume)
            self._update_annotations()

    def window_level_preset(self, name: str) -> None:
        """A CT window (abdomen, liver, lung, bone), or "auto" (from the image's histogram, for MR)."""
        if not self._need_volume():
            return
        if name == "auto":
            auto_window_level(self.volume)
        elif name in CT_PRESETS:
            set_window_level(self.volume, *CT_PRESETS[name])
        else:
            self._say(f"no window called {name!r}; there are {', '.join(CT_PRESETS)} and auto", "error")

    def _set_pointer_mode(self) -> None:
        """Left-drag in a slice view sets window/level (no effect active, no clicks being placed)."""
        interaction = self.slicer_app.markups_logic.interaction_node
        if interaction is not None:
            interaction.SetCurrentInteractionMode(interaction.AdjustWindowLevel)

    def _on_effect_changed(self, _name: str) -> None:
        """An effect takes left-drag for itself; without one, left-drag is window/level again."""
        if not isinstance(self.slicer_app.segmentation_editor.active_effect, (type(None), SegmentationEffectNoTool)):
            interaction = self.slicer_app.markups_logic.interaction_node
            if interaction is not None and interaction.GetCurrentInteractionMode() == interaction.AdjustWindowLevel:
                interaction.SetCurrentInteractionMode(interaction.ViewTransform)
        elif not self.state.click_mode:
            self._set_pointer_mode()

    def put_down_effect(self) -> None:
        """Back on the DIN panel, no effect stays active: a click there must not paint."""
        self.slicer_app.segmentation_editor.deactivate_effect()
        if not self.state.click_mode:
            self._set_pointer_mode()

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
        self.state.layouts = IMAGE_LAYOUTS + [SIDE_BY_SIDE_LAYOUT]
        self.state.open_sections = [name for name in self.state.open_sections if name != "enhance"]
        self._show_layout(SIDE_BY_SIDE_LAYOUT)
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
        self.state.update({"job_running": True, "job_progress": 0, "job_stage": stage_in_words("starting"),
                           "job_elapsed": ""})
        self._say(f"segmenting with {self.job.card.name} on {self.state.device}")
        create_task(self._follow_job(self.job))

    async def _follow_job(self, job) -> None:
        """Poll the child process from the event loop: the page stays live while it runs."""
        while job.poll():
            with self.state:
                self.state.job_progress = round(100 * job.fraction)
                self.state.job_stage = stage_in_words(job.stage)
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
            self._show_result(result, job.card.labels, job.card)
            self.state.job_stage = "done"
            quality = getattr(job.runner, "quality", None) or {}
            if quality.get("status") == "review" and quality.get("problems"):  # reports.quality: what to check
                self._say(f"segmented with {job.card.name}; check before use: " + "; ".join(quality["problems"]),
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

    def _show_result(self, result, labels: Sequence[LabelInfo], card) -> None:
        """Hand the segmentation to the Segment Editor, fill the tables, show surfaces where a 3D view is.

        card: the model that made it, or None for a segmentation opened from a file."""
        self.card, self.labels = card, list(labels)
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
        if self.state.layout in (THREE_D_LAYOUT, FOUR_UP_LAYOUT):
            self.logic.segmentation.show_3d(self.segmentation)
            for view in self.slicer_app.view_manager.get_threed_views():
                view.reset_view()
        names = [label.name for label in self.labels]
        self.state.update({"click_structures": names, "click_structure": names[0] if names else None,
                           "open_sections": [], "save_message": ""})

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
            self._set_pointer_mode()
            return
        clicks = self.logic.clicks
        info = next(label for label in self.labels if label.name == self.state.click_structure)
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
            self._set_pointer_mode()
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
        return segmentation_to_labels(self.segmentation, self.volume, self.labels)

    def _update_structure_table(self) -> None:
        """Each structure's voxels, volume and mean intensity in the shown frame (the engine's statistics)."""
        from ...reports.statistics import structure_statistics

        if self.segmentation is None:
            return
        image = volume_to_image(self.volume)
        rows = structure_statistics(self._current_labels(), image.array, image.geometry, self.labels)
        colours = {info.name: hex_color(info.color) for info in self.labels}
        self.state.structures = [
            {"name": row["structure"], "color": colours.get(row["structure"], "#888888"), "voxels": row["voxels"],
             "volume_ml": f"{row['volume_ml']:.1f}", "mean": "" if row["mean"] is None else f"{row['mean']:.0f}"}
            for row in rows]

    def _update_cardiac_function(self) -> None:
        """The cardiac function table, for a cine segmented in all its frames by a cardiac model."""
        self.state.cardiac_rows = []
        if self.segmentation_sequence is None or self.segmentation_sequence.GetNumberOfDataNodes() < 2:
            return
        if self.card is None or not self.card.is_cardiac:
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
        self.state.save_message = f"wrote {target.relative_to(self.data_folder.root).as_posix()} in the data folder"
        self._say(self.state.save_message, "success")

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
            client.Style(PANEL_STYLE)
            with layout.appbar:
                self._build_display_bar()
                v3.VChip("shared session", id="dinseg-shared-session", size="small", color="warning",
                         variant="tonal", classes="mx-2", title=SHARED_SESSION_NOTE)
            with layout.toolbar:
                self._tool_button(layout, "DinPanel", "mdi-brain", "DIN segmentation",
                                  f"trigger('{self.server.controller.trigger_name(self.put_down_effect)}')")
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

    def _build_display_bar(self) -> None:
        """Views and window/level, above the views: the layout, CT windows or auto, and the value."""
        with html.Div(v_if="volume_loaded", classes="d-flex align-center ga-1 ml-4", id="dinseg-display"):
            v3.VSelect(v_model=("layout",), items=("layouts",), density="compact", hide_details=True,
                       variant="outlined", id="dinseg-layout", style="width: 190px; max-width: 190px;",
                       prepend_inner_icon="mdi-view-grid-outline")
            html.Span("W/L", classes="text-caption ml-2", title="window/level: left-drag in a view, or a preset")
            v3.VBtn("{{ name }}", v_for="name in presets", key="name", v_if="modality === 'CT'", size="x-small",
                    variant="tonal", raw_attrs=[':data-preset="name"'], click=(self.window_level_preset, "[name]"))
            v3.VBtn("auto", size="x-small", variant="tonal", raw_attrs=['data-preset="auto"'],
                    click=(self.window_level_preset, "['auto']"))
            html.Span("{{ window_level }}", classes="text-caption ml-1", id="dinseg-window-level",
                      style="min-width: 90px;")

    @staticmethod
    def _tool_button(layout, tool: str, icon: str, name: str, also: str = "") -> None:
        names = layout.typed_state.name
        ControlButton(icon=icon, name=name, classes="mt-1", active=(f"{names.active_tool} === '{tool}'",),
                      click=f"{names.active_tool} = '{tool}'; {names.is_drawer_visible} = true; {also}")

    def _build_panel(self) -> None:
        ctrl = self.server.controller
        # the last message stays at the top of the panel, in sight whatever the panel shows below
        with html.Div(style="position: sticky; top: 0; z-index: 3;", classes="bg-surface"):
            v3.VAlert(v_if="message", text=("message",), type=("message_type",), density="compact", icon=False,
                      id="dinseg-message", classes="mb-1 text-caption",
                      style="word-break: break-word; max-height: max(96px, calc(100vh - 624px)); overflow-y: auto;",
                      closable=True, click_close="message = ''")
        with v3.VExpansionPanels(v_model=("open_sections",), multiple=True, variant="accordion",
                                 id="dinseg-sections"):
            with self._section("open", "1. Open an image", "{{ volume_name }}"):
                v3.VFileInput(label="Upload (NIfTI, NRRD, MHA, zipped DICOM, .seg.nrrd)", density="compact",
                              id="dinseg-upload", hide_details=True, prepend_icon="mdi-upload", key=("upload_key",),
                              change=(f"window.dinsegUpload($event.target.files[0], {{begin: '{ctrl.trigger_name(self.upload_begin)}', "
                                      f"chunk: '{ctrl.trigger_name(self.upload_chunk)}', "
                                      f"end: '{ctrl.trigger_name(self.upload_end)}'}}); $event.target.value = null"))
                v3.VCombobox(v_model=("data_path",), items=("data_files",), label="file in the data folder",
                             density="compact", hide_details=True, id="dinseg-data-path", classes="mt-2")
                with html.Div(classes="d-flex flex-wrap ga-1 mt-1"):
                    v3.VBtn("Open", click=self.open_data_file, id="dinseg-open-data", size="small")
                    v3.VBtn("Open as segmentation", click=self.open_data_segmentation, id="dinseg-open-segmentation",
                            size="small", disabled=("!volume_loaded",),
                            title="a .seg.nrrd, labelmap or DICOM SEG made on the image shown: edit it, save it again")
                    v3.VBtn("Bundled CT", click=self.load_sample, id="dinseg-load-sample", size="small",
                            variant="tonal")
                html.Div("{{ shared_session_note }}", classes="text-caption text-medium-emphasis mt-1")
            with self._section("model", "2. Model and device", "{{ model }}"):
                with html.Div(classes="d-flex align-center"):
                    v3.VSelect(v_model=("model",), items=("models",), label="model", density="compact",
                               hide_details=True, id="dinseg-model")
                    v3.VBtn(icon="mdi-information-outline", variant="text", size="small", id="dinseg-model-info",
                            click="show_model_summary = !show_model_summary", title="about this model")
                html.Div("{{ model_summary }}", v_if="show_model_summary", classes="text-caption",
                         id="dinseg-model-summary")
                html.Div("{{ model_reason }}", classes="text-caption")
                v3.VSelect(v_model=("device",), items=("devices",), label="device", density="compact",
                           hide_details=True, classes="mt-2", id="dinseg-device")
            with self._section("enhance", "3. Enhancement preview", "{{ method }}"):
                v3.VSelect(v_model=("method",), items=("methods",), label="method", density="compact",
                           hide_details=True)
                v3.VSlider(v_model=("strength",), min=0, max=1, step=0.05, label="strength", density="compact",
                           hide_details=True, thumb_label=True)
                v3.VBtn("Preview enhancement", click=self.preview, disabled=("!volume_loaded",), size="small",
                        block=True, variant="tonal", id="dinseg-preview")
        # segment: always in sight
        v3.VCheckbox(v_if="frame_count > 1", v_model=("all_frames",), label="all frames", density="compact",
                     hide_details=True)
        v3.VSlider(v_if="frame_count > 1", v_model=("frame",), min=1, max=("frame_count",), step=1,
                   label="frame", thumb_label=True, density="compact", hide_details=True)
        v3.VBtn("Segment", v_if="!job_running", click=self.segment, disabled=("!volume_loaded",), color="primary",
                block=True, id="dinseg-segment", classes="mt-2")
        v3.VBtn("Cancel", v_else=True, click=self.cancel, color="error", block=True, id="dinseg-cancel",
                classes="mt-2")
        v3.VProgressLinear(v_if="job_running", model_value=("job_progress",), height=6, classes="mt-1")
        html.Div("{{ job_stage }} {{ job_elapsed }}", classes="text-caption", id="dinseg-job-status")
        # results: the structures table is the legend of the colours in the views
        with v3.VTable(v_if="structures.length", density="compact", classes="mt-1 text-caption dinseg-legend",
                       id="dinseg-structures", height=("structures.length > 8 ? 260 : undefined",)):
            with html.Thead():
                with html.Tr():
                    for title in ("structure", "voxels", "mL", "mean"):
                        html.Th(title)
            with html.Tbody():
                with html.Tr(v_for="row in structures", key="row.name", raw_attrs=[':data-structure="row.name"']):
                    with html.Td():
                        html.Span(classes="dinseg-swatch", raw_attrs=[':data-color="row.color"'],
                                  style=("{display: 'inline-block', width: '12px', height: '12px', "
                                         "marginRight: '4px', verticalAlign: 'middle', background: row.color}",))
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
            v3.VSelect(v_model=("click_structure",), items=("click_structures",), label="correct with clicks:",
                       density="compact", hide_details=True, id="dinseg-click-structure", classes="mt-2")
            with html.Div(classes="d-flex flex-wrap ga-1 mt-1"):
                v3.VBtn("+ add", click=(self.click_mode, "['+']"), size="small", id="dinseg-click-positive",
                        color=("click_mode === '+' ? 'success' : undefined",))
                v3.VBtn("- remove", click=(self.click_mode, "['-']"), size="small", id="dinseg-click-negative",
                        color=("click_mode === '-' ? 'error' : undefined",))
                v3.VBtn("undo click", click=self.undo_click, size="small", disabled=("!click_count",),
                        id="dinseg-click-undo")
                v3.VBtn("done", click=self.end_clicks, size="small", id="dinseg-click-done")
        # save
        with html.Div(classes="d-flex flex-wrap ga-1 mt-2", id="dinseg-save"):
            v3.VBtn(".seg.nrrd", disabled=("!has_result",), size="small", id="dinseg-download-seg",
                    prepend_icon="mdi-download",
                    click=f"utils.download(download_name, trigger('{ctrl.trigger_name(self.download_segmentation)}'), "
                          "'application/octet-stream')")
            v3.VBtn("labelmap", disabled=("!has_result",), size="small", id="dinseg-download-labels",
                    prepend_icon="mdi-download",
                    click=f"utils.download(labels_download_name, trigger('{ctrl.trigger_name(self.download_labels)}'), "
                          "'application/octet-stream')")
            v3.VBtn("beside the input", disabled=("!can_save_next_to_input",), size="small", id="dinseg-save-next",
                    prepend_icon="mdi-content-save", click=self.save_next_to_input)
        html.Div("{{ save_message }}", v_if="save_message", classes="text-caption text-success",
                 id="dinseg-save-message")

    @staticmethod
    @contextmanager
    def _section(value: str, title: str, summary: str):
        """A collapsible section of the panel; its summary shows when it is closed."""
        with v3.VExpansionPanel(value=value, raw_attrs=[f'data-section="{value}"']):
            with v3.VExpansionPanelTitle(classes="py-1 text-subtitle-2", style="min-height: 36px;"):
                html.Span(title)
                html.Span(summary, v_if=f"!open_sections.includes('{value}')",
                          classes="text-caption text-medium-emphasis ml-2 text-truncate")
            with v3.VExpansionPanelText():
                yield


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
        server.controller.on_server_ready.add(lambda **_: create_task(app.watch_data_folder()))
        server.start(host=host, port=port, open_browser=False, show_connection_info=False, timeout=0)
    finally:
        if app is not None:
            app._cancel_job()
            app.worker.close()
        uploads.close()
    return 0
