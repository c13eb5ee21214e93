// Node test of ui/live_component/live_core.js against fixtures the Python side wrote (run by
// tests/app/test_live_component.py, which passes the fixture file in SD_LIVE_FIXTURES).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { assemble, canon, implied, removedFor, roundHalfEven, runs, sameState } from '../../ui/live_component/live_core.js';

const path = process.env.SD_LIVE_FIXTURES;
if (!path) throw new Error('SD_LIVE_FIXTURES is not set: run this through pytest tests/app/test_live_component.py');
const fx = JSON.parse(readFileSync(path, 'utf8'));

test('runs: the dropped blocks grouped as figures.contiguous_runs groups them', () => {
  assert.ok(fx.runs.length > 10);
  for (const c of fx.runs) assert.deepEqual(runs(c.drop), c.runs, JSON.stringify(c.drop));
});

test('the ratio slider gives the count plan.count_from_ratio gives (round halves to even)', () => {
  assert.ok(fx.counts.length > 100);
  for (const c of fx.counts) {
    const st = implied({L: c.L}, 'ratio', c.value, {k: 0, a: ''});
    assert.equal(st.k, c.k, `L=${c.L} ratio=${c.value}`);
  }
  assert.equal(roundHalfEven(2.5), 2);
  assert.equal(roundHalfEven(7.5), 8);
});

test('the α slider gives live_slider.akey; the count box takes integers only', () => {
  for (const c of fx.alphas) assert.equal(implied({L: 9}, 'alpha', c.value, {k: 2, a: ''}).a, c.a, c.value);
  assert.deepEqual(implied({L: 9}, 'count', '3', {k: 1, a: '0.50'}), {k: 3, a: '0.50'});
  assert.equal(implied({L: 9}, 'count', '3.5', {k: 1, a: ''}), null);
  assert.equal(implied({L: 9}, 'ratio', '', {k: 1, a: ''}), null);
});

test('removedFor and assemble give the planner\'s sets and the figure builders\' specs', () => {
  let checked = 0;
  for (const {payload, cases} of fx.payloads) {
    for (const c of cases) {
      const st = {k: c.k, a: c.a};
      const drop = removedFor(payload, st);
      assert.deepEqual(drop, c.removed, `k=${c.k} a=${c.a}`);
      for (const [chart, want] of Object.entries(c.charts || {})) {
        assert.deepEqual(assemble(payload, chart, st, drop), want, `${chart} k=${c.k} a=${c.a}`);
        assert.equal(canon(assemble(payload, chart, st, drop)), canon(want));
        checked += 1;
      }
    }
  }
  assert.ok(checked >= 10, `only ${checked} specs checked`);
});

test('sameState compares count and α key only', () => {
  assert.equal(sameState({k: 2, a: '0.50'}, {a: '0.50', k: 2}), true);
  assert.equal(sameState({k: 2, a: '0.50'}, {k: 3, a: '0.50'}), false);
  assert.equal(sameState(null, {k: 2, a: ''}), false);
});
