"""reopen_run_s: from opening a stored 80-block run's link to its curves drawn in Chromium (goal <= 1.5 s).

    python bench/suite/reopen.py            # one JSON line (also run by bench/run.py)

An 80-block run is made by scoring a random-weight 80-block Llama built from a config (hidden 64) on
4 x 32 random tokens (so it has every per-window sum and matrix the pages draw), saved into a fresh
$SIMDIFF_HOME. Then ``streamlit run serve.py`` (the shipped start: the app plus the quick-view route,
shipped config) is started on loopback and, in headless Chromium (Debian's /usr/bin/chromium,
Playwright), each repeat opens a link in a new browser context (a new visitor: empty HTTP cache, nothing
of the run in memory) and times, from ``page.goto`` to the first moment the curves and the
fused-importance chart are both drawn with data (polled every animation frame in the page). No model is
loaded. Two links to the same run and view are timed:

* ``reopen_run_s``: the run's link, ``/view/ID?ratio=0.25``, the one the Runs and Layer curves pages give
  to share (ui/run_view.py: one HTML page with the run's curves and the slider payload, served outside
  any Streamlit session, plotly.js's basic bundle);
* ``reopen_app_s``: the explorer's deep link to the same view, ``/Layer_curves?run=ID&ratio=0.25`` (a
  Streamlit session: the app's bundle, a websocket, the page's script run, the cartesian plotly bundle).

The first open of each after the server start (``first_s``, ``first_app_s``: imports and caches
warming) is reported apart from the median of the following ones. A returning visitor is timed too
(``*_warm_s``): the same link opened in new tabs of one browser context, whose HTTP cache keeps what the
server lets it keep (Streamlit's hashed bundles are ``immutable``; plotly.js is served by Streamlit's static
route); each tab of the explorer is still a new Streamlit session with nothing of the run in memory.

Where the time goes (``breakdown_ms`` / ``breakdown_app_ms``, medians of the repeats after the first,
from the page's own navigation start): ``dom_ready`` (the document parsed), ``title`` (the explorer
page's h1 drawn: Streamlit plus the script run up to it), ``plotly_ready`` (plotly.js fetched and run),
``drawn`` (both charts drawn). The floors: a one-line Streamlit page (``st.title``) served with the same
config by a second server, timed to its title (``floor_s``: nothing a Streamlit page can beat); a static
page that loads the same plotly.js bundle and draws two two-point charts (``view_floor_s``: nothing the
quick view can beat).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# the curves chart and the fused-importance bars (the first two charts of Layer curves) are drawn with data
DRAWN_JS = """(L) => {
  const ps = [...document.querySelectorAll('.js-plotly-plot')].filter(g => g.data && g.data.length);
  return ps.length >= 2;
}"""


# marks, in the page's own clock, when Streamlit's DOM is ready, the title shows, plotly.js has run
MARKS_JS = """(() => {
  const T = window.__sdMarks = {};
  const mark = (k) => { if (!(k in T)) T[k] = performance.now(); };
  let P;
  Object.defineProperty(window, 'Plotly', {configurable: true, get() { return P; }, set(v) { P = v; mark('plotly_ready'); }});
  document.addEventListener('DOMContentLoaded', () => {
    mark('dom_ready');
    new MutationObserver(() => { if (document.querySelector('[data-testid=stMain] h1')) mark('title'); })
      .observe(document.body, {subtree: true, childList: true});
  });
})()"""
FLOOR_PAGE = "import streamlit as st\n\nst.title('Floor')\n"
# the quick view's floor: the same plotly.js bundle and two two-point charts (a line, bars), nothing else
VIEW_FLOOR = """<!doctype html><html><head><meta charset="utf-8"><title>floor</title></head><body><div id="a"></div>
<div id="b"></div><script src="../app/static/{name}"></script><script>
Plotly.newPlot('a', [{{y: [1, 2]}}]); Plotly.newPlot('b', [{{y: [2, 1], type: 'bar'}}]);</script></body></html>"""


def _context(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.add_init_script(MARKS_JS)
    return ctx


def _open(browser, link: str, drawn_js: str, arg=None, ctx=None) -> tuple[float, dict]:
    """Seconds from ``goto(link)`` until ``drawn_js`` holds, and the page's marks (ms). In a new browser context
    (a first-time visitor: empty HTTP cache), or with ``ctx`` in a new tab of that context (a returning visitor:
    the browser's cache holds the static files it was allowed to keep; still a new Streamlit session)."""
    own = ctx is None
    ctx = _context(browser) if own else ctx
    page = ctx.new_page()
    page.set_default_timeout(120_000)
    t0 = time.perf_counter()
    page.goto(link)
    try:
        page.wait_for_function(drawn_js, arg=arg, polling="raf", timeout=120_000)
    except Exception as e:  # noqa: BLE001 - playwright's TimeoutError: say what the page showed
        text = page.locator("body").inner_text()[:300].replace("\n", " ")
        (ctx if own else page).close()
        raise RuntimeError(f"not drawn in 120 s; the page showed: {text}") from e
    dt = time.perf_counter() - t0
    marks = page.evaluate("""Object.assign({drawn: performance.now(), plotly_js: performance.getEntriesByType('resource')
      .filter(e => e.name.includes('/app/static/plotly')).map(e => [e.name.split('/').pop(), e.decodedBodySize])},
      window.__sdMarks)""")
    if "floor" in link:
        errors = 0
    elif "/view/" in link:   # the quick view: its own check that what it drew is the server's plan
        errors = page.evaluate("window.__sdView.mismatch !== null")
    else:
        from tests.support.streamlit_server import idle

        idle(page)
        errors = page.locator("[data-testid=stException], [data-testid=stAlertContentError]").count()
    (ctx if own else page).close()
    if errors:
        raise RuntimeError("the page showed an error")
    return dt, marks


def floor_s(browser, repeats: int, log_dir: Path) -> float:
    """The median time to the title of a one-line Streamlit page (same config, new context each): the floor."""
    from tests.support.streamlit_server import running_app

    script = log_dir / "floor_page.py"
    script.write_text(FLOOR_PAGE, encoding="utf-8")
    title = "() => !!document.querySelector('[data-testid=stMain] h1')"
    with running_app(log_dir / "floor.log", {}, script=str(script)) as (url, _):
        times = [_open(browser, url, title)[0] for _ in range(repeats + 1)]
        ctx = _context(browser)
        warm = [_open(browser, url, title, ctx=ctx)[0] for _ in range(repeats + 1)]
        ctx.close()
    return round(statistics.median(times[1:]), 3), round(statistics.median(warm[1:]), 3)


def make_run(home: Path, num_layers: int = 80) -> str:
    """Score a config-built ``num_layers``-block Llama and save it into the library at ``home``; its run id."""
    import torch

    from simdiff_core import score_model
    from simdiff_core.models.load import wrap_model
    from simdiff_core.runs import RunStore, run_meta

    from .harness import llama_dir_model

    model = llama_dir_model(num_layers, 64, 192, 2048)
    lm = wrap_model(model, None, f"llama-{num_layers}x64 (config-built)")
    ids = torch.randint(0, 2048, (4, 32), generator=torch.Generator().manual_seed(0))
    scores = score_model(lm, ids, calibration={"source": "random tokens", "samples": 4, "seq_len": 32})
    return RunStore(home=home).save(scores, meta=run_meta(scores))


def view_floor_s(browser, repeats: int) -> tuple[float, float]:
    """The quick view's floor: a static page loading the same plotly.js bundle and drawing two two-point charts,
    served from a plain HTTP server on loopback (new context each; then new tabs of one context)."""
    import functools
    import http.server
    import shutil
    import threading

    from ui import live_chart

    d = Path(tempfile.mkdtemp(prefix="simdiff-floor-"))
    name = live_chart.served_name("basic")
    (d / "app" / "static").mkdir(parents=True)
    shutil.copy(live_chart.plotly_file("basic"), d / "app" / "static" / name)
    (d / "view").mkdir()
    (d / "view" / "floor.html").write_text(VIEW_FLOOR.format(name=name), encoding="utf-8")
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):   # no line per request on stderr
            pass

    handler = functools.partial(Quiet, directory=str(d))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    link = f"http://127.0.0.1:{srv.server_address[1]}/view/floor.html"
    try:
        times = [_open(browser, link, DRAWN_JS, 0)[0] for _ in range(repeats + 1)]
        ctx = _context(browser)
        warm = [_open(browser, link, DRAWN_JS, 0, ctx=ctx)[0] for _ in range(repeats + 1)]
        ctx.close()
    finally:
        srv.shutdown()
        shutil.rmtree(d, ignore_errors=True)
    return round(statistics.median(times[1:]), 3), round(statistics.median(warm[1:]), 3)


