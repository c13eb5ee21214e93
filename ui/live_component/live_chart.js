// The live component's DOM side (ui/live_chart.py registers it): plotly charts and the block stack drawn
// in place, and repainted from the precomputed payload as the page's real widgets move. The pure
// functions (the payload's removed sets, specs, rounding) are in live_core.js, tested in Node.
import { assemble, canon, fmt4, implied, removedFor, sameState } from './live_core.js';

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
  // responsive only follows the window: a chart first drawn in a hidden tab (width 0: plotly's default
  // width) is resized when its own box gets a width
  if (!gd.__sdResize && window.ResizeObserver) {
    let w = gd.clientWidth;
    gd.__sdResize = new ResizeObserver(() => {
      const nw = gd.clientWidth;
      if (nw > 0 && nw !== w && gd.data) { w = nw; window.Plotly.Plots.resize(gd); }
    });
    gd.__sdResize.observe(gd);
  }
}

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
function move(kind, input) {
  for (const id of liveIds()) {
    const p = LIVE.payloads[id];
    if (p.bind[kind] !== input.getAttribute('aria-label')) continue;
    const cur = implied(p, kind, input.value, LIVE.current[id]);
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

// plotly.js, loaded once per page from the app's static files (a cacheable URL, ui/live_chart.py); a
// failed load (static serving off) asks the server to send it inline instead (the need_plotly trigger)
function loadPlotly(src) {
  if (!LIVE.plotly) {
    LIVE.plotly = new Promise((resolve, reject) => {
      const s = document.createElement('script');
      s.src = src;
      s.onload = () => (window.Plotly ? resolve() : reject(new Error('no window.Plotly')));
      s.onerror = () => reject(new Error(`cannot load ${src}`));
      document.head.appendChild(s);
    });
    LIVE.plotly.catch(() => { LIVE.plotly = null; });  // a later mount may try again
  }
  return LIVE.plotly;
}

// Charts on screen are drawn as soon as plotly.js is there; the others (below the fold, in a hidden tab)
// each in a task after the next frame, so the first charts show without waiting for every chart of the
// page (six charts of an 80-block run took 0.4-0.6 s in one task, bench/suite/reopen.py)
function onScreen(el) {
  const r = el.getBoundingClientRect();
  return r.width > 0 && r.bottom > 0 && r.top < window.innerHeight;
}
function soon(fn, now) {
  if (now) fn();
  else requestAnimationFrame(() => setTimeout(fn, 0));
}

export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  if (data.preload) {
    // ui/live_chart.preload: only start loading plotly.js (its charts come later in the page); this
    // element shows nothing, so its container takes no room either (no gap in the page's layout)
    const box = parentElement.closest('[data-testid=stElementContainer]');
    if (box) box.style.display = 'none';
    loadPlotly(data.preload).catch(() => {});  // a chart's own load retries and falls back
    return;
  }
  if (!window.Plotly && data.plotly_js) {  // the fallback: the server sent plotly.js inline
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
  if (kind === 'chart' && !window.Plotly) {
    root.__sdWaiting = data;  // the latest data for this element, drawn once plotly.js is there
    if (!data.plotly_src) { setTriggerValue('need_plotly', true); return; }
    loadPlotly(data.plotly_src).then(() => soon(() => mountWaiting(root, kind, setTriggerValue), onScreen(root)),
                                      () => setTriggerValue('need_plotly', true));
    return;
  }
  if (kind === 'chart' && !root.__sdEntry && !onScreen(root)) {  // a first draw off screen: a frame later
    root.__sdWaiting = data;
    soon(() => mountWaiting(root, kind, setTriggerValue), false);
    return;
  }
  root.__sdWaiting = null;
  mount(root, kind, data, setTriggerValue);
}

function mountWaiting(root, kind, setTriggerValue) {
  const d = root.__sdWaiting;  // the latest data (none: a later run drew it already)
  root.__sdWaiting = null;
  if (d && root.isConnected) mount(root, kind, d, setTriggerValue);
}

function mount(root, kind, data, setTriggerValue) {
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
    const widgetSays = P && P.input.isConnected && implied(LIVE.payloads[P.id] || {L: 0}, P.kind, P.input.value, P.st);
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
