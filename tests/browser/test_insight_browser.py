"""Browser walk through the insight features: bands → stability → a second calibration source → run
overlay → block drill-down, in headless Chromium, with screenshots under ``test-artifacts/browser/``
(the insight screenshots in docs/metrics.md and docs/insight.md are these, cropped to the chart: ``assets/insight_*.png``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.streamlit_server import CHROMIUM, calibrate_in_browser, idle, require_browser, running_app

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _goto(page, label: str):
    page.locator("[data-testid=stSidebarNav] a", has_text=label).first.click()
    idle(page)


def _shot(page, name: str, locator=None):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (locator or page).screenshot(path=str(ARTIFACTS / f"{name}.png"), **({} if locator else {"full_page": True}))


def test_insight_walk_in_chromium(tmp_path_factory):
    require_browser()
    from playwright.sync_api import expect, sync_playwright

    with running_app(tmp_path_factory.mktemp("log") / "streamlit.log", {}) as (url, _), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1440, "height": 1000}, accept_downloads=True)
        page.set_default_timeout(240_000)
        page.goto(url)
        idle(page)
        calibrate_in_browser(page, 6, 64)
        expect(page.get_by_text("Calibrated on 6 × 64")).to_be_visible(timeout=300_000)
        idle(page)

        _goto(page, "Layer curves")
        chart = page.locator(".sd-live").first  # the curves: an in-place live chart (ui/live_chart.py)
        expect(chart.get_by_text("90% bootstrap band")).to_be_visible()
        expect(chart.get_by_text(re.compile("▲ [0-9]")).first).to_be_visible()  # clipped outlier written at the top
        _shot(page, "insight_01_bands", chart)
        with page.expect_download(timeout=120_000) as dl:
            page.locator("[data-testid=stDownloadButton] button", has_text="PNG").first.click()
        png = tmp_path_factory.mktemp("dl") / "curves.png"
        dl.value.save_as(png)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        _goto(page, "Prune preview")
        expect(page.get_by_text("Plan stability", exact=True)).to_be_visible()
        expect(page.get_by_text("stable plan", exact=False).first).to_be_visible()
        stab = page.locator(".sd-live").filter(has_text="Plan stability").first
        _shot(page, "insight_02_stability", stab)

        _goto(page, "Calibration sensitivity")
        page.get_by_role("button", name="Score on these sources").click()
        expect(page.get_by_text("Lowest Spearman ρ")).to_be_visible(timeout=300_000)
        idle(page)
        _shot(page, "insight_03_sensitivity")

        _goto(page, "Compare runs")
        page.get_by_role("button", name="Pin the current scores").click()
        idle(page)
        _goto(page, "Load & calibrate")
        calibrate_in_browser(page, 6, 32)
        expect(page.get_by_text("Calibrated on 6 × 32")).to_be_visible(timeout=300_000)
        idle(page)
        _goto(page, "Compare runs")
        expect(page.locator("[data-testid=stPlotlyChart]").first).to_be_visible()
        assert page.locator("[data-testid=stPlotlyChart]").count() == 3  # overlay + two heatmaps
        _shot(page, "insight_04_compare")

        _goto(page, "Block drill-down")
        page.get_by_role("button", name="Drill down").click()
        expect(page.locator("[data-testid=sd-drill]")).to_be_visible(timeout=120_000)
        idle(page)
        _shot(page, "insight_05_drilldown")
        assert not page.locator("[data-testid=stException]").count()
        browser.close()
