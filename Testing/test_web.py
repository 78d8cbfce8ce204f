"""``dinseg web`` in a real browser: Playwright driving Debian's chromium against a real server.

The server is ``python -m dinseg.apps.cli web`` in a child process (trame-slicer over slicer-core,
the segmentation in its own child process, as users run it); the page is read and clicked as a
user would. Nothing is mocked. The browser tests skip, with the reason, where trame-slicer,
Playwright or a chromium executable is missing (``pip install -e ".[web]"``; Debian: ``apt-get
install chromium``). The page's picture in docs/web.md comes from ``test_web_reading.py``.
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
#: the page's token for the servers these tests start (given through the environment, as scripts do)
TOKEN = "test-token-0123456789abcdefghij"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT / "DINSegmentation"),
       "DINSEG_WEB_TOKEN": TOKEN}
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


def test_a_sibling_folder_whose_name_starts_with_the_data_folders_is_outside(data_folder, tmp_path):
    """``data-private`` beside ``data`` shares its name as a prefix, not a parent: nothing in it may be
    opened, listed (through a link) or written."""
    sibling = tmp_path / f"{data_folder.name}-private"
    sibling.mkdir()
    shutil.copy(SAMPLE_CT, sibling / "secret.nii.gz")
    (data_folder / "cases" / "link_private.nii.gz").symlink_to(sibling / "secret.nii.gz")
    folder = DataFolder(data_folder)
    for path in (f"../{sibling.name}/secret.nii.gz", str(sibling / "secret.nii.gz"), "cases/link_private.nii.gz"):
        with pytest.raises(InputError, match="is outside the data folder"):
            folder.resolve(path)
    with pytest.raises(InputError, match="not in the data folder"):
        folder.writable_target(sibling / "secret.seg.nrrd")
    assert folder.image_files() == ["cases/ct.nii.gz", "corrupt.nii.gz"]
    inside = data_folder / "cases" / "ct.seg.nrrd"
    assert folder.writable_target(inside) == data_folder.resolve() / "cases" / "ct.seg.nrrd"


def test_zip_uploads_that_unpack_past_the_limit_or_hold_nothing_are_refused(tmp_path):
    import zipfile

    uploads = UploadArea(max_bytes=1_000_000, temp_root=str(tmp_path))

    def upload_zip(name, members):
        archive = tmp_path / name
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
            for member, data in members.items():
                if member.endswith("/"):
                    bundle.mkdir(member) if hasattr(bundle, "mkdir") else bundle.writestr(member, b"")
                else:
                    bundle.writestr(member, data)
        upload = uploads.begin(name, archive.stat().st_size)  # the upload itself fits easily
        uploads.append(upload, archive.read_bytes())
        return uploads.finish(upload)

    unpacked_files = lambda: sorted(p.relative_to(uploads.folder).as_posix()  # noqa: E731
                                    for p in uploads.folder.rglob("*") if p.is_file())
    with pytest.raises(InputError, match=r"bomb.zip: unpacks to 1\.0 MB, more than this server accepts \(1\.0 MB\)"):
        upload_zip("bomb.zip", {"series/1.dcm": b"\0" * 500_000, "series/2.dcm": b"\0" * 500_001})
    assert unpacked_files() == [], "a refused archive left files"
    series = upload_zip("series.zip", {"series/1.dcm": b"\0" * 500_000, "series/2.dcm": b"\0" * 500_000})
    assert unpacked_files() == ["upload-2/series/series/1.dcm", "upload-2/series/series/2.dcm"]
    assert series == uploads.folder / "upload-2" / "series"  # the limit itself is accepted
    for name, members in (("empty.zip", {}), ("folders.zip", {"series/": b"", "series/inner/": b""})):
        with pytest.raises(InputError, match=f"{name}: the archive is empty"):
            upload_zip(name, members)
    assert unpacked_files() == ["upload-2/series/series/1.dcm", "upload-2/series/series/2.dcm"]
    uploads.close()
    assert not uploads.folder.exists()


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


def test_data_folder_listing_and_its_one_line_refusals(tmp_path, monkeypatch):
    from dinseg.apps.web import files

    with pytest.raises(InputError) as missing:
        DataFolder(tmp_path / "nowhere")
    assert str(missing.value) == f"{tmp_path / 'nowhere'}: the data folder does not exist"
    data = tmp_path / "data"
    for name in ("a.txt", "b.nii.gz", "c.SEG.NRRD", "d.seg.nrrd", "E.NII.GZ", ".hidden/f.nii.gz", "g/h.mha",
                 "series.zip", "x.dcm"):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes(b"x")
    folder = DataFolder(data)
    assert folder.image_files() == ["E.NII.GZ", "b.nii.gz", "g/h.mha", "series.zip", "x.dcm"]
    for empty in ("", "   ", None):
        with pytest.raises(InputError) as refused:
            folder.resolve(empty)
        assert str(refused.value) == "no file chosen in the data folder"
    monkeypatch.setattr(files, "MAX_LISTED_FILES", 3)
    assert folder.image_files() == ["E.NII.GZ", "b.nii.gz", "series.zip"]  # a huge share is cut, still sorted


def test_uploads_by_size_name_and_id_with_their_messages(tmp_path):
    uploads = UploadArea(max_bytes=1_000_000, temp_root=str(tmp_path))
    assert uploads.folder.parent == tmp_path and uploads.folder.name.startswith("dinseg-web-")

    def refusal(call, *args) -> str:
        with pytest.raises(InputError) as refused:
            call(*args)
        return str(refused.value)

    assert refusal(uploads.begin, "big.nii.gz", 1_050_001) == \
        "big.nii.gz: is 1.1 MB, more than this server accepts (1.0 MB; dinseg web --max-upload-mb)"
    assert refusal(uploads.begin, "none.nii.gz", 0) == "none.nii.gz: the file is empty (0 bytes)"
    for name in ("..", ".", "/", "a/.."):
        assert refusal(uploads.begin, name, 10) == f"{name!r}: not a file name"
    one = uploads.begin("C:\\Users\\me\\ct.nii.gz", 1)   # a Windows path keeps its base name only
    uploads.append(one, b"x")
    assert uploads.finish(one) == uploads.folder / "upload-1" / "ct.nii.gz"  # refused names made no upload
    whole = uploads.begin("whole.nrrd", 1_000_000)   # exactly the limit is accepted, declared and sent
    uploads.append(whole, b"x" * 600_000)
    uploads.append(whole, b"x" * 400_000)
    assert uploads.finish(whole).stat().st_size == 1_000_000
    over = uploads.begin("over.nrrd", 10)
    uploads.append(over, b"x" * 999_999)
    assert refusal(uploads.append, over, b"xx") == \
        "over.nrrd: is more than this server accepts (1.0 MB; dinseg web --max-upload-mb)"
    gone = "this upload was not started or was already refused"
    assert refusal(uploads.append, over, b"x") == gone and refusal(uploads.finish, over) == gone
    assert refusal(uploads.append, "nope", b"x") == gone and refusal(uploads.finish, "nope") == gone
    uploads.discard("nope")  # unknown or already refused: nothing to do
    assert not list(uploads.folder.rglob("over.nrrd")), "a refused upload's bytes were kept"
    late = uploads.begin("late.nii.gz", 5)
    uploads.close()
    uploads.discard(late)    # a refusal after shutdown (the folder is gone): no error
    uploads.close()          # closing twice is harmless
    assert not uploads.folder.exists()


def test_zip_uploads_unpack_nested_series_and_refuse_what_is_not_a_zip(tmp_path):
    import zipfile

    uploads = UploadArea(max_bytes=1_000_000, temp_root=str(tmp_path))
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("study/series/deep/1.dcm", b"one")
    upload = uploads.begin(".zip", archive.stat().st_size)   # a name that is only the extension
    uploads.append(upload, archive.read_bytes())
    unpacked = uploads.finish(upload)
    assert unpacked.name == "series" and (unpacked / "study" / "series" / "deep" / "1.dcm").read_bytes() == b"one"
    assert not (unpacked.parent / ".zip").exists(), "the archive is removed once unpacked"
    upload = uploads.begin("broken.zip", 100)
    uploads.append(upload, b"PK not really a zip" * 5)
    with pytest.raises(InputError) as refused:
        uploads.finish(upload)
    assert str(refused.value) == "broken.zip: is not a readable zip archive"
    assert not list(uploads.folder.rglob("broken.zip"))
    uploads.close()


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


def _start_web(data_folder, *args: str, env=None):
    """``(port, server)``: ``dinseg web`` started on a free port over ``data_folder`` (stdout and stderr piped)."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "dinseg.apps.cli", "web", "--port", str(port), "--data",
                               str(data_folder), *args], env=env or ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    return port, server


