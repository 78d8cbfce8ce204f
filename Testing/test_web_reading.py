"""Reading a result in ``dinseg web`` (issue 32), in chromium at 1600 x 1000 and 1280 x 720.

One server and one browser for the whole module; the tests run in order on the shared scene, as a
radiologist would: open a CT, window it, segment, look at it in four-up and 3D, compare original
and enhanced, save, reopen the saved file and keep editing, open a cine frame's segmentation.
Pixels are checked where pixels are the point: the segment colours in a screenshot and the field of
view of the two side-by-side views. Set DINSEG_WEB_SCREENSHOT=PATH to keep the four-up page's picture
(docs/web.md shows it).
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import signal

import numpy as np
import pytest

from cielab import cielab
from conftest import SAMPLE_CT
from test_web import (CHROMIUM, TOKEN, _drag, _expect_message, _page_counts, _page_opens, _seg_nrrd_counts,
                      _start_web, _wait_for, needs_browser, open_section)

from dinseg.core.colors import STRUCTURE_COLORS, hex_color

#: the smallest CIELAB distance (delta E 1976) between two cardiac segments as the page shows them
CARDIAC_MIN_DELTA_E = 20.0
#: the cine frame's label rings, in voxels from the centre: left ventricle, myocardium, right ventricle
RINGS = {"left ventricle": (0, 8), "myocardium": (8, 13), "right ventricle": (16, 22)}
SIZES = {"large": {"width": 1600, "height": 1000}, "small": {"width": 1280, "height": 720}}


def _write_cine_frame(folder):
    """A 64 x 64 x 6 MR-like frame (a left-right ramp) and its segmentation: three concentric rings."""
    from dinseg.core.geometry import Geometry
    from dinseg.core.io import write_image
    from dinseg.core.terminology import ACDC_STRUCTURES, label_infos_for
    from dinseg.reports.segfile import write_segmentation

    geometry = Geometry(size=(64, 64, 6), spacing=(1.5, 1.5, 8.0), origin=(0.0, 0.0, 0.0))
    image = np.broadcast_to(np.linspace(50, 250, 64, dtype=np.float32), (6, 64, 64)).copy()
    y, x = np.mgrid[0:64, 0:64]
    radius = np.hypot(y - 31.5, x - 31.5)
    labels = np.zeros((6, 64, 64), np.uint8)
    infos = label_infos_for(ACDC_STRUCTURES)
    for info in infos:
        inner, outer = RINGS[info.name]
        labels[:, (radius >= inner) & (radius < outer)] = info.value
    write_image(folder / "frame.nii.gz", image, geometry)
    write_segmentation(folder / "frame.seg.nrrd", labels, geometry, infos)


def _write_dicom_series_and_seg(folder):
    """Four 32 x 32 slices of the CT as a DICOM series, and a DICOM SEG of it with the liver and spleen."""
    import SimpleITK as sitk

    from dinseg.apps.bench import write_dicom_series
    from dinseg.core.io import read_volume
    from dinseg.core.terminology import SYNAPSE_ORGANS, label_infos_for
    from dinseg.reports.dicomseg import write_dicom_seg

    write_dicom_series(sitk.ReadImage(str(SAMPLE_CT))[40:72, 40:72, 80:84], folder / "series")
    series = read_volume(folder / "series")
    labels = np.zeros(series.array.shape, np.uint8)
    labels[1:3, 4:20, 5:25] = SYNAPSE_ORGANS.index("liver") + 1
    labels[2, 22:30, 10:14] = SYNAPSE_ORGANS.index("spleen") + 1
    write_dicom_seg(folder / "seg.dcm", labels, series, label_infos_for(SYNAPSE_ORGANS), "test", "1")


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    data = tmp_path_factory.mktemp("reading") / "data"
    (data / "cases").mkdir(parents=True)
    (data / "heart").mkdir()
    shutil.copy(SAMPLE_CT, data / "cases" / "ct.nii.gz")
    (data / "corrupt.nii.gz").write_bytes(b"this is not an image" * 100)
    _write_cine_frame(data / "heart")
    _write_dicom_series_and_seg(data / "dicom")
    return data


@pytest.fixture(scope="module")
def pages(data_folder, tmp_path_factory):
    """One server; a page at 1600 x 1000 and one at 1280 x 720 (both see the one shared scene)."""
    from playwright.sync_api import sync_playwright

    port, server = _start_web(data_folder)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            opened = {}
            for name, viewport in SIZES.items():
                page = browser.new_page(viewport=viewport, accept_downloads=True)
                _wait_for(lambda: _page_opens(page, f"http://127.0.0.1:{port}/?token={TOKEN}"), 60, "the page")
                opened[name] = page
            yield opened
            browser.close()
    finally:
        running = server.poll() is None
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=30)[0]
    assert running, f"the server died:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]


def _screenshot(page, element) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an element as the page shows it."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(element.screenshot())).convert("RGB"))


def _views(page):
    return page.query_selector_all("main img.image-display-area")


def _choose_layout(page, name: str) -> None:
    page.click("#dinseg-display .v-select")
    page.click(f".v-overlay .v-list-item:has-text('{name}')")
    page.wait_for_function(f"document.querySelector('#dinseg-display .v-select')?.innerText.includes({name!r})")


def _type_path(page, path: str) -> None:
    """Type a data-folder path (the list that drops down while typing is closed again)."""
    open_section(page, "open")
    page.fill("#dinseg-data-path", path)
    page.keyboard.press("Escape")
    page.wait_for_timeout(200)


def _coloured(pixels: np.ndarray) -> np.ndarray:
    """Pixels of a segment: saturated colour (the scan is grey, the view's lettering near grey)."""
    pixels = pixels.astype(int)
    return pixels.max(axis=-1) - pixels.min(axis=-1) > 60


def _annotations(page) -> dict:
    found = {}
    for overlay in page.query_selector_all(".dinseg-annotation"):
        if overlay.bounding_box() is None:
            continue
        found[overlay.get_attribute("data-view")] = {
            part: overlay.query_selector(f".dinseg-{part}").inner_text().strip()
            for part in ("side-left", "side-right", "side-top", "side-bottom", "slice-number", "view-window")}
    return found


needs_trame = pytest.mark.skipif(importlib.util.find_spec("trame_slicer") is None, reason="needs trame-slicer")


@needs_trame
def test_the_first_stage_is_named_for_the_user():
    from dinseg.apps.web.app import stage_in_words

    assert stage_in_words("starting") == "reading the image, loading the model"
    assert stage_in_words("inference 3/10") == "inference 3/10"


@needs_trame
def test_segments_read_from_a_file_take_dinsegs_codes_and_colours():
    from dinseg.apps.web.app import display_infos
    from dinseg.core.colors import PALETTE
    from dinseg.core.terminology import GENERIC_STRUCTURE, KNOWN_STRUCTURES, LabelInfo

    read = [LabelInfo(value=1, name="liver", color=(128, 128, 128), type=GENERIC_STRUCTURE),
            LabelInfo(value=2, name="lesion", color=(128, 128, 128), type=GENERIC_STRUCTURE)]
    liver, lesion = display_infos(read)
    assert (liver.type, liver.color) == (KNOWN_STRUCTURES["liver"][0], STRUCTURE_COLORS["liver"])
    assert (lesion.type, lesion.color, lesion.value) == (GENERIC_STRUCTURE, PALETTE[1], 2)


@needs_trame
def test_orientation_letters_and_slice_numbers_of_the_standard_planes():
    import slicer

    from dinseg.apps.web.display import orientation_letters, slice_number
    from dinseg.core.geometry import Geometry
    from dinseg.core.io import ImageVolume
    from dinseg.slicer.convert import set_volume_voxels

    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)   # as Slicer's application logic does
    geometry = Geometry(size=(30, 20, 10), spacing=(1.0, 1.0, 2.0), origin=(5.0, -3.0, 7.0))
    image = ImageVolume(array=np.zeros((10, 20, 30), np.int16), geometry=geometry)
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    set_volume_voxels(volume, image.array, image.geometry.index_to_ras())
    expected = {"Axial": ("R", "L", "A", "P", 10), "Sagittal": ("A", "P", "S", "I", 30),
                "Coronal": ("R", "L", "S", "I", 20)}
    for orientation, (left, right, top, bottom, count) in expected.items():
        node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
        assert node.SetOrientation(orientation)
        node.JumpSliceByOffsetting(*(image.geometry.index_to_ras() @ np.array([14.0, 9.0, 4.0, 1.0]))[:3])
        assert orientation_letters(node) == {"left": left, "right": right, "top": top, "bottom": bottom}
        number, total = slice_number(node, volume)
        assert total == count and number == {10: 5, 30: 15, 20: 10}[count], (orientation, number)


