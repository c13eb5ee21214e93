"""Calibration sensitivity: score the loaded model on several texts and compare the verdicts.

Each chosen source is scored with the session's window count and length (one calibration pass per
source, cached in the session for this model). Shows the curves overlaid, Spearman's rho between the
per-block importance rankings, the overlap of the blocks each source removes at the Prune preview's
ratio/criterion/alpha, and which blocks flip (``simdiff_core.pruning.sensitivity``).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from simdiff_core import SimDiffError, make_windows, score_model
from simdiff_core.analysis.metrics import METRIC_KEYS
from simdiff_core.analysis.score import counts_first_token
from simdiff_core.pruning.sensitivity import overlay_frame, sensitivity
from simdiff_core.export import figures
from ui import calibration, models, settings, shell, state, views

shell.setup_page("Calibration sensitivity")

st.title("Calibration sensitivity")
st.markdown("Does the verdict depend on the calibration text? Score the same model on two or more texts and "
            "compare the per-block rankings and the blocks each text would remove.")
scores = models.require_scores()
lm = models.require_model()
info = state.get("calib_info") or {}
n, s = int(info.get("samples", 8)), int(info.get("seq_len", 256))

with st.sidebar:
    st.subheader("Sources")
    chosen = st.multiselect("Calibration sources", calibration.RUN_NAMES, key="sens_sources",
                            default=calibration.RUN_NAMES[:2], help="At least two. The shipped code and dialogue samples "
                            "were written for this project (CC0) so the comparison works offline.")
    upload = pasted = hf_name = None
    picked = {calibration.BY_RUN_NAME[name].key for name in chosen}
    if "upload" in picked:
        upload = st.file_uploader("Text file (UTF-8)", type=["txt", "md"], key="sens_upload")
    if "paste" in picked:
        pasted = st.text_area("Text", key="sens_text", height=120)
    if "hf" in picked:
        hf_name = st.text_input("Dataset", key="sens_hf", placeholder="wikitext/wikitext-2-raw-v1/train")
    c1, c2 = st.columns(2)
    n = c1.number_input("Samples", 2, 1024, n, key="sens_samples", help="Windows per source (same for all)")
    s = c2.number_input("Seq. length", 16, 8192, s, step=16, key="sens_seq_len")
    go_btn = st.button("Score on these sources", type="primary", key="sens_run", width="stretch")


def source_for(name: str):
    return calibration.load_source(calibration.BY_RUN_NAME[name], upload, pasted, hf_name)


tag = (state.get("model_spec") or {}).get("spec"), lm.num_layers
if go_btn:
    if len(chosen) < 2:
        st.error("choose at least two calibration sources")
    else:
        runs = {}
        bar = st.progress(0.0, text="Scoring…")
        try:
            for j, name in enumerate(chosen):
                src = source_for(name)
                ids = make_windows(lm.tokenizer, src, int(n), int(s))
                runs[name] = score_model(
                    lm, ids, calibration={"source": src.description},
                    first_token=counts_first_token(scores.calibration),  # the session's position-0 choice
                    progress=lambda f, m, j=j, name=name: bar.progress(min((j + f) / len(chosen), 1.0),
                                                                       text=f"{name}: {m}"))
        except Exception as e:  # noqa: BLE001 — one st.error line, nothing stored
            views.show_error(e)
        else:
            state.put_result("sens_runs", {"tag": tag, "runs": runs, "windows": (int(n), int(s))})
        bar.empty()

stored = state.result("sens_runs")
if not stored or stored.get("tag") != tag:
    st.info("Pick two or more sources in the sidebar and press **Score on these sources** "
            f"(one calibration pass each, {n} × {s} tokens).", icon=":material/arrow_back:")
    st.stop()
runs = stored["runs"]

crit = state.get("criterion", "simdiff")
alpha = float(state.get("alpha", 0.5))
fusion = settings.fusion_kwargs() if crit == "simdiff" else {}
try:
    num = settings.removal_count(lm.num_layers)
    rep = sensitivity(runs, crit, num=num, alpha=alpha, keep_first=bool(state.get("keep_first", True)),
                      keep_last=bool(state.get("keep_last", True)), **fusion)
except SimDiffError as e:
    views.show_error(e)
    st.stop()

st.caption(f"{len(runs)} sources × {stored['windows'][0]} × {stored['windows'][1]} tokens · plan: **{crit}**, "
           f"{num} of {lm.num_layers} blocks, α = {alpha:.2f} (change on Prune preview)")
rhos = list(rep.rho.values())
m = st.columns(3)
m[0].metric("Lowest Spearman ρ", f"{min(rhos):.3f}", help="Rank correlation of the per-block importance between "
            "two sources (1 = same order).")
m[1].metric("Blocks every source removes", f"{len(rep.agreed)} of {num}")
m[2].metric("Blocks that flip", len(rep.flips), help="Removed by at least one source but not by all.")
if rep.flips:
    st.warning("Sources disagree: " + "; ".join(f"block {b} is removed by {', '.join(w)} only"
                                              for b, w in rep.flips.items()), icon=":material/compare_arrows:")
else:
    st.success(f"Every source removes the same {num} blocks: {rep.agreed}", icon=":material/verified:")

metric = st.selectbox("Curve", ["importance"] + list(METRIC_KEYS), key="sens_metric",
                      help="importance: the criterion above (higher = keep), as the planner sees it.")
if metric == "importance":
    frame = pd.DataFrame([{"run": nm, "block": i, "depth": i / max(lm.num_layers - 1, 1), "x": i, "value": v}
                          for nm in rep.names for i, v in enumerate(rep.importance[nm])])
else:
    frame, _ = overlay_frame(runs, metric, relative=False)
fig = figures.overlay_curves(frame, metric if metric != "importance" else f"{crit} importance", False,
                            title=f"{metric} per block, one line per calibration source", removed=rep.removed)
views.chart(fig, f"sensitivity_{metric}", "sens_curves", frame=frame)

st.subheader("Pairs")
st.dataframe(pd.DataFrame(rep.pairs_table()), width="stretch", key="sens_pairs")
st.subheader("Blocks each source removes")
sets = {nm: rep.removed[nm] for nm in rep.names}
views.chart(figures.Spec(figures.overlap_spec(sets, lm.num_layers)), "sensitivity_overlap", "sens_overlap",
            frame=pd.DataFrame({nm: [i in set(v) for i in range(lm.num_layers)] for nm, v in sets.items()}))
