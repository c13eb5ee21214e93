"""The quick view of a stored run: ``/view/<run>?ratio=0.25&...``, one HTML page served outside any
Streamlit session (issue 23's ``reopen_run_s``).

Why: a link to an explorer page (``/Layer_curves?run=ID``) opens a Streamlit session first: the app's
bundle, a websocket, the script run, then plotly.js. A one-line Streamlit page alone takes ~1.3 s to
show its title on this machine, and the Layer curves page ~3.9 s to draw its curves
(bench/suite/reopen.py). A run's curves need none of that: the scores are on disk. So ``serve.py`` mounts
this route on Streamlit's own server (``st.App(..., routes=...)``) and it returns one page holding the
run's Layer curves (the cosine / MSSD / MASD curves and the fused importance bars, with the blocks the
link's plan drops shaded), the live payload of every ratio and α of the sliders (ui/live_slider.py: the
same payload, and the same ``live_core.js`` assembly, that repaint the explorer's sliders before the
server), and a link into the explorer for everything else (heatmaps, preview, export, evaluation).
No model is loaded and no session is made; the page is static once sent (its sliders repaint in the
browser and keep the address bar and the explorer link in step).

The query is the deep links' (ui/links.py ``PARAMS``: ratio, criterion, α, β, locks, toggles), parsed by
the same parsers; a bad value is one line on the page and the default is used. A missing or unreadable
run is a one-line 404 page. The built page is kept per run file and settings (a small LRU), so a link
opened by many visitors is built once; ``warm`` builds the default view of the most recent runs at server
start (a demo's gallery opens at once).
"""

from __future__ import annotations

import gzip
import html
import json
import threading
from collections import OrderedDict
from pathlib import Path
from urllib.parse import urlencode

PATH = "/view"
JS = Path(__file__).resolve().parent / "live_component" / "view.js"
CACHE_SIZE = 16
_CACHE: OrderedDict = OrderedDict()
_BUILDING: dict = {}        # page key -> the lock its one build holds
_LOCK = threading.Lock()
_SERVED = {"on": False}     # set by serve.py: the route exists on this server (the pages offer the link)


def mark_served() -> None:
    _SERVED["on"] = True


def served() -> bool:
    """Whether this server has the view route (started as ``streamlit run serve.py``)."""
    return _SERVED["on"]


def link(run_id: str, query: dict) -> str:
    """The view's path for ``run_id`` at the deep-link ``query`` (ui/links.py ``current()``), relative to the root:
    ratio and α, and the other settings only where they are not the defaults (a short link to copy)."""
    s, _ = settings(query)
    return f"{PATH}/{run_id}?{urlencode(minimal_query(s))}"


def link_markdown(run_id: str, query: dict) -> str | None:
    """The pages' line offering the quick view of ``run_id`` at ``query``, or None where the route is not served."""
    if not served():
        return None
    return (f"[Quick view of this run]({link(run_id, query)}): its curves and the highlighted plan with sliders, "
            "no model and no session, open in about a second. Send the link to a colleague on this server.")


def settings(query) -> tuple[dict, list[str]]:
    """The view settings a query gives (defaults: the app's) and one note per value it ignored."""
    from ui import links
    from ui.state import DEFAULTS

    out = {k: DEFAULTS[k] for k in ("ratio", "criterion", "alpha", "beta", "keep_first", "keep_last", "scale_free")}
    out.update(links.CURVES_DEFAULTS)
    values, notes = links.parse(query)
    return {**out, **values}, notes


def minimal_query(s: dict) -> dict:
    """The query giving settings ``s``: ratio and α, and every other setting that is not the app's default (so
    equal settings give one link, whatever a query spelled)."""
    from ui import links

    defaults, _ = settings({})
    q = {}
    for name, (key, _, _) in links.PARAMS.items():
        v = s[key]
        if name in ("ratio", "alpha") or v != defaults[key]:
            q[name] = links.text(v)
    return q


def explorer_link(run_id: str, s: dict) -> str:
    """The explorer's deep link (Layer curves) to the view settings ``s``, relative to the view."""
    return "../Layer_curves?" + urlencode({"run": run_id, **minimal_query(s)})


