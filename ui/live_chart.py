"""A plotly chart that updates in place: the per-move charts of the slider fragments (issue 17).

Why: ``st.plotly_chart`` (Streamlit 1.67) derives the element's id from the figure spec (its ``key`` is
not the main identity) and its frontend keeps the figure in React state initialised once per id. A
chart whose data changed is therefore a new element, unmounted and drawn from scratch by
``Plotly.newPlot`` (axes, ticks, every trace): 100-250 ms per chart per slider move on a loaded 2-core
machine, where the Streamlit round trip is ~40 ms. This ``st.components.v2`` component keeps one graph
div per ``key`` (a keyed v2 component keeps its identity when its data changes) and calls
``Plotly.react`` with the new figure, which diffs it against the drawn one and redraws only what moved.

plotly.js is the copy bundled with the installed ``plotly`` package (no network): sent to a browser
session once, in the first chart's data, and run as a script there (``window.Plotly``); if a page ever
renders without it (a lost first message), the component asks for it again through a trigger and the
next run resends it. Cost on the server: the spec's JSON per move (as ``st.plotly_chart``) and, once
per session, ~4.6 MB of JavaScript.

AppTest has no browser: the element shows up as a ``bidi_component`` whose JSON data holds the spec
(``spec_of`` reads it back for tests).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import streamlit as st

_SENT = "_sd_plotly_js_sent"

_JS = r"""
export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  if (!window.Plotly && data.plotly_js) {
    const s = document.createElement('script');
    s.textContent = data.plotly_js;
    document.head.appendChild(s);
  }
  let gd = parentElement.querySelector(':scope > div.sd-live');
  if (!gd) {
    gd = document.createElement('div');
    gd.className = 'sd-live';
    gd.style.width = '100%';
    parentElement.appendChild(gd);
  }
  if (!window.Plotly) { setTriggerValue('need_plotly', true); return; }
  const fig = JSON.parse(data.spec);
  const layout = Object.assign({}, fig.layout, {autosize: true});
  const dataJson = JSON.stringify(fig.data);
  if (gd.data && gd.__sdData === dataJson && gd.__sdConfig === JSON.stringify(data.config)) {
    // same traces: only the layout moved (e.g. the dropped blocks' shapes): relayout just those keys,
    // a few ms, where Plotly.react would re-run every trace's defaults
    const prev = gd.__sdLayout, upd = {};
    for (const k of new Set([...Object.keys(prev), ...Object.keys(layout)]))
      if (JSON.stringify(prev[k]) !== JSON.stringify(layout[k])) upd[k] = layout[k] === undefined ? null : layout[k];
    gd.__sdLayout = layout;
    if (Object.keys(upd).length) window.Plotly.relayout(gd, upd);
    return;
  }
  gd.__sdData = dataJson;
  gd.__sdLayout = layout;
  gd.__sdConfig = JSON.stringify(data.config);
  // Plotly.react compares data arrays by reference: hand it the drawn arrays back wherever the new
  // figure has the same values, so a move that changes only the shapes or one colour array redraws
  // only that (no recalculation of every trace).
  const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
  const reuse = (nv, ov) => {
    if (nv === null || typeof nv !== 'object' || ov === null || typeof ov !== 'object') return nv;
    if (same(nv, ov)) return ov;
    if (!Array.isArray(nv) && !Array.isArray(ov)) for (const k of Object.keys(nv)) nv[k] = reuse(nv[k], ov[k]);
    return nv;
  };
  const old = gd.data || [];
  const traces = fig.data.map((t, i) => (i < old.length ? reuse(t, old[i]) : t));
  window.Plotly.react(gd, traces, layout, Object.assign({responsive: true}, data.config));
}
"""


@lru_cache(maxsize=1)
def _plotly_js() -> str:
    import plotly

    return (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def _component():
    return st.components.v2.component("simdiff_live_plotly", js=_JS, html="", isolate_styles=False)


def _resend() -> None:
    st.session_state[_SENT] = False


def plotly_live(spec: dict, key: str, config: dict | None = None) -> None:
    """Draw ``spec`` (a plotly figure dict) in a graph that a later call with the same ``key`` updates in place."""
    data = {"spec": json.dumps(spec, separators=(",", ":")), "config": config or {}}
    if not st.session_state.get(_SENT):
        data["plotly_js"] = _plotly_js()
        st.session_state[_SENT] = True
    _component()(data=data, key=key, on_need_plotly_change=_resend)


def spec_of(element) -> dict:
    """The figure spec a ``plotly_live`` element carries (AppTest: ``at.get("bidi_component")[i]``)."""
    return json.loads(json.loads(element.proto.json)["spec"])
