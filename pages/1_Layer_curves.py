"""Page 2: per-block cosine / MSSD / MASD curves, the fused SimDiff score, cross-layer heatmaps.

Everything here is recomputed from the stored Scores (no forward pass): moving a slider re-renders
in milliseconds. The blocks the current plan (criterion, ratio, locks from the Prune preview) would
drop are marked on every curve.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from simdiff_core import SimDiffError
from simdiff_core import figures as charts
from simdiff_core.score import protocol as score_protocol
from ui import state, views

state.setup_page("Layer curves")

with st.sidebar:
    st.subheader("Curves")
    alpha = st.slider("SimDiff α", 0.0, 1.0, step=0.05, **state.bound("alpha"),
                      help="Weight of similarity (1 − cosine) against difference (MSSD, MASD). α = 1 is cosine-only.")
    state.put("alpha", alpha)
    scale_free = st.toggle("Scale-free MSSD/MASD", **state.bound("scale_free"),
                           help="Divide each token's difference by its input norm (hidden-state norms grow with "
                                "depth). Off: raw MSSD/MASD.")
    state.put("scale_free", scale_free)
    log_mssd = st.toggle("Log scale for MSSD", key="log_mssd", value=False,
                         help="MSSD is dominated by a few outlier blocks; a log axis shows the rest.")
    ratio = st.slider("Pruning ratio", 0.01, 1.0, step=0.01, **state.bound("ratio"),
                      help="Fraction of blocks the highlighted plan removes (shared with Prune preview).")
    state.put("ratio", ratio)

st.title("Layer curves")
scores = state.require_scores()
L = scores.num_layers
st.caption(f"{scores.model} · {L} blocks · calibrated on {score_protocol(scores.calibration)}")

dropped = []
try:
    plan = state.current_plan(scores)
    dropped = plan.removed_layers
    st.markdown(f"Highlighted: the **{len(dropped)}** blocks that **{plan.criterion}** at ratio {ratio:.2f} "
                f"would drop: `{dropped}`")
except SimDiffError as e:
    views.show_error(e)

damage = state.result("damage")
fig = charts.layer_curves(scores.layers, dropped=dropped, scale_free=scale_free, log_mssd=log_mssd,
                          damage=damage if damage is not None and len(damage) == scores.num_layers else None)
st.plotly_chart(fig, key="curves", config=charts.plot_config("layer_curves"))

imp = scores.importance("simdiff", alpha=alpha, scale_free=scale_free, beta=float(state.get("beta", 0.5)))
fused = charts.importance_bars(imp, dropped, title=f"SimDiff importance, α = {alpha:.2f} (higher = keep)")
st.plotly_chart(fused, key="simdiff", config=charts.plot_config("simdiff_importance"))
frame = charts.curves_frame(scores.layers, imp, dropped)
st.download_button("Curves data (CSV)", frame.to_csv().encode(), "layer_curves.csv", "text/csv", key="dl_curves",
                   help="Per-block metrics, the fused score at this α and the dropped flag. "
                        "PNG: use the camera icon on each chart.")

if damage is None:
    st.caption("Add the measured ground truth (loss with each block removed) as a fourth curve, with "
               "criterion agreement, on the Ground truth page.")
st.page_link("pages/6_Ground_truth_and_report.py", label="Ground truth: measured damage, criterion agreement, report",
             icon=":material/fact_check:")

st.header("Cross-layer heatmaps")
m = scores.matrices
tabs = st.tabs(["Output cosine", "n-block angular distance", "CKA"])
views_def = []
if "output_cosine" in m:
    views_def.append((tabs[0], "output_cosine", charts.heatmap(m["output_cosine"], "Cosine between block outputs",
                                                               zmin=None, zmax=1, hover_label="cosine"),
                      pd.DataFrame(m["output_cosine"])))
if "angular_boundaries" in m:
    D, x, y = charts.nblock_angular(m["angular_boundaries"])
    views_def.append((tabs[1], "angular", charts.heatmap(D, "Angular distance across n blocks (PruneMe): low = "
                                                          "removable window", x_title="first block l",
                                                          y_title="n blocks", x=x, y=y, colorscale="Magma",
                                                          hover_label="distance"),
                      pd.DataFrame(D, index=pd.Index(y, name="n"), columns=x)))
if "cka" in m:
    views_def.append((tabs[2], "cka", charts.heatmap(m["cka"], "Linear CKA between block outputs", zmin=0, zmax=1,
                                                     hover_label="CKA"), pd.DataFrame(m["cka"])))
for tab, name, fig, df in views_def:
    with tab:
        st.plotly_chart(fig, key=f"hm_{name}", config=charts.plot_config(name))
        st.download_button("Matrix (CSV)", df.to_csv().encode(), f"{name}.csv", "text/csv", key=f"dl_{name}")
if "method" in m:
    st.caption(m["method"])
if not views_def:
    st.info("These scores carry no cross-layer matrices.")