def build(scores, s: dict) -> dict:
    """What the page draws for ``scores`` at settings ``s``: the live payload (every k and α), the link's
    state, the plan's removed blocks (or why the planner refuses) -- the Layer curves page's own calls."""
    from simdiff_core import SimDiffError
    from simdiff_core.analysis import uncertainty
    from simdiff_core.export import figures
    from simdiff_core.pruning.plan import make_plan, num_from_ratio
    from ui import live_slider
    from ui.settings import count_for_ratio

    fusion = {"scale_free": bool(s["scale_free"]), "beta": float(s["beta"])}
    bands = None
    if s["show_bands"] and uncertainty.has_windows(scores):
        bands = uncertainty.bands(scores, level=s["band_level"])
    base = figures.curves_base(scores.layers, scale_free=fusion["scale_free"], log_mssd=s["log_mssd"], damage=None,
                               bands=bands, clip=s["clip_outliers"])
    band = (lambda a: uncertainty.fused_band(scores, alpha=a, level=s["band_level"], **fusion)) if bands else None
    payload = live_slider.curves_payload(scores, s["criterion"], s["keep_first"], s["keep_last"], fusion, base, band)
    L = scores.num_layers
    alpha = round(float(s["alpha"]), 2)
    out = {"payload": live_slider.public(payload), "a": live_slider.akey(alpha), "dropped": None, "problem": None,
           "criterion": s["criterion"], "bands": bands is not None}
    try:
        plan = make_plan(scores, s["criterion"], num=count_for_ratio(L, s["ratio"]), alpha=alpha, keep_first=s["keep_first"],
                         keep_last=s["keep_last"], **(fusion if s["criterion"] == "simdiff" else {}))
        out["dropped"], out["k"] = plan.removed_layers, plan.num_removed
    except SimDiffError as e:
        out["problem"], out["k"] = str(e), num_from_ratio(L, num=L) if s["ratio"] >= 1 else max(1, round(s["ratio"] * L))
    return out


def _plotly_tag() -> str:
    """plotly.js by its static URL (cached by browsers across pages), or inline where static serving is off."""
    import streamlit as st

    from ui import live_chart

    name = live_chart.static_copy("basic") if st.get_option("server.enableStaticServing") else None
    if name is not None:
        return f'<script src="../app/static/{name}"></script>'
    return "<script>" + live_chart.plotly_file("basic").read_text(encoding="utf-8").replace("</script", "<\\/script") + "</script>"


def _json(obj) -> str:
    """JSON safe inside a <script> element."""
    return json.dumps(obj, separators=(",", ":")).replace("</", "<\\/")


STYLE = """body{font-family:"Source Sans Pro",system-ui,sans-serif;color:#0f172a;margin:0;background:#fff}
main{max-width:1200px;margin:0 auto;padding:1.2rem 2rem}h1{font-size:2rem;margin:.2rem 0}
.meta,.note{color:#475569;font-size:.9rem}.warn{background:#fef3c7;padding:.5rem .8rem;border-radius:.4rem}
.err{background:#fee2e2;padding:.5rem .8rem;border-radius:.4rem}
.controls{display:flex;gap:2rem;align-items:center;margin:.8rem 0;flex-wrap:wrap}
.controls label{display:flex;gap:.6rem;align-items:center}input[type=range]{width:16rem}
a.open{display:inline-block;background:#2563eb;color:#fff;padding:.45rem .9rem;border-radius:.4rem;text-decoration:none}"""


