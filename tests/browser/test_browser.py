"""End-to-end: ``streamlit run serve.py`` (the shipped start) driven in headless Chromium through load → calibrate → curves
→ preview → evaluate → export → download, with screenshots under ``test-artifacts/browser/``.

Needs Debian's ``/usr/bin/chromium`` and the ``playwright`` package (scripts/setup.sh test installs
both); skipped with a reason where either is absent.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

import subprocess
import sys

from tests.support.streamlit_server import CHROMIUM, calibrate_in_browser, idle, require_browser, running_app, set_number, watcher_lines

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_browser()
    exports = tmp_path_factory.mktemp("exports")
    log = tmp_path_factory.mktemp("log") / "streamlit.log"
    with running_app(log, {"SIMDIFF_EXPORT_DIR": str(exports)}) as (url, _):
        yield url, exports, log


def test_shipped_config_turns_the_file_watcher_off():
    """Streamlit, reading the project's .streamlit/config.toml the way `streamlit run` does, watches nothing.

    The default watcher covers the whole project folder (./.venv included when setup.sh creates it
    there) and floods the log with "Inotify queue overflowed" while a model loads.
    """
    code = ("from streamlit import config; config.get_config_options(force_reparse=True); "
            "print(config.get_option('server.fileWatcherType'), config.get_option('server.runOnSave'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["none", "False"]



def _shot(page, name: str):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _runs(page) -> dict:
    """The page's run counters (ui.state.count_run): full page runs and fragment runs, by name."""
    return page.evaluate("() => Object.fromEntries([...document.querySelectorAll('.sd-runs')]"
                         ".map(e => [e.dataset.name, +e.dataset.count]))")


def _goto_page(page, label: str):
    page.locator("[data-testid=stSidebarNav] a", has_text=label).first.click()
    idle(page)


# A move made inside one task of the page: the live elements (ui/live_chart.py, ui/live_slider.py) must
# show the new set when that task's microtasks are done, i.e. before any server message could arrive.
SYNC_COUNT_JS = """async (k) => {
  const box = document.querySelector('input[type=number][aria-label="Blocks to remove"]');
  if (k !== null) {
    Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set.call(box, String(k));
    box.dispatchEvent(new Event('input', {bubbles: true}));
    box.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', bubbles: true}));
    await null;
  }
  const gone = [...document.querySelectorAll('.sd-block')].flatMap((c, i) => c.classList.contains('sd-gone') ? [i] : []);
  const heat = [...document.querySelectorAll('.sd-live')].find(g => g.data && g.data[0].type === 'heatmap');
  return [gone, heat.data[0].z[0].flatMap((v, i) => v === 1 ? [i] : [])];
}"""
SYNC_SLIDER_JS = """async ([label, key]) => {
  const t = document.querySelector(`input[type=range][aria-label="${label}"]`);
  if (key) {
    t.focus();
    t.dispatchEvent(new KeyboardEvent('keydown', {key, bubbles: true}));
    await null; await null;
  }
  const g = document.querySelectorAll('.sd-live');
  const shaded = g[0].layout.shapes.filter(s => s.name === 'dropped' && s.xref === 'x')
    .flatMap(s => Array.from({length: Math.round(s.x1 - s.x0)}, (_, j) => Math.round(s.x0 + 0.5) + j));
  const red = g[1].layout.shapes.filter(s => s.name === 'dropped').map(s => Math.round((s.x0 + s.x1) / 2));
  return [t.value, shaded, red, g[1].layout.title.text];
}"""
SERVER_SET_JS = """(pattern) => {
  for (const e of document.querySelectorAll('[data-testid=stMarkdownContainer]')) {
    const m = e.textContent.match(new RegExp(pattern));
    if (m) return m[1] ? m[1].split(',').map(Number) : [];
  }
  return null;
}"""
LIVE_JS = """() => ({paints: window.__sdLive.clientPaints, mismatches: window.__sdLive.mismatches.length,
  elements: [...document.querySelectorAll('.sd-live, .sd-live-stack')].map(e => [e.dataset.live, e.dataset.painted])})"""


