"""Click correction in the browser: a wrong stroke is painted onto a structure, one negative click on
it in chromium lets the bundled refiner take it away (Dice against the unpainted result rises), and
"undo click" brings the painted state back exactly. Real server, real page, nothing mocked."""

from __future__ import annotations

import signal

import numpy as np
import pytest

from test_web import (CHROMIUM, TOKEN, _drag, _expect_message, _page_counts, _page_opens, _start_web, _wait_for,
                      needs_browser)


def _download_labels(page, tmp_path, name):
    import SimpleITK as sitk

    with page.expect_download(timeout=60000) as download:
        page.click("#dinseg-download-labels")
    path = tmp_path / f"{name}.nii.gz"
    download.value.save_as(path)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _dice(a, b) -> float:
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


@needs_browser
def test_a_negative_click_takes_a_wrong_stroke_away_and_undo_brings_it_back(tmp_path):
    from playwright.sync_api import sync_playwright

    from dinseg.interactive.card import BUNDLED_REFINER

    if not BUNDLED_REFINER.is_file():
        pytest.skip("no bundled refiner")
    port, server = _start_web(tmp_path)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)
            _wait_for(lambda: _page_opens(page, f"http://127.0.0.1:{port}/?token={TOKEN}"), 60, "the page")
            page.click("#dinseg-load-sample")
            _expect_message(page, "opened abdomen-ct")
            page.click("#dinseg-segment")
            page.wait_for_selector("#dinseg-structures", timeout=180000)
            segmented = _page_counts(page)
            value = {name: i + 1 for i, name in enumerate(segmented)}
            before = _download_labels(page, tmp_path, "segmented")

            # a wrong stroke: paint the active (first) segment where it is not
            page.click("button:has(i.mdi-brush)")
            active = page.query_selector("#dinseg-structures tr[data-structure]").get_attribute("data-structure")
            box = page.query_selector_all("main img.image-display-area")[0].bounding_box()
            x, y = box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.3
            _drag(page, x, y, 4, 2)
            _wait_for(lambda: _page_counts(page).get(active, 0) > segmented[active], 30, f"{active} to grow")
            page.click("button:has(i.mdi-brain)")  # back to the DIN panel (the paint tool is left)
            painted = _download_labels(page, tmp_path, "painted")
            truth = before == value[active]
            painted_dice = _dice(painted == value[active], truth)
            assert painted_dice < 1.0

            # one negative click in the middle of the stroke
            assert active in page.inner_text("#dinseg-clicks"), "the first structure is the one to correct"
            page.click("#dinseg-click-negative")
            _expect_message(page, f"- removes from {active}")
            page.mouse.click(x + 20, y + 10)
            _expect_message(page, f"{active}: ")
            _expect_message(page, "after 1 click(s)")
            clicked = _download_labels(page, tmp_path, "clicked")
            clicked_dice = _dice(clicked == value[active], truth)
            assert clicked_dice > painted_dice, f"Dice {painted_dice:.3f} -> {clicked_dice:.3f} after the click"
            others = (painted != value[active]) & (clicked != value[active])
            assert np.array_equal(clicked[others], painted[others]), "another structure changed"

            # undo click: exactly the painted state again; done: the points are gone, the result stays
            page.click("#dinseg-click-undo")
            _expect_message(page, "last click undone")
            assert np.array_equal(_download_labels(page, tmp_path, "undone"), painted)
            page.click("#dinseg-click-done")
            _expect_message(page, "click correction done")
            browser.close()
        print(f"\n{active}: Dice against the unpainted result {painted_dice:.3f} painted -> "
              f"{clicked_dice:.3f} after one negative click")
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=30)[0]
    assert server.returncode == 0 and "Traceback" not in output, output[-3000:]
