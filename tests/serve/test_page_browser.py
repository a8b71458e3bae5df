"""The radiologist's page in headless Chromium against a real `cxrmtl serve` process.

Upload three studies (one by drag and drop, two with the file picker), see them ranked by urgency, open the most
urgent with the keyboard, toggle a heatmap, mark it read, reload and find the state kept. No console errors and
no request to anything but the service on 127.0.0.1. Screenshots go to the test's tmp folder, and also to
/tmp/serve_screens/ when CXRMTL_SCREENSHOTS is set (to look at them).
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest
from servekit import ServeRun, running_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENS = Path("/tmp/serve_screens")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,  # a service process and a browser: ~30-60 s on a busy 2-core machine
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian chromium at /usr/bin/chromium "
                                                      "(apt-get install chromium chromium-driver)"),
]

DROP_JS = """([name, b64]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], name, { type: "image/png" }));
  const zone = document.getElementById("dropzone");
  for (const type of ["dragenter", "dragover", "drop"]) {
    zone.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
  }
}"""


def shoot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path))
    if os.environ.get("CXRMTL_SCREENSHOTS"):
        SCREENS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SCREENS / path.name)
    return path


def row_levels(page) -> list[str]:
    return page.eval_on_selector_all("#worklist-body tr", "rows => rows.map(r => r.className.split(' ')[0])")


def test_worklist_page_end_to_end(serve_run: ServeRun, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright Python package")
    order = sorted(serve_run.expected, key=lambda n: ["critical", "urgent", "routine"].index(serve_run.expected[n]))
    routine, urgent, critical = order[2], order[1], order[0]
    requests: list[str] = []
    problems: list[str] = []
    with running_server(serve_run.run, db=tmp_path / "db" / "worklist.sqlite", log=tmp_path / "server.log",
                        extra=("--backend", "torch")) as server, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            page.on("request", lambda req: requests.append(req.url))
            page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
                    if msg.type in ("error", "warning") else None)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.goto(server.url + "/", wait_until="load")
            page.wait_for_function("() => document.getElementById('model-line').textContent.includes('PHANTOM')")
            assert page.is_visible("#phantom-banner") and "PHANTOM" in page.inner_text("#phantom-banner")
            assert page.inner_text("#disclaimer") == "Decision support, not a diagnosis"
            shoot(page, tmp_path, "serve_0_empty")

            # Upload: the routine study by drag and drop, then the other two with the file picker.
            data = base64.b64encode(serve_run.studies[routine].read_bytes()).decode()
            page.evaluate(DROP_JS, [f"{routine}.png", data])
            page.wait_for_selector("#worklist-body tr >> nth=0")
            page.set_input_files("#file-input", [str(serve_run.studies[urgent]), str(serve_run.studies[critical])])
            page.wait_for_function("() => document.querySelectorAll('#worklist-body tr').length === 3", timeout=60_000)
            page.wait_for_function("() => document.querySelectorAll('#upload-log li.ok').length === 3")
            assert row_levels(page) == ["critical", "urgent", "routine"]
            assert page.inner_text("#count-unread") == "3"

            # Keyboard: Tab reaches the rows, Enter opens the focused one.
            page.focus("#worklist-body tr >> nth=1")
            page.keyboard.press("Shift+Tab")
            assert page.evaluate("document.activeElement.dataset.id") == \
                page.get_attribute("#worklist-body tr >> nth=0", "data-id")
            page.keyboard.press("Enter")
            page.wait_for_selector("#viewer-body:not([hidden])")
            page.wait_for_function("() => document.getElementById('study-image').naturalWidth > 0")
            assert page.inner_text("#study-badge").lower() == "critical"
            assert page.locator("#findings-body tr").count() == 14
            positive = page.eval_on_selector_all("#findings-body tr.positive td:first-child",
                                                 "cells => cells.map(c => c.textContent)")
            assert "Pneumothorax" in positive
            assert page.inner_text("#findings-note").startswith("Sorted by probability")

            # Heatmap on (Space on the toggle), then off.
            toggle = page.locator(".heat-toggle[data-finding='Pneumothorax']")
            toggle.focus()
            page.keyboard.press("Space")
            page.wait_for_function("() => !document.getElementById('heatmap-layer').hidden && "
                                   "document.getElementById('heatmap-layer').naturalWidth > 0", timeout=60_000)
            assert toggle.get_attribute("aria-pressed") == "true"
            assert "Pneumothorax" in page.inner_text("#image-caption")
            shoot(page, tmp_path, "serve_1_heatmap")
            toggle.click()
            assert page.is_hidden("#heatmap-layer") and toggle.get_attribute("aria-pressed") == "false"
            toggle.click()
            page.wait_for_function("() => !document.getElementById('heatmap-layer').hidden")

            # Mark as read; the worklist follows.
            page.click("#mark-read")
            page.wait_for_function("() => document.getElementById('mark-read').disabled")
            page.wait_for_function("() => document.getElementById('count-unread').textContent === '2'")
            assert row_levels(page) == ["urgent", "routine"]
            assert page.is_visible("#heatmap-layer")  # the open study keeps its heatmap
            shoot(page, tmp_path, "serve_2_read")

            # Reload: the study opens again from the address, still read; the Read tab lists it.
            page.reload(wait_until="load")
            page.wait_for_selector("#viewer-body:not([hidden])")
            page.wait_for_function("() => document.getElementById('mark-read').textContent.startsWith('Read')")
            assert page.is_disabled("#mark-read")
            page.wait_for_function("() => document.getElementById('count-read').textContent === '1'")
            page.click("#tab-read")
            page.wait_for_function("() => document.querySelectorAll('#worklist-body tr').length === 1")
            assert row_levels(page) == ["critical"] and page.locator("#worklist-body tr.is-read").count() == 1
            shoot(page, tmp_path, "serve_3_reloaded")
        finally:
            browser.close()
    assert not problems, problems
    outside = [u for u in requests if not u.startswith((server.url + "/", "data:", "blob:"))]
    assert not outside, outside
    assert any("/heatmap/Pneumothorax" in u for u in requests)
