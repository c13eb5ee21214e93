# over 400 lines: one standalone benchmark (the no-op app, the in-page timers and the report stay in one runnable file)
"""Browser benchmark: how long a pruning-slider move takes until the preview shows the new set.

    python bench/browser_slider.py                 # N = 24 moves per page, prints one JSON line
    python bench/browser_slider.py --moves 40 --json-out bench/browser_slider.json

Starts ``streamlit run`` on loopback (the shipped config), calibrates the embedded SmolLM2-135M (30
blocks) on 2 x 32 tokens and a random-weight 80-block Llama built from a config, and in headless
Chromium (Debian's /usr/bin/chromium, Playwright) moves

* the **Blocks to remove** count on Prune preview (type a new count, Enter), and
* the **Pruning ratio** slider on Layer curves (keyboard PageUp/PageDown: 0.10 per press),

timing, inside the page, from the key event's timestamp to the first animation frame in which the
preview shows the new set: on Prune preview the greyed blocks of the block stack and the first row of
the criteria-overlap chart are the same k blocks; on Layer curves the dropped blocks' shading on the
curves and the red bars of the importance chart are the same blocks, as many as ``round(ratio * L)``
for the slider's new value. After each move's server run the set painted is compared with the set the
server's text line names (``painted_set_differs_from_server``, must be 0), and the live elements'
client/server mismatch counter (ui/live_chart.py) must not move. The same two controls on a no-op page
(a slider, a number box and one line of text) give the Streamlit round-trip floor on this machine,
measured interleaved with the app. Reported: median and p90 per page and model, ratios to the floor,
the full-page reruns the moves caused (the page run counters; must be 0: a move reruns only the
fragment) and the client paints.

Goals (issue 17): 30 blocks: median <= 1.5 x floor and <= 150 ms; 80 blocks: p90 <= 250 ms.
Cost: about 3-5 minutes (two calibrations on tiny settings, ~200 browser moves); ``--blocks 30 --moves 6``
for a quick check (~1 minute).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NOOP_APP = '''
import streamlit as st
st.title("no-op")
r = st.slider("Pruning ratio", 0.01, 1.0, 0.25, step=0.01, key="r")
k = st.number_input("Blocks to remove", 1, 80, 8, key="k")
st.markdown(f"Highlighted: the **{k}** blocks at ratio {r:.2f}")
'''

# In-page timer: t0 = the key event's timestamp (window, capture phase: before any page handler), t1 = the
# first animation frame whose DOM passes the page's check. The checks read the DOM and the plotly graph
# divs' data and layout (what the charts draw), and record the set shown (window.__sd.set).
WATCH_JS = r"""
(args) => {
  const [mode, target] = args;
  const DROP = '#e11d48';
  const texts = () => [...document.querySelectorAll('[data-testid=stMarkdownContainer]')].map(e => e.textContent);
  const plots = () => [...document.querySelectorAll('.js-plotly-plot')].filter(g => g.data && g.data.length);
  const slider = () => document.querySelector('input[type=range][aria-label="Pruning ratio"]');
  const sd = window.__sd = {t0: null, t1: null, t2: null, set: null};
  // the server's run confirms: its text line names the set painted (Prune preview / Layer curves)
  const confirmRe = mode === 'preview_count' ? /removes \d+ of \d+ blocks: \[([\d, ]*)\]/
                  : mode === 'curves_ratio' ? /would drop: \[([\d, ]*)\]/ : null;
  const confirmed = () => texts().some(t => { const m = t.match(confirmRe);
    return m && JSON.stringify(m[1] ? m[1].split(',').map(Number) : []) === JSON.stringify(sd.set); });
  const checks = {
    noop_count: () => texts().some(t => t.includes(`the ${target} blocks`)),
    noop_ratio: () => { const r = parseFloat(slider().value).toFixed(2);
                        return texts().some(t => t.includes(`at ratio ${r}`)); },
    preview_count: () => {
      // the block stack and the criteria-overlap chart's first row (this criterion) show the same k blocks
      const gone = [...document.querySelectorAll('.sd-block')].map((c, i) => c.classList.contains('sd-gone') ? i : -1)
        .filter(i => i >= 0);
      if (gone.length !== target) return false;
      const heat = plots().filter(g => g.data[0].type === 'heatmap');
      if (heat.length !== 1) return false;
      const row = heat[0].data[0].z[0].map((v, i) => v === 1 ? i : -1).filter(i => i >= 0);
      if (JSON.stringify(row) !== JSON.stringify(gone)) return false;
      sd.set = gone;
      return true;
    },
    curves_ratio: () => {
      const x = parseFloat(slider().value) * target, f = Math.floor(x), d = x - f;   // Python's round(ratio * L)
      const k = Math.max(1, d > 0.5 ? f + 1 : d < 0.5 ? f : (f % 2 === 0 ? f : f + 1));
      const ps = plots();
      const curves = ps.filter(g => g.data.some(t => t.xaxis === 'x3'));
      const bars = ps.filter(g => g.data[0].type === 'bar');
      if (curves.length !== 1 || bars.length !== 1) return false;
      // the dropped blocks: shaded columns (shapes named 'dropped') on the first panel, red shapes on the bars
      const shaded = (curves[0].layout.shapes || []).filter(s => s.name === 'dropped' && s.xref === 'x')
        .flatMap(s => Array.from({length: Math.round(s.x1 - s.x0)}, (_, j) => Math.round(s.x0 + 0.5) + j));
      const red = (bars[0].layout.shapes || []).filter(s => s.name === 'dropped' && s.fillcolor === DROP)
        .map(s => Math.round((s.x0 + s.x1) / 2));
      if (shaded.length !== k || JSON.stringify(red) !== JSON.stringify(shaded)) return false;
      sd.set = red;
      return true;
    },
  };
  if (!window.__sdKey) {
    window.__sdKey = true;
    window.addEventListener('keydown', (ev) => { if (window.__sd.t0 === null) window.__sd.t0 = ev.timeStamp; }, true);
  }
  const check = () => {
    let ok = false;
    if (sd.t1 === null) {
      try { ok = sd.t0 !== null && checks[mode](); } catch (e) { ok = false; }
      if (ok) sd.t1 = performance.now();
      if (ok && !confirmRe) { sd.t2 = sd.t1; return; }
    }
    if (sd.t1 !== null && confirmRe && confirmed()) { sd.t2 = performance.now(); return; }
    requestAnimationFrame(check);
  };
  requestAnimationFrame(check);
}
"""

# The set the server's run names (after the move's run): Prune preview's plan line, Layer curves' highlight line.
SERVER_SET_JS = r"""
(mode) => {
  const texts = [...document.querySelectorAll('[data-testid=stMarkdownContainer]')].map(e => e.textContent);
  const re = mode === 'preview_count' ? /removes \d+ of \d+ blocks: \[([\d, ]*)\]/ : /would drop: \[([\d, ]*)\]/;
  for (const t of texts) { const m = t.match(re); if (m) return m[1] ? m[1].split(',').map(Number) : []; }
  return null;
}
"""


def _stats(ms: list[float]) -> dict:
    xs = sorted(ms)
    p90 = xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]
    return {"median": round(statistics.median(xs), 1), "p90": round(p90, 1), "min": round(xs[0], 1),
            "max": round(xs[-1], 1), "n": len(xs)}


WRONG: list = []  # moves whose painted set differed from the set the server's run then named
CONFIRM: list = []  # key event -> the server's text line names the painted set, ms (app moves)


def _timed_move(page, mode: str, target, act) -> float:
    from tests.support.streamlit_server import idle

    page.evaluate(WATCH_JS, [mode, target])
    act()
    page.wait_for_function("() => window.__sd.t1 !== null", timeout=60_000, polling=50)
    try:  # the server's confirmation (for the report; a set it never names is counted below)
        page.wait_for_function("() => window.__sd.t2 !== null", timeout=10_000, polling=50)
    except Exception:  # noqa: BLE001 - playwright's TimeoutError
        pass
    ms, shown, confirm = page.evaluate("() => [window.__sd.t1 - window.__sd.t0, window.__sd.set, "
                                       "window.__sd.t2 === null ? null : window.__sd.t2 - window.__sd.t0]")
    if confirm is not None and not mode.startswith("noop"):
        CONFIRM.append(float(confirm))
    idle(page)  # the run is over before the next move
    if not mode.startswith("noop"):
        server = page.evaluate(SERVER_SET_JS, mode)
        if server != shown:
            WRONG.append({"mode": mode, "painted": shown, "server": server})
    return float(ms)


def count_moves(page, mode: str, L: int, n: int, seed: int = 0, warm: int = 2) -> list[float]:
    import random

    rnd = random.Random(seed)
    box = page.get_by_label("Blocks to remove", exact=True)
    cur = int(box.input_value())
    out = []
    for _ in range(n + warm):  # the first ``warm`` moves warm the caches and are dropped
        k = cur
        while k == cur:
            k = rnd.randint(2, max(3, L // 2))
        box.fill(str(k))
        out.append(_timed_move(page, mode, k, lambda: box.press("Enter")))
        cur = k
    return out[warm:]


def ratio_moves(page, mode: str, n: int, start: int = 0, warm: int = 2, L: int = 0) -> list[float]:
    thumb = page.get_by_role("slider", name="Pruning ratio")
    thumb.focus()
    pattern = ["PageUp"] * 3 + ["PageDown"] * 3  # 0.25 -> 0.55 -> 0.25: every press changes the count
    out = []
    for i in range(start, start + n + warm):
        key = pattern[i % len(pattern)]
        out.append(_timed_move(page, mode, L, lambda: thumb.press(key)))
    return out[warm:]


def live_state(page) -> dict:
    """The live elements' counters (ui/live_chart.py): client paints, server draws, client/server mismatches."""
    return page.evaluate("() => window.__sdLive ? {client: window.__sdLive.clientPaints, server: "
                         "window.__sdLive.serverDraws, mismatches: window.__sdLive.mismatches.length, "
                         "paint_ms: [...window.__sdLive.paintMs]} : null")


