// The pure part of the live component: what a chart or the block stack shows for a state, from the
// precomputed payload (ui/live_slider.py). No DOM here: tests/app/live_component.test.mjs runs these
// in Node against fixtures the Python side writes (tests/app/test_live_component.py).
// A state is {k: block count, a: α key ("0.35"; "" when the order does not depend on α)}.

// ui/live_slider.py: removed — sorted(orders[akey][:k]), null where the planner refuses k
export function removedFor(p, st) {
  if (!(st.k >= 1 && st.k <= p.kmax)) return null;
  const order = p.orders[st.a in p.orders ? st.a : ''];
  return order.slice(0, st.k).sort((x, y) => x - y);
}

// simdiff_core/export/figures.py: contiguous_runs — sorted blocks -> [first, last] of each run
export function runs(drop) {
  const out = [];
  for (const i of drop) {
    if (out.length && out[out.length - 1][1] === i - 1) out[out.length - 1][1] = i; else out.push([i, i]);
  }
  return out;
}

// ui/live_slider.py: assemble — the chart's spec at state st with the removed set drop
export function assemble(p, chart, st, drop) {
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
export function roundHalfEven(x) {
  const f = Math.floor(x), d = x - f;
  return d > 0.5 ? f + 1 : d < 0.5 ? f : (f % 2 === 0 ? f : f + 1);
}

// the state a widget's value (its text) implies, from the state `base`; null: not a value the server
// would take as it is. kind: 'ratio' (k = round(ratio * L), at least 1: simdiff_core.pruning.plan's
// count_from_ratio), 'count' (an integer k), 'alpha' (the α key, two decimals)
export function implied(p, kind, value, base) {
  const cur = Object.assign({}, base);
  const v = Number(value);
  if (value === '' || !Number.isFinite(v)) return null;
  if (kind === 'ratio') cur.k = Math.max(1, roundHalfEven(v * p.L));
  else if (kind === 'count') { if (!Number.isInteger(v)) return null; cur.k = v; }
  else cur.a = v.toFixed(2);
  return cur;
}

export const sameState = (a, b) => Boolean(a && b && a.k === b.k && a.a === b.a);

// key order and float noise do not count as a difference between the client's and the server's figure
export const canon = (x) => JSON.stringify(x, (k, v) => {
  if (typeof v === 'number') return Number(v.toPrecision(12));
  if (v && typeof v === 'object' && !Array.isArray(v))
    return Object.fromEntries(Object.keys(v).sort().map((key) => [key, v[key]]));
  return v;
});

export const fmt4 = (v) => (Math.round(v * 1e4) / 1e4).toFixed(4);
