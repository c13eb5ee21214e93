// The quick view's page script (ui/run_view.py): draws a stored run's Layer curves from the payload the
// page carries, and repaints them when its ratio or α slider moves -- no server, no session. The pure
// functions (removedFor, assemble, implied, fmt4, ...) are live_core.js's, inlined before this file by
// ui/run_view.py, so the view assembles each chart exactly as the explorer's live charts do.
(() => {
  const p = JSON.parse(document.getElementById('sd-payload').textContent);
  const init = JSON.parse(document.getElementById('sd-init').textContent);
  const $ = (id) => document.getElementById(id);
  const ratio = $('sd-ratio'), alpha = $('sd-alpha'), open = $('sd-open'), said = $('sd-dropped');
  // window.__sdView: what the page drew and each chart's last draw time in ms (ms_curves, ms_simdiff); the
  // browser test and bench/suite/reopen.py read it
  const V = window.__sdView = {drawn: 0, state: null, dropped: null, mismatch: null};
  let st = {k: init.k, a: init.a};

  function describe(drop, r) {
    if (drop === null) {
      return `No plan at ratio ${r.toFixed(2)}: ${st.k} blocks to remove, and the planner allows 1 to ` +
        `${p.kmax} of ${p.L} with these locks.`;
    }
    return `Highlighted: the ${drop.length} blocks that ${init.criterion} at ratio ${r.toFixed(2)} would drop: ` +
      `[${drop.join(', ')}]`;
  }

  function draw() {
    const drop = removedFor(p, st);
    for (const name of ['curves', 'simdiff']) {
      const t0 = performance.now();
      const spec = assemble(p, name, st, drop || []);
      const cfg = Object.assign({responsive: true}, init.config[name === 'curves' ? 'layer_curves' : 'simdiff_importance']);
      if (spec) window.Plotly.react($(name), spec.data, spec.layout, cfg);
      V['ms_' + name] = performance.now() - t0;
    }
    V.drawn += 1;
    V.state = Object.assign({}, st);
    V.dropped = drop;
    return drop;
  }

  // the address bar and the explorer link follow the sliders: a copied link is what is on screen
  function follow(r, a) {
    for (const u of [new URL(location.href), new URL(open.href)]) {
      u.searchParams.set('ratio', String(Number(r.toFixed(2))));
      u.searchParams.set('alpha', String(Number(a.toFixed(2))));
      if (u.pathname === location.pathname) history.replaceState(null, '', u); else open.href = u.toString();
    }
  }

  function show() {
    const r = Number(ratio.value), a = Number(alpha.value);
    $('sd-ratio-v').textContent = r.toFixed(2);
    $('sd-alpha-v').textContent = a.toFixed(2);
    return [r, a];
  }

  function move() {
    const [r, a] = show();
    const k = r >= 1 ? p.L : implied(p, 'ratio', ratio.value, st).k;
    st = {k, a: a.toFixed(2)};
    said.textContent = describe(draw(), r);
    follow(r, a);
  }

  show();
  const first = draw();
  // the server's plan (simdiff_core.pruning.plan.make_plan) must be what the payload gives for this state
  if (init.problem) said.textContent = `No plan: ${init.problem}`;
  else said.textContent = describe(first, init.ratio);
  if (JSON.stringify(first) !== JSON.stringify(init.dropped)) {
    V.mismatch = {server: init.dropped, payload: first};
  }
  ratio.addEventListener('input', move);
  alpha.addEventListener('input', move);
})();
