"""A small, bounded load test: several browser sessions of one running app at once (loopback only).

Starts ``streamlit run app.py`` on a free 127.0.0.1 port, warms it with one session (model load,
calibration, preview), then runs two rounds of SESSIONS concurrent headless-Chromium sessions that
each calibrate the embedded model on small settings and open the prune preview at its own ratio. It
checks every session completes with no error or exception and sees its own plan, and that the
server's memory after the sessions are gone returns near the warm baseline and does not grow from
round to round (no per-session leak). Every wait has a time limit; the server is stopped at the end.

Needs Debian's ``/usr/bin/chromium`` and ``playwright``; skipped with a reason where absent.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from streamlit_server import CHROMIUM, idle, require_browser, running_app, set_number

ROOT = Path(__file__).resolve().parents[1]
SESSIONS = 3
COUNTS = (3, 6, 9)  # blocks each concurrent session previews removing (of 30)
SLACK_MB = 250  # allocator slack allowed over the warm baseline

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmRSS"))


def _sessions_alive(url: str) -> None:
    """Nothing to read from outside; just give the server time to drop closed sessions (TTL 1 s)."""
    time.sleep(4)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_browser()
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc to read the server's memory")
    env = {"SIMDIFF_EXPORT_DIR": str(tmp_path_factory.mktemp("exports"))}
    with running_app(tmp_path_factory.mktemp("log") / "streamlit.log", env,
                     ("--server.disconnectedSessionTTL", "1")) as (url, proc):
        yield url, proc



def _open(browser, url):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.set_default_timeout(240_000)
    page.goto(url)
    idle(page)
    set_number(page, "Samples", 2)
    set_number(page, "Seq. length", 32)
    return ctx, page


def _preview(page, k: int) -> int:
    page.locator("[data-testid=stSidebarNav] a", has_text="Prune preview").first.click()
    idle(page)
    set_number(page, "Blocks to remove", k)
    page.wait_for_timeout(300)
    idle(page)
    return page.locator(".sd-block.sd-gone").count()


def _round(browser, url) -> list[int]:
    from playwright.sync_api import expect

    opened = [_open(browser, url) for _ in range(SESSIONS)]
    for _, page in opened:  # all calibrations in flight at once
        page.get_by_role("button", name="Load & calibrate").click()
    for _, page in opened:
        expect(page.get_by_text("Calibrated on 2 × 32")).to_be_visible(timeout=300_000)
        idle(page)
    removed = [_preview(page, k) for (_, page), k in zip(opened, COUNTS)]
    for _, page in opened:
        assert not page.locator("[data-testid=stException]").count()
        assert not page.locator("[data-testid=stAlertContentError]").count()
    for ctx, _ in opened:
        ctx.close()
    return removed


def test_concurrent_sessions_complete_and_memory_returns(server):
    from playwright.sync_api import sync_playwright

    url, proc = server
    t0 = time.monotonic()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        # warm-up: the model is loaded and cached once, as in any real deployment
        ctx, page = _open(browser, url)
        page.get_by_role("button", name="Load & calibrate").click()
        page.get_by_text("Calibrated on 2 × 32").wait_for(timeout=300_000)
        idle(page)
        _preview(page, 1)
        ctx.close()
        _sessions_alive(url)
        baseline = _rss_mb(proc.pid)

        after = []
        for _ in range(2):
            removed = _round(browser, url)
            assert removed == list(COUNTS), removed  # each session saw its own plan
            _sessions_alive(url)
            after.append(_rss_mb(proc.pid))
        browser.close()
    assert proc.poll() is None, "the server died under load"
    assert after[0] < baseline + SLACK_MB, (baseline, after)
    assert after[1] < after[0] + 100, f"memory grows per round: {after}"
    assert time.monotonic() - t0 < 900