def page_runs(page) -> dict:
    return page.evaluate("() => Object.fromEntries([...document.querySelectorAll('.sd-runs')]"
                         ".map(e => [e.dataset.name, +e.dataset.count]))")


def build_80_block_model(out: Path) -> Path:
    """A random-weight 80-block Llama (hidden 64) with the embedded model's tokenizer, saved to ``out``."""
    from simdiff_core.models.load import load_model
    from tests.support.tiny import tiny_model

    tok = load_model("default").tokenizer  # from the dequantised cache after the first load
    tiny_model("llama", num_layers=80).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def calibrate(page, model_dir: str | None) -> None:
    from playwright.sync_api import expect

    from tests.support.streamlit_server import idle, set_number

    if model_dir:
        page.get_by_role("combobox", name="Model source").click()  # the selectbox opens its option list
        page.get_by_role("option", name="Local model directory").click()
        idle(page)
        box = page.get_by_label("Local model directory", exact=True)
        box.fill(model_dir)
        box.press("Enter")
        idle(page)
    set_number(page, "Samples", 2)
    set_number(page, "Seq. length", 32)
    page.get_by_role("button", name="Load & calibrate").click()
    expect(page.get_by_text("Calibrated on 2 × 32")).to_be_visible(timeout=600_000)
    idle(page)