@needs_trame
def test_a_dicom_seg_opens_onto_its_own_series_only(tmp_path):
    import SimpleITK as sitk

    from dinseg.apps.bench import write_dicom_series
    from dinseg.apps.web.dicom_seg import is_dicom_seg, read_dicom_seg
    from dinseg.core.errors import InputError
    from dinseg.core.io import read_volume
    from dinseg.core.terminology import label_infos_for
    from dinseg.reports.dicomseg import write_dicom_seg

    pytest.importorskip("highdicom")
    ct = sitk.ReadImage(str(SAMPLE_CT))
    write_dicom_series(ct[40:72, 40:72, 80:84], tmp_path / "series")
    write_dicom_series(ct[40:72, 40:72, 84:88], tmp_path / "other")
    series, other = read_volume(tmp_path / "series"), read_volume(tmp_path / "other")
    labels = np.zeros(series.array.shape, np.uint8)
    labels[1:3, 4:20, 5:25] = 5
    labels[2, 22:30, 10:14] = 7
    infos = label_infos_for(["aorta", "gallbladder", "left kidney", "right kidney", "liver", "pancreas", "spleen"])
    write_dicom_seg(tmp_path / "seg.dcm", labels, series, infos, "test", "1")
    assert is_dicom_seg(tmp_path / "seg.dcm") and not is_dicom_seg(tmp_path / "series")
    assert not is_dicom_seg(sorted((tmp_path / "series").iterdir())[0])
    read, segments = read_dicom_seg(tmp_path / "seg.dcm", series, "seg.dcm")
    names = {info.value: info.name for info in segments}
    assert {names[value]: int((read == value).sum()) for value in names} == {"liver": int((labels == 5).sum()),
                                                                             "spleen": int((labels == 7).sum())}
    for image, message in ((other, "seg.dcm: was made on another series than the image shown"),
                           (read_volume(SAMPLE_CT), "seg.dcm: a DICOM SEG opens onto the DICOM series it was made on")):
        with pytest.raises(InputError) as refused:
            read_dicom_seg(tmp_path / "seg.dcm", image, "seg.dcm")
        assert str(refused.value).startswith(message)


