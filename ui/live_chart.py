"""Charts and a block stack that update in place, and repaint before the server on a slider move (issue 17).

Why: ``st.plotly_chart`` (Streamlit 1.67) derives the element's id from the figure spec (its ``key`` is
not the main identity) and its frontend keeps the figure in React state initialised once per id. A
chart whose data changed is therefore a new element, unmounted and drawn from scratch by
``Plotly.newPlot`` (axes, ticks, every trace): 100-250 ms per chart per slider move on a loaded 2-core
machine, where the Streamlit round trip is ~40 ms. This ``st.components.v2`` component keeps one graph
div per ``key`` (a keyed v2 component keeps its identity when its data changes) and calls
``Plotly.react`` with the new figure, which diffs it against the drawn one and redraws only what moved.

Live binding (``live`` + ``payload``, ui/live_slider.py): even an in-place chart waits for the fragment's
rerun (a round trip plus Streamlit's render of the whole fragment, 3-6 x the floor). So a bound element
also repaints *from the payload* when the page's real widgets move: one document-level hook (components
v2 run in the main document) watches the sliders' hidden ``<input type=range>`` (a MutationObserver on
its value: keys and drags) and the count box's commits (Enter, blur, +/-), works out the count k (as
``round(ratio * L)``, halves to even, like Python) and α, and paints every bound element in the same
task. When the server's run arrives it is drawn as before (no redraw when it equals what is drawn); if
it names an older state than the one the client shows (a move still in flight, < 3 s) the client's is
kept. A server figure that differs from the client's paint of the same state is recorded in
``window.__sdLive.mismatches`` (the browser test asserts there is none). ``data-live`` on an element says
whether the hook found the bound widgets ("off": the server path alone draws it); ``data-painted``
says who drew it last.

The browser side is JavaScript in ``ui/live_component/``: ``live_core.js`` (the pure functions: removed
sets, specs from the payload, Python's rounding; tested in Node by tests/app/test_live_component.py
against fixtures this side writes) and ``live_chart.js`` (the DOM). A component's ``js`` is one module
string without a base URL, so ``live_chart.js``'s import of ``live_core.js`` is inlined here, and one
component serves the charts and the block stack.

plotly.js is plotly's *cartesian* bundle, vendored in ``ui/live_component/vendor/`` (1.5 MB: the charts draw
only scatter, bar and heatmap traces; the full bundle the ``plotly`` package ships is 4.8 MB, and fetching,
parsing and running it was most of the time from a run's link to its curves, bench/suite/reopen.py). It
must be the plotly.js version the installed ``plotly`` package bundles; where it is not, that package's full
bundle is served instead (``plotly_file``). It is served as a static, cacheable file
(``server.enableStaticServing`` in .streamlit/config.toml: ``static/plotly-cartesian-<version>.min.js``,
copied there on first use); the browser loads it by URL, once per page, and ``preload`` at the top of a
page starts that before the page's charts arrive. Where static serving is off (another config) or the
file cannot be written or loaded, the component asks for it through a trigger and the next run sends it
inline, once per session. Payloads likewise travel once per session and payload id. Cost on the server:
the spec's JSON per move (as ``st.plotly_chart``), once per settings the payload (tens to a few hundred kB).

AppTest has no browser: the element shows up as a ``bidi_component`` whose JSON data holds the spec
(``spec_of`` reads it back for tests; the block stack's holds its ``html``).
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path

import streamlit as st

from ui import state

ASSETS = Path(__file__).resolve().parent / "live_component"
STATIC = Path(__file__).resolve().parents[1] / "static"   # served at /app/static/ (enableStaticServing)
_CORE_IMPORT = "import { assemble, canon, fmt4, implied, removedFor, sameState } from './live_core.js';\n"
_SENT = "_sd_plotly_js_sent"
_PAYLOADS = "_sd_live_payloads_sent"


def component_js() -> str:
    """The component's one ES module: ``live_chart.js`` with its import of ``live_core.js`` inlined."""
    main = (ASSETS / "live_chart.js").read_text(encoding="utf-8")
    if _CORE_IMPORT not in main:
        raise RuntimeError("ui/live_component/live_chart.js: its import of live_core.js changed; update _CORE_IMPORT")
    return main.replace(_CORE_IMPORT, (ASSETS / "live_core.js").read_text(encoding="utf-8"))


VENDORED = ASSETS / "vendor" / "plotly-cartesian.min.js"
# scatter and bar only (1.2 MB): the quick view of a run (ui/run_view.py) draws nothing else, and the browser
# runs it in half the time of the cartesian bundle (0.46 s against 0.93 s to Plotly ready, measured here)
VENDORED_BASIC = ASSETS / "vendor" / "plotly-basic.min.js"


def package_plotly_file() -> Path:
    """The full plotly.js bundled with the installed ``plotly`` package."""
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def plotly_js_version(path: Path) -> str | None:
    """The plotly.js version a bundle's header names (``plotly.js (cartesian - minified) v4.1.1``), or None."""
    with open(path, "rb") as f:
        head = f.read(300).decode("utf-8", "replace")
    m = re.search(r"plotly\.js\b[^\n]*? v(\d+\.\d+\.\d+)", head)
    return m.group(1) if m else None


