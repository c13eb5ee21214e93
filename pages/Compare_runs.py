"""Compare runs: two scored runs side by side: curves overlaid, heatmaps side by side on a shared colour scale.

A run is the session's current scores, a run pinned earlier in this session (another model, another
calibration, a pruned or recovered model scored later), or any run of the run library (the Runs page:
every calibration, and the ``scores.json`` / run files imported there, validated, e.g. what
``python -m simdiff_core score`` wrote on another machine); library runs are read only when chosen. Runs with
different block counts are overlaid on relative depth (``sensitivity.relative_depth``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from simdiff_core import SimDiffError, score_model
from simdiff_core.analysis.metrics import METRIC_KEYS
from simdiff_core.analysis.score import counts_first_token
from simdiff_core.models.load import wrap_model
from simdiff_core.pruning.prune import pruned_model
from simdiff_core.pruning.sensitivity import overlay_frame
from simdiff_core.export import figures
from ui import models, runs as library, settings, shell, state, views

shell.setup_page("Compare runs")
st.title("Compare runs")
st.markdown("Overlay the curves of two scored runs: two models, one model on two texts, base vs pruned, or a "
            "run of the library (import a colleague's `scores.json` on the **Runs** page).")

runs: dict = dict(state.get("pinned_runs") or {})
current = state.get("scores")
if current is not None:
    runs = {"current session": current, **runs}
try:
    infos = library.store().list()
except (SimDiffError, OSError) as e:
    infos = []
    views.show_error(e)
# library runs by name (the session's own run is "current session"); read from disk only when chosen
lib = {f"run: {i.label} · {library.run_date(i)} · {i.id}": i.id for i in infos
       if i.ok and (i.id != state.get("run_id") or current is None)}


with st.sidebar:
    st.subheader("Runs")
    if current is not None:
        label = st.text_input("Name for the current scores", key="pin_name", value="")
        if st.button("Pin the current scores", key="pin_btn", width="stretch",
                     help="Keep this run for comparison after you load or calibrate something else."):
            cal = current.calibration
            name = label.strip() or (f"{current.model} · {cal.get('samples', '?')}×{cal.get('seq_len', '?')} · "
                                     f"{str(cal.get('source', '?'))[:24]}")
            pinned = dict(state.get("pinned_runs") or {})
            pinned[name] = current
            state.put("pinned_runs", pinned)
            st.rerun()
    lm = models.current_lm()
    if current is not None and lm is not None and state.get("calib_ids") is not None \
            and lm.num_layers == current.num_layers:
        if st.button("Score the pruned model of the current plan", key="pin_pruned", width="stretch",
                     help="Prune the loaded model by the Prune preview's plan (a view: the shared model is never "
                          "changed), score it on the same calibration windows and pin it as a run."):
            try:
                plan = settings.current_plan(current)
                view = wrap_model(pruned_model(lm, plan.kept_layers), lm.tokenizer,
                                  source=f"{current.model} pruned")
                with st.spinner("Scoring the pruned model…"):
                    pruned_scores = score_model(view, state.get("calib_ids"),
                                                calibration=dict(current.calibration),
                                                first_token=counts_first_token(current.calibration))
                pinned = dict(state.get("pinned_runs") or {})
                pinned[f"pruned: −{len(plan.removed_layers)} blocks {plan.removed_layers}"] = pruned_scores
                state.put("pinned_runs", pinned)
                st.rerun()
            except SimDiffError as e:
                views.show_error(e)
    st.page_link(shell.PAGES["runs"], label="Import a scores.json (Runs)", icon=":material/inventory:")

if len(runs) + len(lib) < 2:
    st.info("Two runs are needed: pin the current scores (sidebar), then calibrate another model or text on "
            "Load & calibrate, or import a saved `scores.json` on the Runs page.", icon=":material/arrow_back:")
    st.stop()

names = list(runs) + list(lib)
picked = state.get("compare_library") or []
if picked:  # the Runs page's "Compare": preselect its two runs once
    state.put("compare_library", [])
    by_id = {v: k for k, v in lib.items()}
    for key, rid in zip(("run_a", "run_b"), picked):
        if rid in by_id:
            state.put(key, by_id[rid])
        elif rid == state.get("run_id") and "current session" in runs:
            state.put(key, "current session")
for key in ("run_a", "run_b"):
    if state.has(key) and state.get(key) not in names:
        state.pop(key)
c = st.columns(2)
a = c[0].selectbox("Run A", names, key="run_a", **({} if state.has("run_a") else {"index": 0}))
b = c[1].selectbox("Run B", names, key="run_b", **({} if state.has("run_b") else {"index": 1}))
if a == b:
    st.error("choose two different runs")
    st.stop()


def _scores(name: str):
    if name in runs:
        return runs[name]
    memo = state.get("_library_scores") or {}
    rid = lib[name]
    if rid not in memo:
        while len(memo) >= 2:  # only the pair on screen is kept in the session
            memo.pop(next(iter(memo)))
        memo[rid] = library.store().open(rid).scores
        state.put("_library_scores", memo)
    return memo[rid]


try:
    A, B = _scores(a), _scores(b)
except (SimDiffError, OSError) as e:
    views.show_error(e)
    st.stop()
pair = {a: A, b: B}
diff_depth = A.num_layers != B.num_layers
metric = st.selectbox("Metric", list(METRIC_KEYS), index=0, key="runs_metric")
if diff_depth:
    state.put("runs_relative", True)  # shown as it is drawn: forced on
relative = st.toggle("Relative depth (0 = first block, 1 = last)", key="runs_relative",
                     disabled=diff_depth, help="Forced on when the block counts differ.")
def _about(r) -> str:
    cal = r.calibration
    return (f"{r.model}, {r.num_layers} blocks, {cal.get('samples', '?')} × {cal.get('seq_len', '?')} tokens of "
            f"{cal.get('source', '?')}")


st.caption(f"A: {_about(A)} · B: {_about(B)}")
try:
    frame, rel = overlay_frame(pair, metric, relative=relative or diff_depth)
except SimDiffError as e:
    views.show_error(e)
    st.stop()
views.chart(figures.overlay_curves(frame, metric, rel, title=f"{metric}: {a} vs {b}"), f"compare_{metric}",
            "runs_curves", frame=frame)

st.subheader("Heatmaps side by side (shared colour scale)")
mats = [k for k in ("output_cosine", "cka") if k in A.matrices and k in B.matrices]
if not mats:
    st.info("One of the runs carries no cross-layer matrices.")
    st.stop()
which = st.radio("Matrix", mats, horizontal=True, key="runs_matrix")
ma, mb = np.asarray(A.matrices[which], float), np.asarray(B.matrices[which], float)
lo = float(np.nanmin([np.nanmin(ma), np.nanmin(mb)]))
hi = float(np.nanmax([np.nanmax(ma), np.nanmax(mb)]))
h = st.columns(2)
for col, name, m, key in ((h[0], a, ma, "runs_hm_a"), (h[1], b, mb, "runs_hm_b")):
    with col:
        views.chart(figures.heatmap(m, f"{which}: {name}", zmin=lo, zmax=hi, hover_label=which), f"{which}_{key}", key,
                    frame=pd.DataFrame(m))
st.caption(f"Both heatmaps use the colour range [{lo:.3f}, {hi:.3f}].")