@needs_browser
def test_window_level_presets_and_left_drag(pages):
    page = pages["large"]
    page.click("#dinseg-load-sample")
    _expect_message(page, "opened abdomen-ct")
    _wait_for(lambda: page.inner_text("#dinseg-window-level") == "W 400 L 50", 20, "the abdomen window on a CT")
    page.click("[data-preset='lung']")
    _wait_for(lambda: page.inner_text("#dinseg-window-level") == "W 1500 L -600", 20, "the lung window")
    annotation = _annotations(page)["Red"]
    assert annotation["view-window"] == "W 1500 L -600", "the view shows the value too"
    box = _views(page)[0].bounding_box()
    x, y = box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5
    _drag(page, x, y, 12, 6)
    _wait_for(lambda: page.inner_text("#dinseg-window-level") != "W 1500 L -600", 20, "left-drag to change W/L")
    page.wait_for_timeout(500)
    page.click("[data-preset='abdomen']")
    _wait_for(lambda: page.inner_text("#dinseg-window-level") == "W 400 L 50", 20, "the abdomen window again")


@needs_browser
def test_segment_shows_distinct_colours_a_legend_planes_and_surfaces(pages):
    page = pages["large"]
    page.click("#dinseg-segment")
    stages = set()
    _wait_for(lambda: stages.add(page.inner_text("#dinseg-job-status")) or
              page.query_selector("#dinseg-structures"), 180, "the segmentation")
    assert not any(stage.strip().startswith("starting") for stage in stages), stages
    legend = {row.get_attribute("data-structure"): row.query_selector(".dinseg-swatch").get_attribute("data-color")
              for row in page.query_selector_all("#dinseg-structures tr[data-structure]")}
    assert legend == {name: hex_color(STRUCTURE_COLORS[name]) for name in legend} and len(legend) == 8
    assert len(set(legend.values())) == 8, "one colour per structure"

    _choose_layout(page, "Four-up")
    _wait_for(lambda: len(_views(page)) == 4, 30, "four views")
    page.wait_for_timeout(1500)
    annotations = _wait_for(lambda: (lambda found: found if len(found) == 3 else None)(_annotations(page)), 20,
                            "three annotated slice views")
    assert [annotations["Red"][f"side-{side}"] for side in ("left", "right", "top", "bottom")] == ["R", "L", "A", "P"]
    assert annotations["Green"]["side-top"] == "S" and annotations["Yellow"]["side-top"] == "S"
    numbers = {view: annotations[view]["slice-number"] for view in annotations}
    assert numbers["Red"].startswith("Axial ") and numbers["Red"].endswith(" / 112"), numbers
    assert numbers["Yellow"].startswith("Sagittal ") and numbers["Green"].startswith("Coronal "), numbers
    three_d = _screenshot(page, page.query_selector_all("main img.image-display-area")[-1])
    assert _coloured(three_d).mean() > 0.02, "the segments' surfaces are shown in 3D"

    # linked cursors: Shift + move in the axial view moves the sagittal and coronal planes through the point
    box = _views(page)[0].bounding_box()
    page.keyboard.down("Shift")
    for step in range(10):
        page.mouse.move(box["x"] + box["width"] * (0.3 + 0.02 * step), box["y"] + box["height"] * (0.3 + 0.02 * step))
        page.wait_for_timeout(40)
    page.keyboard.up("Shift")
    moved = _wait_for(lambda: (lambda now: now if now["Yellow"]["slice-number"] != numbers["Yellow"] and
                               now["Green"]["slice-number"] != numbers["Green"] else None)(_annotations(page)),
                      20, "the other planes to follow the cursor")
    assert moved["Red"]["slice-number"] == numbers["Red"]
    if os.environ.get("DINSEG_WEB_SCREENSHOT"):
        page.screenshot(path=os.environ["DINSEG_WEB_SCREENSHOT"])