def _drag(page, x: float, y: float, step_x: float, step_y: float, steps: int = 10) -> None:
    """A left-button drag from (x, y) in ``steps`` moves of (step_x, step_y) page pixels."""
    page.mouse.move(x, y)
    page.mouse.down()
    for step in range(1, steps + 1):
        page.mouse.move(x + step_x * step, y + step_y * step)
        page.wait_for_timeout(30)
    page.mouse.up()


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
    started = time.monotonic()
    port, server = _start_web(data_folder, "--max-upload-mb", str(UPLOAD_LIMIT_MB),
                              env={**ENV, "TMPDIR": str(server_temp)})
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)
            _wait_for(lambda: _page_opens(page, f"http://127.0.0.1:{port}/?token={TOKEN}"), 60, "the page")
            assert "shared session" in page.inner_text("#dinseg-shared-session").lower()

            # open the bundled CT: the first image
            page.click("#dinseg-load-sample")
            _expect_message(page, "opened abdomen-ct")
            page.wait_for_function("document.querySelector('main img.image-display-area')?.naturalWidth > 0")
            first_image = time.monotonic() - started

            # preview: original and enhanced side by side
            open_section(page, "enhance")
            page.click("#dinseg-preview")
            _expect_message(page, "left: original")
            _wait_for(lambda: len(page.query_selector_all("main img.image-display-area")) == 2, 30, "two views")

            # segment in the background, against `dinseg segment` on the same file
            # Cancel while it runs: the job stops, the scene stays as it was, Segment is offered again
            page.click("#dinseg-segment")
            page.wait_for_selector("#dinseg-cancel", timeout=10000)   # the page stays live while it runs
            page.click("#dinseg-cancel")
            _expect_message(page, "cancelled; the scene is as it was")
            page.wait_for_selector("#dinseg-segment", timeout=10000)
            assert page.query_selector("#dinseg-structures") is None and \
                page.inner_text("#dinseg-job-status").startswith("cancelled")

            clicked = time.monotonic()
            page.click("#dinseg-segment")
            page.wait_for_selector("#dinseg-cancel", timeout=10000)
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

            # correct: one paint stroke grows the active (first) segment, undo brings the counts back
            page.click("button:has(i.mdi-brush)")
            active = page.query_selector("#dinseg-structures tr[data-structure]").get_attribute("data-structure")
            views = page.query_selector_all("main img.image-display-area")
            box = views[0].bounding_box()
            x, y = box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.3
            _drag(page, x, y, 8, 3)
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
            open_section(page, "open")
            page.fill("#dinseg-data-path", "../outside.nii.gz")
            page.click("#dinseg-open-data")
            _expect_message(page, "is outside the data folder")
            page.fill("#dinseg-data-path", "link_out.nii.gz")
            page.click("#dinseg-open-data")
            _expect_message(page, "link_out.nii.gz: is outside the data folder")
            page.fill("#dinseg-data-path", "corrupt.nii.gz")
            page.click("#dinseg-open-data")
            _expect_message(page, "corrupt.nii.gz: cannot read this image: the file is cut short or damaged")
            big = tmp_path / "big.nrrd"
            big.write_bytes(os.urandom((UPLOAD_LIMIT_MB + 1) * 1000 * 1000))
            page.set_input_files("input[type=file]", str(big))
            _expect_message(page, "big.nrrd: is 5.0 MB, more than this server accepts (4.0 MB")
            page.set_input_files("input[type=file]", str(data_folder / "corrupt.nii.gz"))
            _expect_message(page, "corrupt.nii.gz: cannot read this image")
            assert _page_counts(page) == expected, "a refused input leaves the scene as it was"
            assert sorted(p.name for p in data_folder.rglob("*")) == ["cases", "corrupt.nii.gz", "ct.nii.gz",
                                                                      "link_out.nii.gz"]

            # (a result written next to a data-folder input, reopened and edited: test_web_reading.py)
            browser.close()
        print(f"\ndinseg web: first image {first_image:.1f} s after start; Segment {web_latency:.1f} s in the "
              f"page, `dinseg segment` {cli_latency:.1f} s: ratio {web_latency / cli_latency:.2f}")
    finally:
        running = server.poll() is None
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=30)[0]
    # SIGTERM stops the server as Ctrl-C does: serve() returns, the job and uploads are cleaned up, exit 0
    assert running, f"the server died before the end of the test:\n{output[-3000:]}"
    assert server.returncode == 0 and "Traceback" not in output, output[-3000:]
    assert not list(server_temp.iterdir()), f"temporary files left: {list(server_temp.iterdir())}\n{output[-2000:]}"


def open_section(page, name: str) -> None:
    """Unfold a section of the panel (sections fold so that the page fits 1280 x 720)."""
    section = page.locator(f"[data-section='{name}']")
    _wait_for(lambda: "v-expansion-panel--active" in (section.get_attribute("class") or "") or
              section.locator("button.v-expansion-panel-title").click() or page.wait_for_timeout(700), 10,
              f"the section {name} to unfold")
    section.locator(".v-expansion-panel-text__wrapper").wait_for(state="visible", timeout=5000)


def _page_opens(page, url: str) -> bool:
    try:
        page.goto(url)
        page.wait_for_selector("#dinseg-load-sample", timeout=5000)
        return True
    except Exception:  # the server is still starting
        return False