def _live_moves_match_the_server(page, moves, sync_js, server_pattern, check):
    """Each move is painted by the browser at once, then the server's run names the very same set."""
    before, live0 = _runs(page), page.evaluate(LIVE_JS)
    for move in moves:
        painted = page.evaluate(sync_js, move)
        idle(page)
        server = page.evaluate(SERVER_SET_JS, server_pattern)
        check(move, painted, server)
    after, live1 = _runs(page), page.evaluate(LIVE_JS)
    assert live1["mismatches"] == 0 and live1["paints"] > live0["paints"]
    # every element shows the server's confirmed figure now, and every slider-bound one (the curves and
    # the fused bars; the page's other charts are drawn by the same component with no binding) found its widgets
    bound = [e for e in live1["elements"] if e[0] is not None]
    assert len(bound) >= 2 and all(e == ["on", "server"] for e in bound), live1["elements"]
    assert all(e[1] == "server" for e in live1["elements"]), live1["elements"]
    name = "curves" if "would drop" in server_pattern else "preview"
    assert after[f"{name}_page"] == before[f"{name}_page"], "a live move must not rerun the page"
    assert after[f"{name}_fragment"] == before[f"{name}_fragment"] + len(moves)


def test_full_flow_in_chromium(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, exports, log = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1440, "height": 1000}, accept_downloads=True)
        page.set_default_timeout(240_000)
        page.goto(url)
        idle(page)
        expect(page.get_by_text("Nothing loaded yet")).to_be_visible()
        _shot(page, "01_load_empty")

        calibrate_in_browser(page, 4, 64)
        expect(page.get_by_text("Calibrated on 4 × 64")).to_be_visible(timeout=300_000)
        idle(page)
        _shot(page, "02_calibrated")

        _goto_page(page, "Layer curves")
        # every chart here is drawn by the live component (one plotly.js), none by st.plotly_chart
        page.wait_for_selector(".js-plotly-plot .scatterlayer .trace", timeout=60_000)
        assert page.locator(".sd-live.js-plotly-plot").count() >= 3
        assert page.locator("[data-testid=stPlotlyChart]").count() == 0
        _shot(page, "03_layer_curves")
        # the ratio slider reruns only its fragment; the curves' drawn markers follow every move
        before = _runs(page)
        # every chart here is one live graph (the curves first, the fused bars second), updated in place
        live = page.locator(".sd-live.js-plotly-plot").count()
        # plotly.js never travels inside component data: the live charts load it once by URL from the app's
        # static files (cacheable), unless Streamlit's own plotly chart chunk (window.Plotly) came first
        from ui.live_chart import served_name

        srcs = page.evaluate("() => [...document.scripts].map(s => s.src).filter(s => s.includes('/app/static/plotly-'))")
        assert len(srcs) <= 1, srcs
        assert not page.evaluate("() => [...document.scripts].some(s => !s.src && s.text.length > 1e6)")
        # the vendored cartesian bundle (ui/live_component/vendor/), not the plotly package's full one
        assert served_name().startswith("plotly-cartesian-") and all(s.endswith("/" + served_name()) for s in srcs), srcs
        got = page.request.get(f"{url}/app/static/{served_name()}")
        assert got.ok and "javascript" in got.headers["content-type"] and len(got.body()) > 1_000_000
        assert "etag" in got.headers or "last-modified" in got.headers  # revalidated by the browser cache
        page.evaluate("() => { window.__sdGraphs = [...document.querySelectorAll('.sd-live')]; }")
        assert page.evaluate("() => window.__sdGraphs.length") == live
        thumb = page.get_by_role("slider", name="Pruning ratio")
        for key, ratio in (("PageUp", 0.35), ("PageUp", 0.45), ("PageDown", 0.35)):
            thumb.focus()
            thumb.press(key)
            idle(page)
            k = max(1, round(ratio * 30))
            expect(page.get_by_text(f"Highlighted: the {k} blocks")).to_be_visible()
            # the curves chart: 30 drawn points per metric panel, and the k dropped blocks shaded on each panel
            drawn = page.evaluate("() => document.querySelector('.js-plotly-plot').querySelectorAll("
                                  "'.scatterlayer .point').length")
            assert drawn == 3 * 30
            shaded = page.evaluate("() => document.querySelector('.sd-live').layout.shapes"
                                   ".filter(s => s.name === 'dropped').reduce((n, s) => n + (s.x1 - s.x0), 0)")
            assert round(shaded) == 3 * k
            # the very same graph divs (Plotly.react, no remount), and the bars mark the same k blocks
            assert page.evaluate("() => { const g = [...document.querySelectorAll('.sd-live')];"
                                 " return g.length === window.__sdGraphs.length && g.every((d, i) => d === window.__sdGraphs[i]); }")
            red = page.evaluate("() => document.querySelectorAll('.sd-live')[1].layout.shapes"
                                ".filter(s => s.name === 'dropped').map(s => Math.round((s.x0 + s.x1) / 2))")
            assert len(red) == k and red == sorted(page.evaluate("() => document.querySelector('.sd-live')"
                                                                 ".layout.shapes.filter(s => s.name === 'dropped'"
                                                                 " && s.xref === 'x').flatMap(s => Array.from("
                                                                 "{length: Math.round(s.x1 - s.x0)}, (_, j) =>"
                                                                 " Math.round(s.x0 + 0.5) + j))"))
        after = _runs(page)
        assert after["curves_page"] == before["curves_page"], "a slider move must not rerun the page"
        assert after["curves_fragment"] == before["curves_fragment"] + 3

        def curves_check(move, painted, server):
            value, shaded, red, title = painted
            label, _ = move
            assert shaded == red == server, (move, painted, server)
            if label == "SimDiff α":
                assert f"α = {float(value):.2f}" in title
            else:
                assert len(server) == max(1, round(float(value) * 30))

        _live_moves_match_the_server(page, [("Pruning ratio", "PageUp"), ("SimDiff α", "PageUp"),
                                            ("SimDiff α", "ArrowLeft"), ("Pruning ratio", "PageDown")],
                                     SYNC_SLIDER_JS, r"would drop: \[([\d, ]*)\]", curves_check)

        # The fallback: where the hook cannot find its widgets (here: the slider's label changed, as a
        # future Streamlit might render it), nothing is painted by the client and the server path alone
        # updates the charts, correctly.
        live0 = page.evaluate(LIVE_JS)
        thumb = page.locator('input[type=range][aria-label="Pruning ratio"]').element_handle()
        thumb.evaluate("t => { t.setAttribute('aria-label', 'Pruning ratio (renamed)'); t.focus(); }")
        for key in ("PageUp", "PageDown"):
            page.keyboard.press(key)
            idle(page)
            server = page.evaluate(SERVER_SET_JS, r"would drop: \[([\d, ]*)\]")
            _, shaded, red, _ = page.evaluate(SYNC_SLIDER_JS, ["SimDiff α", None])  # reads the charts only
            assert shaded == red == server
        live1 = page.evaluate(LIVE_JS)
        assert live1["paints"] == live0["paints"] and live1["mismatches"] == 0
        bound = [e for e in live1["elements"] if e[0] is not None]  # the slider-bound charts
        assert len(bound) >= 2 and all(e == ["off", "server"] for e in bound), live1["elements"]
        assert all(e[1] == "server" for e in live1["elements"]), live1["elements"]
        thumb.evaluate("t => t.setAttribute('aria-label', 'Pruning ratio')")

        _goto_page(page, "Prune preview")
        expect(page.get_by_text("Est. speedup")).to_be_visible()
        _shot(page, "04_prune_preview")
        assert page.locator(".sd-block.sd-gone").count() == round(0.35 * 30)
        before = _runs(page)
        for k in (5, 9, 12, 4):
            set_number(page, "Blocks to remove", k)
            assert page.locator(".sd-block.sd-gone").count() == k
            expect(page.get_by_text(f"removes {k} of 30")).to_be_visible()
            # the criteria-overlap chart (first row: this criterion) shows the same k blocks
            ones = page.evaluate("() => [...document.querySelectorAll('.sd-live')].map(g => g.data[0])"
                                 ".filter(t => t.type === 'heatmap').map(t => t.z[0].filter(v => v === 1).length)")
            assert ones == [k]
        after = _runs(page)
        assert after["preview_page"] == before["preview_page"], "a count change must not rerun the page"
        assert after["preview_fragment"] == before["preview_fragment"] + 4

        def preview_check(k, painted, server):
            gone, overlap_row = painted
            assert gone == overlap_row == server and len(server) == k, (k, painted, server)

        _live_moves_match_the_server(page, [6, 13, 2], SYNC_COUNT_JS, r"removes \d+ of \d+ blocks: \[([\d, ]*)\]",
                                     preview_check)
        # values the widget normalises (not an integer, below the minimum): whatever the widget makes of
        # them, the stack ends up showing the server's set (the client never keeps a guess of its own)
        for typed in ("3.5", "0"):
            page.evaluate(SYNC_COUNT_JS, typed)
            idle(page)
            server = page.evaluate(SERVER_SET_JS, r"removes \d+ of \d+ blocks: \[([\d, ]*)\]")
            gone, row = page.evaluate(SYNC_COUNT_JS, None)  # reads the stack and the chart only
            assert server and gone == row == server, (typed, gone, row, server)
        assert page.evaluate(LIVE_JS)["mismatches"] == 0
        set_number(page, "Blocks to remove", round(0.25 * 30))

        _goto_page(page, "Export & evaluate")
        set_number(page, "Windows", 2)
        set_number(page, "Seq. length", 64)
        for label in ("Generation sample", "Latency (prefill / decode)"):  # covered by the AppTest suite
            page.get_by_text(label, exact=True).click()
            idle(page)
        page.get_by_role("button", name="Evaluate dense vs pruned").click()
        expect(page.get_by_text("Perplexity, pruned")).to_be_visible(timeout=300_000)
        idle(page)
        page.get_by_role("button", name="Export pruned checkpoint").click()
        expect(page.get_by_text("Exported to")).to_be_visible(timeout=300_000)
        idle(page)
        _shot(page, "05_export")

        with page.expect_download(timeout=120_000) as dl:
            # .first: Streamlit may briefly keep the previous run's element while re-rendering
            page.locator("[data-testid=stDownloadButton] button", has_text="Download pruned checkpoint").first.click()
        target = tmp_path / dl.value.suggested_filename
        dl.value.save_as(target)
        assert not page.locator("[data-testid=stException]").count()
        browser.close()

    assert target.suffix == ".zip"
    with zipfile.ZipFile(target) as z:
        names = z.namelist()
    folder = target.stem
    assert {f"{folder}/config.json", f"{folder}/model.safetensors", f"{folder}/simdiff_report.json"} <= set(names)
    assert (exports / folder / "config.json").is_file()
    # the server ran with the shipped config: no file watcher, so no "Inotify queue overflowed" flood
    assert watcher_lines(log) == []