def page(run, s: dict, notes: list[str], built: dict, explorer: str) -> str:
    """The view's HTML (see the module docstring)."""
    from simdiff_core.analysis.score import protocol
    from simdiff_core.export.figures import plot_config
    from ui import live_chart
    from ui.runs import run_date

    sc, info = run.scores, run.info
    e = html.escape
    part = sc.meta.get("partial")
    warn = (f'<p class="warn">Partial scores: calibration was cancelled after {part["windows"]} of {part["of"]} '
            "windows.</p>") if part else ""
    warn += "".join(f'<p class="err">{e(n)}</p>' for n in notes)
    init = {"k": built["k"], "a": built["a"], "ratio": s["ratio"], "alpha": round(float(s["alpha"]), 2),
            "criterion": built["criterion"], "dropped": built["dropped"], "problem": built["problem"],
            "config": {n: plot_config(n) for n in ("layer_curves", "simdiff_importance")}}
    band_note = (f"Shaded: {s['band_level']:.0%} percentile-bootstrap band over the calibration windows (200 "
                 "resamples, seed 0)." if built["bands"] else "")
    core = (JS.parent / "live_core.js").read_text(encoding="utf-8").replace("export function", "function") \
        .replace("export const", "const")
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(info.label)} · SimDiff Explorer</title>
<style>{STYLE}</style></head><body><main>
<h1>Layer curves</h1>
<p class="meta">{e(str(sc.model))} · {sc.num_layers} blocks · calibrated on {e(protocol(sc.calibration))}</p>
<p class="meta">Run <code>{e(info.id)}</code> ({e(info.label)}), from the run library, computed {e(run_date(info))}.
This quick view needs no model and no session.</p>{warn}
<p><a class="open" id="sd-open" href="{e(explorer)}">Open in SimDiff Explorer</a>
<span class="note">heatmaps, Prune preview, export and evaluation</span></p>
<div class="controls"><label>Pruning ratio <input type="range" id="sd-ratio" min="0.01" max="1" step="0.01"
value="{s['ratio']}"><output id="sd-ratio-v"></output></label>
<label>SimDiff α <input type="range" id="sd-alpha" min="0" max="1" step="0.05" value="{init['alpha']}">
<output id="sd-alpha-v"></output></label></div>
<p id="sd-dropped"></p>
<div id="curves" class="chart"></div><div id="simdiff" class="chart"></div>
<p class="note">{band_note}</p>
</main>
{_plotly_tag()}
<script type="application/json" id="sd-payload">{_json(built["payload"])}</script>
<script type="application/json" id="sd-init">{_json(init)}</script>
<script>{core}
{JS.read_text(encoding="utf-8")}</script>
</body></html>"""


def _error_page(msg: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>SimDiff Explorer</title>'
            f"<style>{STYLE}</style></head><body><main><h1>Run not available</h1>"
            f'<p class="err">{html.escape(msg)}</p><p><a href="../Runs">The run library</a></p></main></body></html>')


def render(run_id: str, query, store=None) -> tuple[int, bytes, bytes | None]:
    """(HTTP status, page bytes, the same gzipped or None) for ``/view/<run_id>?query``: 200 and the view, or
    404 and one line."""
    from simdiff_core import SimDiffError
    from simdiff_core.runs import RunStore
    from ui import links

    if not links.RUN_ID.match(run_id):
        return 404, _error_page(f"{run_id[:40]!r} is not a run id").encode(), None
    store = store or RunStore()
    try:
        info = store.info(run_id)
    except SimDiffError as e:
        return 404, _error_page(str(e)).encode(), None
    s, notes = settings(query)
    key = (str(store.home), info.id, info.file, info.size, tuple(sorted(s.items())), tuple(notes))
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return (200, *hit)
        building = _BUILDING.setdefault(key, threading.Lock())
    # one build per page: a visitor who asks while it is being built (e.g. by the start-up warming) waits for it
    try:
        with building:
            with _LOCK:
                hit = _CACHE.get(key)
            if hit is None:
                try:
                    run = store.open(info.id)
                except SimDiffError as e:
                    return 404, _error_page(str(e)).encode(), None
                try:
                    body = page(run, s, notes, build(run.scores, s), explorer_link(info.id, s)).encode()
                except Exception as e:  # noqa: BLE001 - e.g. an imported run lacking what a chart needs: one line
                    from ui.views import one_line

                    return 500, _error_page(f"cannot draw run {info.id}: {one_line(e)}").encode(), None
                hit = (body, gzip.compress(body, compresslevel=6))   # compressed once: ~540 kB -> ~50 kB at 80 blocks
                with _LOCK:
                    _CACHE[key] = hit
                    while len(_CACHE) > CACHE_SIZE:
                        _CACHE.popitem(last=False)
    finally:
        with _LOCK:
            _BUILDING.pop(key, None)
    return (200, *hit)


def endpoint(request):
    """The Starlette endpoint (sync: Starlette runs it in its thread pool, off the event loop)."""
    from starlette.responses import Response

    status, body, gz = render(request.path_params["run_id"], dict(request.query_params))
    headers = {"Cache-Control": "no-cache"}   # a deleted or recomputed run must not be shown from a cache
    if gz is not None and "gzip" in request.headers.get("accept-encoding", ""):
        body = gz
        headers["Content-Encoding"] = "gzip"
    return Response(body, status_code=status, media_type="text/html; charset=utf-8", headers=headers)


def warm(limit: int = 8) -> None:
    """Build the default view of the ``limit`` most recently used readable runs (called in a thread at start)."""
    from simdiff_core.runs import RunStore

    store = RunStore()
    infos = sorted((i for i in store.list() if i.ok), key=lambda i: -(i.last_used or 0))[:limit]
    for info in infos:
        render(info.id, {}, store)


def routes() -> list:
    from starlette.routing import Route

    return [Route(PATH + "/{run_id}", endpoint)]