def _series(browser, link: str, repeats: int, num_layers: int) -> dict:
    """New visitors (a new context each), then a returning one (new tabs of one context): times and marks."""
    out = {"new": [], "new_marks": [], "warm": [], "warm_marks": []}
    for _ in range(repeats + 1):
        dt, m = _open(browser, link, DRAWN_JS, num_layers)
        out["new"].append(dt)
        out["new_marks"].append(m)
    ctx = _context(browser)   # the first open fills its cache, then new tabs
    for _ in range(repeats + 1):
        dt, m = _open(browser, link, DRAWN_JS, num_layers, ctx=ctx)
        out["warm"].append(dt)
        out["warm_marks"].append(m)
    ctx.close()
    return out


def _breakdown(ms: list[dict]) -> dict:
    return {k: round(statistics.median(m[k] for m in ms[1:])) for k in ("dom_ready", "title", "plotly_ready", "drawn")
            if all(k in m for m in ms[1:])}


def bench_reopen(repeats: int = 5, num_layers: int = 80) -> dict:
    """Time link -> curves drawn for a stored ``num_layers``-block run (see the module docstring)."""
    import shutil

    if not (shutil.which("chromium") or Path("/usr/bin/chromium").exists()):
        return {"error": "chromium not installed"}
    from playwright.sync_api import sync_playwright

    from tests.support.streamlit_server import running_app

    home = Path(tempfile.mkdtemp(prefix="simdiff-reopen-"))
    run_id = make_run(home, num_layers)
    log = home / "streamlit.log"
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            try:
                with running_app(log, {"SIMDIFF_HOME": str(home), "SIMDIFF_EXPORT_DIR": str(home / "exports")}) as (url, _):
                    view = _series(browser, f"{url}/view/{run_id}?ratio=0.25", repeats, num_layers)
                    app = _series(browser, f"{url}/Layer_curves?run={run_id}&ratio=0.25", repeats, num_layers)
                floor, floor_warm = floor_s(browser, repeats, home)
                vfloor, vfloor_warm = view_floor_s(browser, repeats)
            finally:
                browser.close()
    except RuntimeError as e:
        return {"error": str(e), "run_id": run_id}
    shutil.rmtree(home, ignore_errors=True)
    med = lambda xs: round(statistics.median(xs[1:]), 3)  # noqa: E731 - the repeats after the first
    r3 = lambda xs: [round(t, 3) for t in xs]  # noqa: E731
    return {"reopen_run_s": med(view["new"]), "first_s": round(view["new"][0], 3), "all_s": r3(view["new"]),
            "blocks": num_layers, "goal_s": 1.5, "goal_met": med(view["new"]) <= 1.5,
            "breakdown_ms": _breakdown(view["new_marks"]), "view_floor_s": vfloor,
            "reopen_run_warm_s": med(view["warm"]), "all_warm_s": r3(view["warm"]),
            "breakdown_warm_ms": _breakdown(view["warm_marks"]), "view_floor_warm_s": vfloor_warm,
            "plotly_js": view["new_marks"][-1]["plotly_js"],   # the bundle(s) the page loaded: [file, bytes]
            # the explorer's deep link to the same run and view (a Streamlit session)
            "reopen_app_s": med(app["new"]), "first_app_s": round(app["new"][0], 3), "all_app_s": r3(app["new"]),
            "breakdown_app_ms": _breakdown(app["new_marks"]), "floor_s": floor,
            "reopen_app_warm_s": med(app["warm"]), "all_app_warm_s": r3(app["warm"]),
            "breakdown_app_warm_ms": _breakdown(app["warm_marks"]), "floor_warm_s": floor_warm,
            "plotly_js_app": app["new_marks"][-1]["plotly_js"]}


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "bench"))
    from suite.reopen import bench_reopen as run

    print(json.dumps(run()))
