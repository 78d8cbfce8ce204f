"""``dinseg web`` in a real browser: Playwright driving Debian's chromium against a real server.

The server is ``python -m dinseg.apps.cli web`` in a child process (trame-slicer over slicer-core,
the segmentation in its own child process, as users run it); the page is read and clicked as a
user would. Nothing is mocked. The browser tests skip, with the reason, where trame-slicer,
Playwright or a chromium executable is missing (``pip install -e ".[web]"``; Debian: ``apt-get
install chromium``). Set DINSEG_WEB_SCREENSHOT=PATH to keep the page's picture with the segmentation.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT, SAMPLE_CT

from dinseg.core.errors import InputError
from dinseg.apps.web.files import DataFolder, UploadArea

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
MISSING = [name for name, found in (("trame-slicer", importlib.util.find_spec("trame_slicer")),
                                    ("playwright", importlib.util.find_spec("playwright")),
                                    ("a chromium executable", CHROMIUM)) if not found]
needs_browser = pytest.mark.skipif(bool(MISSING), reason=f"the browser tests need {', '.join(MISSING)} "
                                                         "(pip install -e '.[web]'; apt-get install chromium)")
#: one thread everywhere: the server's segmentation and `dinseg segment` must compute alike
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT / "DINSegmentation")}
UPLOAD_LIMIT_MB = 4  # the bundled CT (2.2 MB) fits, a 5 MB file does not


# ------------------------------------------------------------------------------------------
# paths and uploads (no browser)
# ------------------------------------------------------------------------------------------
@pytest.fixture
def data_folder(tmp_path):
    data = tmp_path / "data"
    (data / "cases").mkdir(parents=True)
    shutil.copy(SAMPLE_CT, data / "cases" / "ct.nii.gz")
    (data / "corrupt.nii.gz").write_bytes(b"this is not an image" * 100)
    outside = tmp_path / "outside.nii.gz"
    shutil.copy(SAMPLE_CT, outside)
    (data / "link_out.nii.gz").symlink_to(outside)
    return data


def test_data_folder_refuses_paths_that_leave_it(data_folder, tmp_path):
    folder = DataFolder(data_folder)
    assert folder.resolve("cases/ct.nii.gz") == (data_folder / "cases" / "ct.nii.gz").resolve()
    for path in ("../outside.nii.gz", str(tmp_path / "outside.nii.gz"), "link_out.nii.gz", "cases/../../outside.nii.gz"):
        with pytest.raises(InputError, match="is outside the data folder"):
            folder.resolve(path)
    with pytest.raises(InputError, match="no such file"):
        folder.resolve("missing.nii.gz")
    assert folder.image_files() == ["cases/ct.nii.gz", "corrupt.nii.gz"], "links out of the folder are not listed"
    with pytest.raises(InputError, match="not in the data folder"):
        folder.writable_target(tmp_path / "elsewhere.seg.nrrd")


def test_upload_limit_and_zip_members_that_leave_the_folder(tmp_path):
    import zipfile

    uploads = UploadArea(max_bytes=1000, temp_root=str(tmp_path))
    with pytest.raises(InputError, match="more than this server accepts"):
        uploads.begin("big.nii.gz", 1001)
    upload = uploads.begin("../../escape.nii.gz", 900)
    uploads.append(upload, b"x" * 900)
    with pytest.raises(InputError, match="more than this server accepts"):
        uploads.append(upload, b"x" * 200)   # a client that lied about the size
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("../../evil.dcm", b"x" * 10)
    upload = uploads.begin("evil.zip", archive.stat().st_size)
    uploads.append(upload, archive.read_bytes())
    with pytest.raises(InputError, match="points outside the archive"):
        uploads.finish(upload)
    assert not list(tmp_path.rglob("escape.nii.gz")) and not list(tmp_path.rglob("evil.dcm"))
    uploads.close()
    assert not uploads.folder.exists()


def test_cli_without_the_web_extra_says_what_to_install():
    code = ("import sys; sys.modules['trame_slicer'] = None; import importlib.util as u; "
            "find = u.find_spec; u.find_spec = lambda name, *a: None if name == 'trame_slicer' else find(name, *a); "
            "from dinseg.apps.cli import main; sys.exit(main(['web']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == "dinseg: error: the web front end needs: pip install 'dinseg[web]'"


def test_the_rest_of_the_cli_never_imports_the_web_stack():
    code = ("import sys; from dinseg.apps.cli import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('trame', 'trame_slicer', 'vtk', 'vtkmodules', "
            "'slicer', 'dinseg') and m.startswith(('trame', 'vtk', 'slicer', 'dinseg.apps.web'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------
# the whole user flow in chromium
# ------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _seg_nrrd_counts(path) -> dict:
    import slicerio

    segmentation = slicerio.read_segmentation(str(path))
    return {segment["name"]: int(slicerio.segment_mask(segmentation, segment).sum())
            for segment in segmentation["segments"]}


def _page_counts(page) -> dict:
    return {row.get_attribute("data-structure"): int(row.query_selector("td.voxels").inner_text())
            for row in page.query_selector_all("#dinseg-structures tr[data-structure]")}


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _expect_message(page, text: str) -> None:
    try:
        page.wait_for_selector(f"#dinseg-message:has-text({text!r})", timeout=30000)
    except Exception:
        shown = page.query_selector("#dinseg-message")
        raise AssertionError(f"no message {text!r}; the page says {shown.inner_text() if shown else 'nothing'!r}")


@needs_browser
def test_segment_correct_and_save_in_the_browser(data_folder, tmp_path):
    import SimpleITK as sitk
    import slicerio
    from playwright.sync_api import sync_playwright

    server_temp = tmp_path / "server-temp"
    server_temp.mkdir()
    port = _free_port()
    started = time.monotonic()
    server = subprocess.Popen(
        [sys.executable, "-m", "dinseg.apps.cli", "web", "--port", str(port), "--data", str(data_folder),
         "--max-upload-mb", str(UPLOAD_LIMIT_MB)],
        env={**ENV, "TMPDIR": str(server_temp)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)
            _wait_for(lambda: _page_opens(page, f"http://127.0.0.1:{port}/"), 60, "the page")
            assert "shared session" in page.inner_text("#dinseg-shared-session").lower()

            # open the bundled CT: the first image
            page.click("#dinseg-load-sample")
            _expect_message(page, "opened abdomen-ct")
            page.wait_for_function("document.querySelector('main img.image-display-area')?.naturalWidth > 0")
            first_image = time.monotonic() - started

            # preview: original and enhanced side by side
            page.click("#dinseg-preview")
            _expect_message(page, "left: original")
            _wait_for(lambda: len(page.query_selector_all("main img.image-display-area")) == 2, 30, "two views")

            # segment in the background, against `dinseg segment` on the same file
            clicked = time.monotonic()
            page.click("#dinseg-segment")
            page.wait_for_selector("#dinseg-cancel", timeout=10000)   # the page stays live while it runs
            page.wait_for_selector("#dinseg-structures", timeout=180000)
            web_latency = time.monotonic() - clicked
            segmented = _page_counts(page)
            cli_started = time.monotonic()
            reference = tmp_path / "cli.seg.nrrd"
            subprocess.run([sys.executable, "-m", "dinseg.apps.cli", "segment", "sample:abdomen-ct", "-o", str(reference)],
                           env=ENV, check=True, capture_output=True, timeout=300)
            cli_latency = time.monotonic() - cli_started
            expected = _seg_nrrd_counts(reference)
            assert segmented == expected and sum(expected.values()) > 0
            page.wait_for_timeout(1000)
            if os.environ.get("DINSEG_WEB_SCREENSHOT"):
                page.screenshot(path=os.environ["DINSEG_WEB_SCREENSHOT"])

            # correct: one paint stroke grows the active (first) segment, undo brings the counts back
            page.click("button:has(i.mdi-brush)")
            active = page.query_selector("#dinseg-structures tr[data-structure]").get_attribute("data-structure")
            views = page.query_selector_all("main img.image-display-area")
            box = views[0].bounding_box()
            x, y = box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.3
            page.mouse.move(x, y)
            page.mouse.down()
            for step in range(1, 11):
                page.mouse.move(x + 8 * step, y + 3 * step)
                page.wait_for_timeout(30)
            page.mouse.up()
            painted = _wait_for(lambda: (lambda c: c if c.get(active, 0) > segmented[active] else None)(
                _page_counts(page)), 30, f"{active} to grow after the stroke")
            assert painted[active] > segmented[active]
            page.click("button:has(i.mdi-undo)")
            _wait_for(lambda: _page_counts(page) == segmented, 30, "undo to restore every count")

            # save: the downloaded .seg.nrrd holds the segmentation
            with page.expect_download(timeout=60000) as download:
                page.click("#dinseg-download-seg")
            saved = tmp_path / download.value.suggested_filename
            download.value.save_as(saved)
            assert saved.name.endswith(".seg.nrrd")
            assert _seg_nrrd_counts(saved) == expected
            with page.expect_download(timeout=60000) as download:
                page.click("#dinseg-download-labels")
            labelmap = tmp_path / download.value.suggested_filename
            download.value.save_as(labelmap)
            labels = sitk.GetArrayFromImage(sitk.ReadImage(str(labelmap)))
            infos = slicerio.read_segmentation(str(reference))["segments"]
            assert {info["name"]: int((labels == info["labelValue"]).sum()) for info in infos} == expected

            # bad input: a message in the page, the server keeps running, the scene is kept
            page.fill("#dinseg-data-path", "../outside.nii.gz")
            page.click("#dinseg-open-data")
            _expect_message(page, "is outside the data folder")
            page.fill("#dinseg-data-path", "link_out.nii.gz")
            page.click("#dinseg-open-data")
            _expect_message(page, "link_out.nii.gz: is outside the data folder")
            page.fill("#dinseg-data-path", "corrupt.nii.gz")
            page.click("#dinseg-open-data")
            _expect_message(page, "corrupt.nii.gz: cannot read this image")
            big = tmp_path / "big.nrrd"
            big.write_bytes(os.urandom((UPLOAD_LIMIT_MB + 1) * 1000 * 1000))
            page.set_input_files("input[type=file]", str(big))
            _expect_message(page, "big.nrrd: is 5.0 MB, more than this server accepts (4.0 MB")
            page.set_input_files("input[type=file]", str(data_folder / "corrupt.nii.gz"))
            _expect_message(page, "corrupt.nii.gz: cannot read this image")
            assert _page_counts(page) == expected, "a refused input leaves the scene as it was"
            assert sorted(p.name for p in data_folder.rglob("*")) == ["cases", "corrupt.nii.gz", "ct.nii.gz",
                                                                      "link_out.nii.gz"]

            # an image of the data folder: its result is written next to it
            page.fill("#dinseg-data-path", "cases/ct.nii.gz")
            page.click("#dinseg-open-data")
            _expect_message(page, "opened cases/ct.nii.gz")
            page.click("#dinseg-segment")
            page.wait_for_selector("#dinseg-structures", timeout=180000)
            page.click("#dinseg-save-next")
            _expect_message(page, "wrote cases/ct.seg.nrrd in the data folder")
            assert _seg_nrrd_counts(data_folder / "cases" / "ct.seg.nrrd") == expected
            browser.close()
        print(f"\ndinseg web: first image {first_image:.1f} s after start; Segment {web_latency:.1f} s in the "
              f"page, `dinseg segment` {cli_latency:.1f} s: ratio {web_latency / cli_latency:.2f}")
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=30)[0]
    assert server.returncode is not None
    assert not list(server_temp.iterdir()), f"temporary files left: {list(server_temp.iterdir())}\n{output[-2000:]}"


def _page_opens(page, url: str) -> bool:
    try:
        page.goto(url)
        page.wait_for_selector("#dinseg-load-sample", timeout=5000)
        return True
    except Exception:  # the server is still starting
        return False