@needs_browser
def test_original_and_enhanced_views_show_the_same_field_of_view(pages):
    page = pages["large"]
    open_section(page, "enhance")
    page.click("#dinseg-preview")
    _expect_message(page, "left: original")
    _wait_for(lambda: len(_views(page)) == 2, 30, "two views")
    page.wait_for_timeout(2000)
    boxes = []
    for view in _views(page):
        pixels = _screenshot(page, view).astype(int)   # the liver and pancreas (not the yellow cursor)
        segments = (pixels[..., 0] - pixels[..., 2] > 90) & (pixels[..., 0] - pixels[..., 1] > 50)
        rows, columns = np.flatnonzero(segments.any(axis=1)), np.flatnonzero(segments.any(axis=0))
        assert rows.size and columns.size, "the segments show in both views"
        boxes.append((rows[0], rows[-1], columns[0], columns[-1], segments.shape))
    (top, bottom, left, right, shape), other = boxes
    assert max(abs(a - b) for a, b in zip(boxes[0][:4], other[:4])) <= 3, boxes
    assert left > 2 and right < shape[1] - 3 and top > 2 and bottom < shape[0] - 3, "fitted to the whole image"


@needs_browser
@pytest.mark.parametrize("size", list(SIZES))
def test_the_panel_fits_the_window_with_segment_results_and_save_in_sight(pages, size):
    page = pages[size]
    page.wait_for_selector("#dinseg-structures", timeout=30000)
    height = SIZES[size]["height"]
    for selector in ("#dinseg-message", "#dinseg-segment", "#dinseg-structures", "#dinseg-download-seg",
                     "#dinseg-download-labels", "#dinseg-save-next", "#dinseg-display"):
        box = page.locator(selector).bounding_box()
        assert box is not None and 0 <= box["y"] and box["y"] + box["height"] <= height, (selector, box)
    assert page.evaluate("document.scrollingElement.scrollHeight") <= height