def goto(page, label: str) -> None:
    from tests.support.streamlit_server import idle

    page.locator("[data-testid=stSidebarNav] a", has_text=label).first.click()
    idle(page)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--moves", type=int, default=24, help="timed moves per page and model (>= 20 for the issue)")
    ap.add_argument("--blocks", default="30,80", help="models to run: 30 (embedded), 80 (config-built), or both")
    ap.add_argument("--json-out", default=None, help="also write the result JSON here")
    ap.add_argument("--write-results", action="store_true", help="update this benchmark's section of bench/RESULTS.md")
    args = ap.parse_args(argv)

    from playwright.sync_api import sync_playwright

    from tests.support.streamlit_server import CHROMIUM, idle, running_app

    if CHROMIUM is None:
        sys.exit("error: Debian chromium not found (apt-get install chromium)")
    res: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="sd-browser-bench-"))
    (tmp / "noop.py").write_text(NOOP_APP)
    t_start = time.perf_counter()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])

        def new_page(url):
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.set_default_timeout(240_000)
            page.goto(url)
            idle(page)
            return page

        sizes = [int(b) for b in args.blocks.split(",")]
        model80 = str(build_80_block_model(tmp / "llama80")) if 80 in sizes else None
        # The floor is measured interleaved with the app (one floor move, one app move, ...): on a shared
        # machine the load drifts, and a floor measured minutes apart would not be comparable.
        with running_app(tmp / "noop.log", {}, script=str(tmp / "noop.py")) as (noop_url, _), \
                running_app(tmp / "app.log", {"SIMDIFF_EXPORT_DIR": str(tmp / "exports")}) as (url, _):
            noop = new_page(noop_url)
            floors = {"count": [], "ratio": []}
            for L, model_dir in [(L, m) for L, m in ((30, None), (80, model80)) if L in sizes]:
                page = new_page(url)
                calibrate(page, model_dir)
                for label, name, kind in (("Prune preview", "preview", "count"), ("Layer curves", "curves", "ratio")):
                    goto(page, label)
                    before, live0, wrong0, conf0 = page_runs(page), live_state(page), len(WRONG), len(CONFIRM)
                    app_ms, floor_ms = [], []
                    for i in range(args.moves + 2):
                        seed = 1000 * L + i
                        if kind == "count":
                            floor_ms += count_moves(noop, "noop_count", L, 1, seed=seed, warm=0)
                            app_ms += count_moves(page, "preview_count", L, 1, seed=seed, warm=0)
                        else:
                            floor_ms += ratio_moves(noop, "noop_ratio", 1, start=i, warm=0)
                            app_ms += ratio_moves(page, "curves_ratio", 1, start=i, warm=0, L=L)
                    after, live1 = page_runs(page), live_state(page)
                    res[f"{name}_{L}"] = _stats(app_ms[2:])
                    res[f"{name}_{L}"]["floor"] = _stats(floor_ms[2:])
                    floors[kind] += floor_ms[2:]
                    res[f"{name}_{L}"]["full_page_reruns"] = after[f"{name}_page"] - before[f"{name}_page"]
                    res[f"{name}_{L}"]["fragment_runs"] = after[f"{name}_fragment"] - before[f"{name}_fragment"]
                    # client paints by the live elements, and client/server disagreements (must be 0)
                    res[f"{name}_{L}"]["client_paints"] = live1["client"] - live0["client"]
                    res[f"{name}_{L}"]["client_server_mismatches"] = live1["mismatches"] - live0["mismatches"]
                    res[f"{name}_{L}"]["painted_set_differs_from_server"] = len(WRONG) - wrong0
                    # the client's repaint itself (all live elements, in the input's handler), per move
                    paint = live1["paint_ms"][len(live0["paint_ms"]):] if len(live1["paint_ms"]) < 200 else []
                    res[f"{name}_{L}"]["client_paint_ms"] = _stats(paint) if paint else None
                    conf = CONFIRM[conf0:][2:]  # as app_ms: the first two moves warm up
                    res[f"{name}_{L}"]["server_confirm_ms"] = _stats(conf) if conf else None
                page.close()
                print(f"{L} blocks done ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr)
            res["floor_count"] = _stats(floors["count"])
            res["floor_ratio"] = _stats(floors["ratio"])
        browser.close()

    rows = [k for k in ("preview_30", "curves_30", "preview_80", "curves_80") if k in res]
    res["ratio_to_floor"] = {k: round(res[k]["median"] / res[k]["floor"]["median"], 2) for k in rows}
    r30, r80 = [k for k in rows if k.endswith("_30")], [k for k in rows if k.endswith("_80")]
    res["goals"] = {
        "30_median_le_1.5x_floor": all(res["ratio_to_floor"][k] <= 1.5 for k in r30) if r30 else None,
        "30_median_le_150ms": all(res[k]["median"] <= 150 for k in r30) if r30 else None,
        "80_p90_le_250ms": all(res[k]["p90"] <= 250 for k in r80) if r80 else None,
        "no_full_page_reruns": all(res[k]["full_page_reruns"] == 0 for k in rows),
        "painted_sets_equal_server": not WRONG and all(res[k]["client_server_mismatches"] == 0 for k in rows)}
    if WRONG:
        res["wrong_sets"] = WRONG[:5]
    res["moves"] = args.moves
    res["loadavg"] = round(os.getloadavg()[0], 1)
    res["seconds"] = round(time.perf_counter() - t_start, 1)
    out = {"slider_repaint_ms": res}
    line = json.dumps(out)
    print(line)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=1) + "\n")
    if args.write_results:
        from results_md import write_section

        write_section("browser_slider", markdown(res))
    return out


