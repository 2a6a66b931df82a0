"""The page in a real headless browser (Debian's chromium through Playwright): pick a patient, tiles load, the
heatmap overlay is drawn and changes the picture, a gallery click moves the view. Screenshots go to
test-artifacts/viewer/ (git-ignored)."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.viewer.conftest import serve

CHROMIUM = Path(os.environ.get("ZOO_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "viewer"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _skip_reason() -> str | None:
    from zoo.viewer.app import openseadragon_installed

    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is absent (apt-get install -y chromium; .ci/run does it)"
    if not openseadragon_installed():
        return "zoo/viewer/frontend/node_modules/openseadragon is absent (npm ci --prefix zoo/viewer/frontend)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (uv sync installs the dev group)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def test_page_shows_slide_heatmap_and_gallery(easy_cohort, checkpoints, tmp_path):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    server = serve(easy_cohort, checkpoints["attention"], tmp_path / "cache", warm=True)
    cohort = server.state.cohort
    pid = next(p.patient_id for p in cohort.patients.values() if p.slides and p.mri)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
                viewport={"width": 1500, "height": 1000})
            try:
                page = browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(server.url + "/")
                row = page.locator(f'#patients tr[data-patient="{pid}"]')
                row.wait_for(timeout=60_000)
                page.fill("#filter-text", pid)
                assert page.locator("#patients tbody tr").count() == 1
                row.click()
                page.wait_for_function("() => window.zoo.items.slide && window.zoo.tilesLoaded > 0 && "
                                       "window.zoo.heatLoaded && window.zoo.items.slide.getFullyLoaded()",
                                       timeout=60_000)
                page.wait_for_timeout(800)  # blend-in of the last tiles
                page.screenshot(path=str(ARTIFACTS / "page.png"), full_page=True)
                osd = page.locator("#osd")

                def set_opacity(value: int) -> bytes:
                    page.evaluate("v => { const s = document.querySelector('#heat-opacity'); s.value = v; "
                                  "s.dispatchEvent(new Event('input')); }", value)
                    page.wait_for_function(f"() => Math.abs(window.zoo.items.heat.getOpacity() - {value / 100}) < 1e-6")
                    page.wait_for_timeout(600)
                    return osd.screenshot()

                off = set_opacity(0)
                on = set_opacity(100)
                (ARTIFACTS / "heatmap_opacity_0.png").write_bytes(off)
                (ARTIFACTS / "heatmap_opacity_100.png").write_bytes(on)
                diff = np.abs(_pixels(on) - _pixels(off)).sum(axis=2)
                assert (diff > 30).mean() > 0.02, "the heatmap overlay does not change the rendered slide"
                assert page.locator("#probs .bar-row").count() == 4
                assert page.locator("#fusion .bar-row").count() == 3
                assert page.locator("#clinical tr").count() > 3
                page.wait_for_function("() => document.querySelector('#mri-img').naturalWidth > 0")
                before = page.evaluate("() => { const c = window.zoo.viewer.viewport.getCenter(); return [c.x, c.y]; }")
                figure = page.locator("#gallery figure").first
                figure.wait_for()
                figure.click()
                page.wait_for_timeout(800)
                after = page.evaluate("() => { const c = window.zoo.viewer.viewport.getCenter(); return [c.x, c.y]; }")
                assert np.hypot(after[0] - before[0], after[1] - before[1]) > 1e-3, (before, after)
                page.screenshot(path=str(ARTIFACTS / "after_gallery_click.png"), full_page=True)
                assert not errors, errors
            finally:
                browser.close()
    finally:
        server.stop()