@needs_browser
def test_reopen_a_saved_segmentation_edit_and_save_it_again(pages, data_folder, tmp_path):
    page = pages["small"]
    segmented = _page_counts(page)
    for button, name in (("#dinseg-download-seg", "ct.seg.nrrd"), ("#dinseg-download-labels", "ct_labels.nii.gz")):
        with page.expect_download(timeout=60000) as download:
            page.click(button)
        download.value.save_as(data_folder / "cases" / name)

    open_section(page, "open")
    _type_path(page, "cases/ct.nii.gz")
    page.click("#dinseg-open-data")
    _expect_message(page, "opened cases/ct.nii.gz")
    assert not page.is_enabled("button:has(i.mdi-redo)") and not page.is_enabled("button:has(i.mdi-undo)")

    # the data-folder list is read again: the files saved since the page opened are offered
    open_section(page, "open")
    page.click("#dinseg-data-path")
    page.wait_for_selector(".v-overlay .v-list-item:has-text('cases/ct_labels.nii.gz')", timeout=10000)
    page.keyboard.press("Escape")

    # a typed .seg.nrrd opens as the segmentation of the image shown, not as an image
    _type_path(page, "cases/ct.seg.nrrd")
    page.click("#dinseg-open-data")
    _expect_message(page, "opened cases/ct.seg.nrrd onto cases/ct.nii.gz")
    assert _page_counts(page) == segmented
    assert page.evaluate("trame.state.get('volume_name')") == "cases/ct.nii.gz", "not opened as an image"

    # edit it: a paint stroke grows the first structure; then save it next to its image
    page.click("button:has(i.mdi-brush)")
    first = page.query_selector("#dinseg-structures tr[data-structure]").get_attribute("data-structure")
    box = _views(page)[0].bounding_box()
    x, y = box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.3
    _drag(page, x, y, 8, 3)
    edited = _wait_for(lambda: (lambda c: c if c.get(first, 0) > segmented[first] else None)(_page_counts(page)),
                       30, f"{first} to grow")
    page.click("button:has(i.mdi-brain)")   # back to the DIN panel: the brush is put down
    page.click("#dinseg-save-next")
    _expect_message(page, "wrote cases/ct.seg.nrrd in the data folder")
    assert page.locator("#dinseg-save-message").is_visible(), "the confirmation stands beside Save"
    assert _seg_nrrd_counts(data_folder / "cases" / "ct.seg.nrrd") == edited

    # back on the DIN panel, left-drag is window/level again, not paint
    before = page.inner_text("#dinseg-window-level")
    _drag(page, x, y, 10, 5)
    _wait_for(lambda: page.inner_text("#dinseg-window-level") != before, 20, "left-drag to set window/level")
    page.wait_for_timeout(500)
    assert _page_counts(page) == edited, "the drag painted"

    # a labelmap opens as the chosen model's structures
    open_section(page, "open")
    _type_path(page, "cases/ct_labels.nii.gz")
    page.click("#dinseg-open-segmentation")
    _expect_message(page, "opened cases/ct_labels.nii.gz onto cases/ct.nii.gz")
    assert _page_counts(page) == segmented