# Written from in-page traces of the moves on this machine (the live elements' own paint timer, the
# MutationObserver / keydown log of ui/live_chart.py, WebSocket message times); see RESULTS.md.
WHERE_TIME = """Where the time goes (times from the key event):

- **The browser paints first** (`ui/live_slider.py`, `ui/live_chart.py`): per settings the page
  precomputes the preview of every block count (and on Layer curves every α of the slider's 0.05 grid)
  and sends it to the browser once (Prune preview at 80 blocks: ~0.3 s to build, ~580 kB; Layer curves
  ~0.15 s, ~540 kB; again only when the criterion, locks, α on Prune preview, fusion or the compared
  criteria change). A component listens to the real widgets in the page (the slider's hidden range
  input, the count box's Enter / blur / +/-) and repaints the block stack and the charts in the input's
  own event handler, so the "x floor" above is the client repaint plus one frame, no server round trip.
  The *client paint ms* column is that repaint alone (all live elements of the move). Dragging the
  ratio thumb with the mouse repaints at every count it passes (a probe: 8 mouse steps, 6 repaints
  as k went 8 -> 16) and the server runs the fragment once, at the release.
- **What the repaint costs**: Layer curves: two `Plotly.relayout`s of the dropped blocks' shapes (the
  traces do not change with the count), 4-9 ms; Prune preview: a `Plotly.react` of the plan-stability
  bars and one of the criteria-overlap heatmap (their data change with k: colours, hatching, the
  frequencies for that k), 15-30 ms each at load ~3 on this machine (timed in the page: `Plotly.restyle`
  of just the changed arrays, a fixed size instead of autosize, or no hatching were not cheaper: it is
  plotly's fixed cost per redraw), plus toggling the block stack's classes (< 1 ms). So a Prune preview
  move is two plotly redraws plus one frame: 1.0-1.8 x the floor's round trip in the runs on this
  loaded machine (the 30-block goal of 1.5 x is met or missed with the load of the moment); both the
  redraws and the floor shrink on an idle machine, which is where the goal is to be judged.
- **The server still runs the fragment** (the authority: the text, metrics, tables, the session value
  the other pages and the export read). Its answer arrives a round trip plus Streamlit's render of the
  fragment later (the *server confirms* column: ~110-150 ms here, about the former repaint time) and
  is drawn only where it
  differs from what is shown: the benchmark counts client/server differences (must be 0) and compares
  the painted set with the set the server's text line names after every move (must be equal). An
  answer for an older state than the one shown (a move still in flight) is not drawn over the newer
  client paint, so a drag does not flicker back.
- **Not live** (server path only, as before): α on Prune preview (it rebuilds the payload, ~0.3 s at 80
  blocks), the criterion and lock toggles, the heatmaps (they do not depend on the plan)."""