def test_live_curves_appear_after_the_first_batch_and_cancel_keeps_them(server):
    """Calibrating 48 windows (12 batches): partial curves show up while the pass runs; Cancel keeps
    the windows scored so far as usable (partial) scores for the curves and the preview."""
    import re

    from playwright.sync_api import expect, sync_playwright

    url, _, _ = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(240_000)
        page.goto(url)
        idle(page)
        calibrate_in_browser(page, 48, 64)
        expect(page.get_by_text(re.compile(r"Partial curves after \d+ of 48"))).to_be_visible(timeout=300_000)
        page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot')].some(g => "
                               "g.layout && g.layout.title && String(g.layout.title.text).includes('Partial:'))")
        _shot(page, "06_live_curves")
        page.get_by_role("button", name="Cancel").click()
        note = page.get_by_text(re.compile(r"Calibration cancelled after \d+ of 48 windows"))
        expect(note).to_be_visible(timeout=120_000)
        done = int(re.search(r"after (\d+) of 48", note.inner_text()).group(1))
        assert 1 <= done < 48
        idle(page)
        _goto_page(page, "Layer curves")
        expect(page.get_by_text(f"cancelled after {done} of 48 windows")).to_be_visible()
        page.wait_for_selector(".js-plotly-plot .scatterlayer .trace", timeout=60_000)
        _goto_page(page, "Prune preview")
        expect(page.get_by_text("Est. speedup")).to_be_visible()
        assert not page.locator("[data-testid=stException]").count()
        browser.close()
