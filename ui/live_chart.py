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

plotly.js is the copy bundled with the installed ``plotly`` package (no network): sent to a browser
session once, in the first chart's data, and run as a script there (``window.Plotly``); if a page ever
renders without it (a lost first message), the component asks for it again through a trigger and the
next run resends it; the payloads likewise (once per session and payload id). Cost on the server: the
spec's JSON per move (as ``st.plotly_chart``), once per session ~4.6 MB of JavaScript, once per
settings the payload (tens to a few hundred kB).

AppTest has no browser: the element shows up as a ``bidi_component`` whose JSON data holds the spec
(``spec_of`` reads it back for tests; the block stack's holds its ``html``).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import streamlit as st

from ui import state

_SENT = "_sd_plotly_js_sent"
_PAYLOADS = "_sd_live_payloads_sent"

_JS = r"""
const LIVE = window.__sdLive || (window.__sdLive = {
  payloads: {}, els: new Set(), pending: null, current: {}, mismatches: [], log: [], paintMs: [], seen: new WeakMap(), clientPaints: 0, serverDraws: 0,
  hooked: false});

// ---- drawing a plotly figure in place (the server path and the client path both end here)
function draw(gd, fig, config) {
  const layout = Object.assign({}, fig.layout, {autosize: true});
  const dataJson = JSON.stringify(fig.data);
  const cfg = JSON.stringify(config);
  // the layout as sent, key by key (plotly writes into the layout object it draws: autorange, range)
  const keys = Object.fromEntries(Object.keys(layout).map((k) => [k, JSON.stringify(layout[k])]));
  if (gd.data && gd.__sdData === dataJson && gd.__sdConfig === cfg) {
    // same traces: only the layout moved (e.g. the dropped blocks' shapes): relayout just those keys,
    // a few ms, where Plotly.react would re-run every trace's defaults; nothing when nothing moved
    const prev = gd.__sdKeys, upd = {};
    for (const k of new Set([...Object.keys(prev), ...Object.keys(keys)]))
      if (prev[k] !== keys[k]) upd[k] = layout[k] === undefined ? null : layout[k];
    gd.__sdKeys = keys;
    if (Object.keys(upd).length) window.Plotly.relayout(gd, upd);
    return;
  }
  gd.__sdData = dataJson;
  gd.__sdKeys = keys;
  gd.__sdConfig = cfg;
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
  const traces = JSON.parse(dataJson).map((t, i) => (i < old.length ? reuse(t, old[i]) : t));
  window.Plotly.react(gd, traces, layout, Object.assign({responsive: true}, config));
}

// key order and float noise do not count as a difference between the client's and the server's figure
const canon = (x) => JSON.stringify(x, (k, v) => {
  if (typeof v === 'number') return Number(v.toPrecision(12));
  if (v && typeof v === 'object' && !Array.isArray(v))
    return Object.fromEntries(Object.keys(v).sort().map((key) => [key, v[key]]));
  return v;
});

// ---- the precomputed payload (ui/live_slider.py): what the preview shows at each count / alpha
function removedFor(p, st) {
  if (!(st.k >= 1 && st.k <= p.kmax)) return null;
  const order = p.orders[st.a in p.orders ? st.a : ''];
  return order.slice(0, st.k).sort((x, y) => x - y);
}
function runs(drop) {
  const out = [];
  for (const i of drop) {
    if (out.length && out[out.length - 1][1] === i - 1) out[out.length - 1][1] = i; else out.push([i, i]);
  }
  return out;
}
function assemble(p, chart, st, drop) {  // ui/live_slider.py: assemble
  const c = p.charts[chart];
  const f = c.frames[c.by === 'k' ? String(st.k) : c.by === 'a' ? st.a : ''];
  if (!f) return null;
  const layout = Object.assign({}, c.base.layout, f.layout || {});
  if (f.groups) {
    const shapes = [...(c.base.layout.shapes || [])];
    for (const g of f.groups) {
      if (g.each) for (const i of drop) shapes.push(g.each[i]);
      else for (const [lo, hi] of runs(drop)) shapes.push(Object.assign({}, g.run, {x0: lo - g.pad, x1: hi + g.pad}));
    }
    layout.shapes = shapes;
  }
  return {data: f.data || c.base.data, layout};
}
// Python's round(): halves to even (x * L is the same double in both languages)
function roundHalfEven(x) {
  const f = Math.floor(x), d = x - f;
  return d > 0.5 ? f + 1 : d < 0.5 ? f : (f % 2 === 0 ? f : f + 1);
}
const sameState = (a, b) => a && b && a.k === b.k && a.a === b.a;
const fmt4 = (v) => (Math.round(v * 1e4) / 1e4).toFixed(4);

function paintStack(el, drop, imp) {
  const gone = new Set(drop);
  el.querySelectorAll('.sd-block').forEach((cell, i) => {
    const g = gone.has(i);
    cell.className = g ? 'sd-block sd-gone' : 'sd-block';
    cell.title = `block ${i}: ${g ? 'removed' : 'kept'}` + (imp ? ` · importance ${fmt4(imp[i])}` : '');
  });
}

// the client path: paint this element for state st from its payload; false when it cannot
function paintClient(e, st) {
  const p = LIVE.payloads[e.live.id];
  if (!p) return false;
  const drop = removedFor(p, st);
  if (!drop) return false;
  if (e.kind === 'stack') {
    paintStack(e.root, drop, p.importance[st.a in p.importance ? st.a : '']);
    e.root.dataset.removed = JSON.stringify(drop);
    e.client = {st, removed: drop};
  } else {
    if (!window.Plotly) return false;
    const made = assemble(p, e.live.chart, st, drop);
    if (!made) return false;
    // a deep copy: plotly writes into the layout it draws (autorange, range), never into the payload
    const fig = JSON.parse(JSON.stringify(made));
    e.client = {st, fig: JSON.parse(JSON.stringify(made))};  // compared (canon) when the server answers
    draw(e.root, fig, e.config);
  }
  e.root.dataset.painted = 'client';
  LIVE.clientPaints += 1;
  LIVE.log.push([Math.round(performance.now()), 'paint', e.kind, st.k, st.a]);
  return true;
}

// the server path: what the fragment run sent (the authority); checks it against a client paint of
// the same state (a difference is recorded in window.__sdLive.mismatches: the browser test reads it)
function drawServer(e) {
  const d = e.data;
  let serverCanon;
  if (e.kind === 'stack') {
    if (e.root.__sdHtml !== d.html || e.root.dataset.painted === 'client') {
      e.root.innerHTML = d.html;
      e.root.__sdHtml = d.html;
    }
    e.root.dataset.removed = JSON.stringify(d.live ? d.live.removed : []);
    serverCanon = e.root.dataset.removed;
  } else {
    const fig = JSON.parse(d.spec);
    serverCanon = canon(fig);
    draw(e.root, fig, d.config);
  }
  if (e.client && d.live && sameState(e.client.st, d.live.state)) {
    const clientCanon = e.kind === 'stack' ? JSON.stringify(e.client.removed) : canon(e.client.fig);
    if (clientCanon !== serverCanon)
      LIVE.mismatches.push({kind: e.kind, chart: d.live.chart || 'stack', state: d.live.state,
                            client: clientCanon, server: serverCanon});
  }
  e.client = null;
  e.root.dataset.painted = 'server';
  LIVE.serverDraws += 1;
}

// ---- the widgets: the real Streamlit inputs, found by their aria-label
function liveIds() {
  const ids = new Set();
  for (const e of [...LIVE.els]) {
    if (!e.root.isConnected) { LIVE.els.delete(e); continue; }
    if (e.live && LIVE.payloads[e.live.id]) ids.add(e.live.id);
  }
  return ids;
}
// the state a widget's value implies (null: not a value the server would take as it is)
function implied(p, kind, input, base) {
  const cur = Object.assign({}, base);
  const v = Number(input.value);
  if (input.value === '' || !Number.isFinite(v)) return null;
  if (kind === 'ratio') cur.k = Math.max(1, roundHalfEven(v * p.L));
  else if (kind === 'count') { if (!Number.isInteger(v)) return null; cur.k = v; }
  else cur.a = v.toFixed(2);
  return cur;
}
function move(kind, input) {
  for (const id of liveIds()) {
    const p = LIVE.payloads[id];
    if (p.bind[kind] !== input.getAttribute('aria-label')) continue;
    const cur = implied(p, kind, input, LIVE.current[id]);
    LIVE.log.push([Math.round(performance.now()), kind, input.value, cur && cur.k, cur && cur.a]);
    if (LIVE.log.length > 50) LIVE.log.shift();
    if (!cur || sameState(cur, LIVE.current[id])) continue;
    LIVE.current[id] = cur;
    LIVE.pending = {id, st: cur, t: performance.now(), kind, input};
    const t = performance.now();
    // the charts first: plotly reads the layout (a forced reflow), cheaper before the stack's classes change
    const mine = [...LIVE.els].filter((e) => e.live && e.live.id === id);
    for (const e of mine.filter((x) => x.kind === 'chart').concat(mine.filter((x) => x.kind !== 'chart')))
      paintClient(e, cur);
    LIVE.paintMs.push(performance.now() - t);  // the whole repaint of one move (bench/browser_slider.py)
    if (LIVE.paintMs.length > 200) LIVE.paintMs.shift();
  }
}
function kindOf(input) {
  for (const id of liveIds()) {
    const b = LIVE.payloads[id].bind, label = input.getAttribute('aria-label');
    for (const kind of ['ratio', 'count', 'alpha']) if (b[kind] && b[kind] === label) return kind;
  }
  return null;
}
function hook() {
  if (LIVE.hooked) return;
  LIVE.hooked = true;
  // sliders: react-aria keeps a hidden <input type=range> whose value follows the thumb (keys and drags)
  new MutationObserver((ms) => {
    for (const m of ms) {
      const t = m.target;
      if (t.tagName !== 'INPUT' || t.type !== 'range') continue;
      // a re-render that sets the same value again (e.g. during a run) is not a move; neither is the
      // first sight of a new input element (it shows what the server rendered)
      const seen = LIVE.seen.get(t);
      LIVE.seen.set(t, t.value);
      if (seen === undefined || seen === t.value) continue;
      const k = kindOf(t);
      if (k) move(k, t);
    }
  }).observe(document.body, {subtree: true, attributes: true, attributeFilter: ['value', 'aria-valuetext']});
  // the count box commits like Streamlit's number_input: Enter, blur, or the +/- buttons
  const commit = (t) => { if (t && t.tagName === 'INPUT' && t.type === 'number') { const k = kindOf(t); if (k) move(k, t); } };
  document.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') commit(ev.target); }, true);
  document.addEventListener('focusout', (ev) => commit(ev.target), true);
  document.addEventListener('click', (ev) => {
    const b = ev.target.closest && ev.target.closest('[data-testid=stNumberInputStepUp],[data-testid=stNumberInputStepDown]');
    if (b) setTimeout(() => commit(b.closest('[data-testid=stNumberInput]').querySelector('input')), 0);
  }, true);
}

export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  if (!window.Plotly && data.plotly_js) {
    const s = document.createElement('script');
    s.textContent = data.plotly_js;
    document.head.appendChild(s);
  }
  if (data.payload) { const p = JSON.parse(data.payload); LIVE.payloads[p.id] = p; }
  const kind = data.html !== undefined ? 'stack' : 'chart';
  const cls = kind === 'stack' ? 'sd-live-stack' : 'sd-live';
  let root = parentElement.querySelector(`:scope > div.${cls}`);
  if (!root) {
    root = document.createElement('div');
    root.className = cls;
    root.style.width = '100%';
    parentElement.appendChild(root);
  }
  if (kind === 'chart' && !window.Plotly) { setTriggerValue('need_plotly', true); return; }
  let e = root.__sdEntry;
  if (!e) { e = root.__sdEntry = {root, kind}; LIVE.els.add(e); }
  e.data = data; e.live = data.live || null; e.config = data.config;
  if (e.live) {
    hook();
    for (const t of document.querySelectorAll('input[type=range]')) if (!LIVE.seen.has(t)) LIVE.seen.set(t, t.value);
    // explicit fallback: without the bound widgets in the page (another Streamlit, renamed labels) the
    // element is drawn by the server path alone; data-live says which
    const p = LIVE.payloads[e.live.id];
    if (p) root.dataset.live = Object.values(p.bind).filter(Boolean)
      .every((label) => document.querySelector(`input[aria-label="${label}"]`)) ? 'on' : 'off';
    const id = e.live.id;
    if (!LIVE.payloads[id])
      setTimeout(() => { if (!LIVE.payloads[id] && root.isConnected) setTriggerValue('need_payload', id); }, 2000);
    // the server answered an older move than the one the client shows (the widget still says the
    // client's state: a newer run is on its way): keep the client's state. If the widget says otherwise
    // (the server or the widget normalised the value) or after 3 s, the server's state wins.
    const P = LIVE.pending;
    const widgetSays = P && P.input.isConnected && implied(LIVE.payloads[P.id] || {L: 0}, P.kind, P.input, P.st);
    if (P && P.id === id && !sameState(P.st, e.live.state) && performance.now() - P.t < 3000 &&
        sameState(widgetSays, P.st)) {
      if (e.client && sameState(e.client.st, P.st)) return;  // already shows it
      if (paintClient(e, P.st)) return;
    }
    if (P && P.id === id) LIVE.pending = null;  // confirmed, or overruled by the server
    LIVE.current[id] = Object.assign({}, e.live.state);
  }
  drawServer(e);
}
"""


@lru_cache(maxsize=1)
def _plotly_js() -> str:
    import plotly

    return (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def _component():
    return st.components.v2.component("simdiff_live_plotly", js=_JS, html="", isolate_styles=False)


@lru_cache(maxsize=1)
def _stack_component():
    return st.components.v2.component("simdiff_live_stack", js=_JS, html="", isolate_styles=False)


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
    if not state.get(_SENT):
        data["plotly_js"] = _plotly_js()
        state.put(_SENT, True)
    _component()(data=_live_data(data, live, payload), key=key, on_need_plotly_change=_resend,
                 on_need_payload_change=_resend_payload)


def stack_live(html: str, key: str, live: dict | None = None, payload: dict | None = None) -> None:
    """The block stack (``views.block_diagram`` html) as a live element: repainted from ``payload`` on a move."""
    _stack_component()(data=_live_data({"html": html}, live, payload), key=key,
                       on_need_payload_change=_resend_payload)


def spec_of(element) -> dict:
    """The figure spec a ``plotly_live`` element carries (AppTest: ``at.get("bidi_component")[i]``)."""
    return json.loads(json.loads(element.proto.json)["spec"])