HISTORY = """Earlier runs of this benchmark (same four rows; the load differed, so compare the x-floor ratios):
waiting for the server's fragment run with in-place charts (2026-11-30 16:13, load 1.4): medians
213 / 190 / 152 / 159 ms, p90 337 / 276 / 253 / 177 ms, 6.5 / 5.7 / 5.0 / 6.0 x floor; before the
in-place charts (15:39, load 9.0): medians 340 / 317 / 337 / 527 ms, 8.5 / 8.0 / 7.8 / 12.5 x floor."""


def markdown(res: dict) -> str:
    import os

    rows = [("Prune preview, block count, 30 blocks", "preview_30"), ("Layer curves, ratio slider, 30 blocks", "curves_30"),
            ("Prune preview, block count, 80 blocks", "preview_80"), ("Layer curves, ratio slider, 80 blocks", "curves_80")]
    out = ["## Slider repaint in the browser (`bench/browser_slider.py`)", "",
           f"Written {time.strftime('%Y-%m-%d %H:%M')}; {res['moves']} timed moves per row, headless Chromium on "
           f"loopback; load average {res.get('loadavg', os.getloadavg()[0]):.1f} on {os.cpu_count()} cores at the end (other work was "
           "running on this shared machine: absolute times are inflated, the floor is measured interleaved with "
           "the app, one floor move per app move).", "",
           "| move -> preview repainted | median ms | p90 ms | no-op floor median ms | x floor | client paint ms "
           "(median) | server confirms, median ms | painted set = server's | full-page reruns |",
           "|---|---|---|---|---|---|---|---|---|"]
    for label, k in rows:
        if k not in res:
            continue
        r = res[k]
        paint = r["client_paint_ms"]["median"] if r.get("client_paint_ms") else "-"
        conf = r["server_confirm_ms"]["median"] if r.get("server_confirm_ms") else "-"
        same = "yes" if not r["painted_set_differs_from_server"] and not r["client_server_mismatches"] else "**no**"
        out.append(f"| {label} | {r['median']} | {r['p90']} | {r['floor']['median']} | {res['ratio_to_floor'][k]} | "
                   f"{paint} | {conf} | {same} | {r['full_page_reruns']} of {r['fragment_runs']} fragment runs |")
    g = res["goals"]
    out += ["", "Goals (issue 17): 30 blocks median <= 1.5 x floor: " + ("met" if g["30_median_le_1.5x_floor"] else
            "**not met**") + "; <= 150 ms: " + ("met" if g["30_median_le_150ms"] else "**not met**") +
            "; 80 blocks p90 <= 250 ms: " + ("met" if g["80_p90_le_250ms"] else "**not met**") + ".", "",
            HISTORY, "", WHERE_TIME]
    return "\n".join(out)


if __name__ == "__main__":
    main()