@lru_cache(maxsize=2)
def plotly_file(bundle: str = "cartesian") -> Path:
    """The plotly.js the browser gets: the vendored ``bundle`` ("cartesian", or "basic" for the quick view)
    when it is the version the installed ``plotly`` package bundles (the figure JSON is written for that
    version), else the package's full bundle."""
    full = package_plotly_file()
    vendored = VENDORED if bundle == "cartesian" else VENDORED_BASIC
    if vendored.is_file() and plotly_js_version(vendored) == plotly_js_version(full):
        return vendored
    return full


def served_name(bundle: str = "cartesian") -> str:
    """The file name plotly.js is served under: bundle and version in it, so a change is a new URL (no stale caches)."""
    src = plotly_file(bundle)
    return f"{src.name.removesuffix('.min.js')}-{plotly_js_version(src) or 'unknown'}.min.js"


@lru_cache(maxsize=1)
def _plotly_js() -> str:
    return plotly_file().read_text(encoding="utf-8")


def static_copy(bundle: str = "cartesian") -> str | None:
    """Copy plotly.js into ``static/`` under ``served_name(bundle)`` (once per version; never a half-written file
    at that name) and return the name, or None where the copy cannot be made."""
    name = served_name(bundle)
    target = STATIC / name
    src = plotly_file(bundle)
    try:
        if not target.is_file() or target.stat().st_size != src.stat().st_size:
            STATIC.mkdir(exist_ok=True)
            tmp = target.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(src.read_bytes())
            os.replace(tmp, target)
    except OSError:
        return None
    return name


@lru_cache(maxsize=1)
def plotly_url() -> str | None:
    """The URL of plotly.js in the app's static files (copied there once per version), or None where
    static serving is off or the copy cannot be made (the inline fallback then)."""
    if not st.get_option("server.enableStaticServing"):
        return None
    name = static_copy()
    if name is None:
        return None
    base = (st.get_option("server.baseUrlPath") or "").strip("/")
    return f"{'/' + base if base else ''}/app/static/{name}"


def preload() -> None:
    """Start loading plotly.js at this point of the page (call it first on a page that draws live charts).

    Why: the browser otherwise asks for plotly.js only when the first chart arrives, after the page's
    widgets, and then waits for its fetch and compile (~0.5-1 s on this machine) before drawing. Loaded
    here, that overlaps with the rest of the page's run and render. The element draws nothing and hides
    itself; without static serving it does nothing (the first chart's run sends plotly.js inline)."""
    url = plotly_url()
    if url is not None:
        _component()(data={"preload": url}, key="sd_plotly_preload")


@lru_cache(maxsize=1)
def _component():
    return st.components.v2.component("simdiff_live", js=component_js(), html="", isolate_styles=False)


def _resend() -> None:
    state.put(_SENT, False)


def _resend_payload() -> None:
    state.pop(_PAYLOADS)


def _live_data(data: dict, live: dict | None, payload: dict | None) -> dict:
    """Add the live binding (payload id, chart, the state the server drew) and, once per session, the payload."""
    if live is None:
        return data
    data["live"] = live
    sent = state.get(_PAYLOADS)
    if sent is None:
        sent = set()
        state.put(_PAYLOADS, sent)
    if payload is not None and payload["id"] not in sent:
        from ui.live_slider import public

        data["payload"] = json.dumps(public(payload), separators=(",", ":"))
        sent.add(payload["id"])
    return data


def plotly_live(spec: dict, key: str, config: dict | None = None, live: dict | None = None,
                payload: dict | None = None) -> None:
    """Draw ``spec`` (a plotly figure dict) in a graph that a later call with the same ``key`` updates in place.

    ``live`` (``{"id": payload id, "chart": name, "state": {"k", "a"}}``) and ``payload`` (ui/live_slider.py):
    the browser also repaints this chart from the payload when the bound widgets move, before the server.
    """
    data = {"spec": json.dumps(spec, separators=(",", ":")), "config": config or {}}
    url = plotly_url()
    if url is not None:
        data["plotly_src"] = url
    if state.get(_SENT) is False or (url is None and not state.get(_SENT)):
        # the browser could not load it by URL (it asked through need_plotly), or there is no URL
        data["plotly_js"] = _plotly_js()
        state.put(_SENT, True)
    _component()(data=_live_data(data, live, payload), key=key, on_need_plotly_change=_resend,
                 on_need_payload_change=_resend_payload)


def stack_live(html: str, key: str, live: dict | None = None, payload: dict | None = None) -> None:
    """The block stack (``views.block_diagram`` html) as a live element: repainted from ``payload`` on a move."""
    _component()(data=_live_data({"html": html}, live, payload), key=key, on_need_plotly_change=_resend,
                 on_need_payload_change=_resend_payload)


def spec_of(element) -> dict:
    """The figure spec a ``plotly_live`` element carries (AppTest: ``at.get("bidi_component")[i]``)."""
    return json.loads(json.loads(element.proto.json)["spec"])
