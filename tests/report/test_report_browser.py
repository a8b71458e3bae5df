"""report.html in a real browser (Debian chromium driven by Playwright): every figure loads, nothing is fetched."""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_synth import make_split

from cxrmtl.eval.evaluate import EvalOptions, evaluate_outputs
from cxrmtl.report.evaluation import make_figures
from cxrmtl.report.render import ReportData, render_report, table_section

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,  # ~15-30 s on a busy 2-core machine (browser start + figures)
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian chromium at /usr/bin/chromium "
                                                      "(apt-get install chromium chromium-driver)"),
]


def test_report_renders_in_chromium(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright Python package")
    ev, val = make_split("test", seed=1, findings=3), make_split("val", seed=2, first_patient=10_000, findings=3)
    info = {"run": "runs/browser", "data": {"kind": "phantom", "root": "/data"}, "code_version": "t", "created": "now"}
    result = evaluate_outputs(ev, val=val, options=EvalOptions(n_bootstrap=20), info=info)
    figs = make_figures(ev, result, log_path=None, n_bins=10)
    extra = table_section("Localization (Grad-CAM)", ["finding", "accuracy"], [["Mass", 0.31]], figures=figs[:1])
    paths = render_report(ReportData(metrics=result.metrics, figures=tuple(figs)), out_dir=tmp_path / "report",
                          sections=[extra])
    requests: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda req: requests.append(req.url))
            page.goto(paths.html.as_uri(), wait_until="load")
            widths = page.evaluate("Array.from(document.images).map(img => img.complete ? img.naturalWidth : 0)")
            banner = page.inner_text(".banner.danger")
            headings = page.eval_on_selector_all("h2", "els => els.map(e => e.textContent)")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert len(widths) == len(figs) + 1 and all(w > 0 for w in widths), widths
    assert banner == "PHANTOM DATA: not comparable to published numbers"
    assert {"Summary", "Subgroups", "Figures", "Localization (Grad-CAM)"} <= set(headings)
    assert all(url.startswith(("file:", "data:")) for url in requests), requests  # no network request at all
    assert (tmp_path / "report.png").stat().st_size > 10_000