@needs_browser
def test_a_cine_frames_segments_have_distinct_colours_and_other_grids_are_refused(pages):
    page = pages["small"]
    open_section(page, "open")
    _type_path(page, "heart/frame.nii.gz")
    page.click("#dinseg-open-data")
    _expect_message(page, "opened heart/frame.nii.gz")
    assert not page.is_enabled("button:has(i.mdi-redo)"), "nothing of the CT can be redone on this image"
    open_section(page, "open")
    _type_path(page, "cases/ct.seg.nrrd")
    page.click("#dinseg-open-data")
    _expect_message(page, "cases/ct.seg.nrrd: lies on another grid than heart/frame.nii.gz")
    assert page.inner_text("#dinseg-message").count("\n") == 0

    _type_path(page, "heart/frame.seg.nrrd")
    page.click("#dinseg-open-data")
    _expect_message(page, "opened heart/frame.seg.nrrd onto heart/frame.nii.gz: 3 structures")
    page.wait_for_timeout(1500)
    view = _screenshot(page, _views(page)[0])
    inside = (view.astype(int).sum(axis=-1) > 30)
    rows, columns = np.flatnonzero(inside.mean(axis=1) > 0.3), np.flatnonzero(inside.mean(axis=0) > 0.3)
    centre_y, centre_x = (rows[0] + rows[-1]) / 2, (columns[0] + columns[-1]) / 2
    voxel = (columns[-1] - columns[0] + 1) / 64
    seen = {}
    for name, (inner, outer) in RINGS.items():
        y = int(round(centre_y - (inner + outer) / 2 * voxel))   # up the centre column: one grey level for all
        x = int(round(centre_x))
        seen[name] = view[y - 2:y + 3, x - 2:x + 3].reshape(-1, 3).mean(axis=0)
    lab = {name: cielab(rgb) for name, rgb in seen.items()}
    names = list(lab)
    distances = {(a, b): float(np.linalg.norm(lab[a] - lab[b])) for i, a in enumerate(names) for b in names[i + 1:]}
    assert min(distances.values()) >= CARDIAC_MIN_DELTA_E, (distances, seen)

    # a DICOM SEG opens onto its own series (typed like an image, it is not opened as one)
    _type_path(page, "dicom/seg.dcm")
    page.click("#dinseg-open-data")
    _expect_message(page, "dicom/seg.dcm: a DICOM SEG opens onto the DICOM series it was made on")
    _type_path(page, "dicom/series")
    page.click("#dinseg-open-data")
    _expect_message(page, "opened dicom/series")
    open_section(page, "open")
    _type_path(page, "dicom/seg.dcm")
    page.click("#dinseg-open-data")
    _expect_message(page, "opened dicom/seg.dcm onto dicom/series: 2 structures")
    assert set(_page_counts(page)) == {"liver", "spleen"}


@needs_browser
def test_small_items_in_the_users_words(pages, data_folder):
    page = pages["small"]
    open_section(page, "open")
    _type_path(page, "corrupt.nii.gz")
    page.click("#dinseg-open-data")
    _expect_message(page, "corrupt.nii.gz: cannot read this image: the file is cut short or damaged")

    # a refused upload leaves no name behind; an upload empties the data-folder field
    page.set_input_files("input[type=file]", str(data_folder / "corrupt.nii.gz"))
    _expect_message(page, "corrupt.nii.gz: cannot read this image: the file is cut short")
    _wait_for(lambda: "corrupt" not in page.inner_text("[data-section='open'] .v-file-input"), 10,
              "the refused file's name to go")
    _type_path(page, "cases/ct.nii.gz")
    page.set_input_files("input[type=file]", str(data_folder / "heart" / "frame.nii.gz"))
    _expect_message(page, "opened frame.nii.gz")
    _wait_for(lambda: not page.evaluate("trame.state.get('data_path')"), 10, "the data-folder field to empty")

    # the model's card is read on demand, beside the panel, not in a tooltip over the image
    open_section(page, "model")
    page.hover("[data-section='model'] .v-select")
    page.wait_for_timeout(500)
    assert page.query_selector("#dinseg-model-summary") is None
    assert not any(tip.is_visible() for tip in page.query_selector_all(".v-tooltip .v-overlay__content"))
    page.click("#dinseg-model-info")
    summary = page.locator("#dinseg-model-summary")
    summary.wait_for(state="visible", timeout=5000)
    views = _views(page)[0].bounding_box()
    box = summary.bounding_box()
    assert box["x"] + box["width"] <= views["x"], "the model's card covers the image"
    page.click("#dinseg-model-info")
