"""Ground truth & report: measured leave-one-out damage, how well each criterion predicts it, and the shareable report.

Damage is measured on (a prefix of) the session's calibration windows: one dense pass caches every
block's input, then each block is skipped in turn. The per-block loss increase is stored in the
session as ``damage`` (the Layer curves page can draw it as a fourth curve).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from simdiff_core import SimDiffError
from simdiff_core.analysis.metrics import CRITERIA
from simdiff_core.evaluation.agreement import agreement_table, set_damage
from simdiff_core.evaluation.damage import measure_damage
from simdiff_core.evaluation.damage_cost import block_executions
from simdiff_core.export.figures import agreement_scatter, curves_figure, set_damage_figure
from simdiff_core.export.report import build_report_html
from simdiff_core.pruning.plan import make_plan
from ui import exports, models, settings, shell, state, views

shell.setup_page("Ground truth & report")
calib = state.get("calib_ids")
n_max = int(calib.shape[0]) if calib is not None else 8
s_max = int(calib.shape[1]) if calib is not None else 256

with st.sidebar:
    st.subheader("Damage measurement")
    n_win = st.number_input("Windows", 1, n_max, min(n_max, 4), key="dmg_windows",
                            help="First N calibration windows (cost grows linearly)")
    seq = st.number_input("Tokens per window", 8, s_max, min(s_max, 128), step=8, key="dmg_seq_len",
                          help="Prefix of each calibration window")

st.title("Ground truth & report")
scores = models.require_scores()
lm = models.require_model()
L = scores.num_layers
alpha = float(state.get("alpha", 0.5))
ratio = float(state.get("ratio", 0.25))

# The Damage object lives next to the per-block list the other pages read; clear_results() resets
# "damage" when the model or calibration changes, which marks the object stale too.
dmg = state.result("damage_result") if state.result("damage") is not None else None
if dmg is not None and dmg.num_layers != L:
    dmg = None

cost = block_executions(L)
st.markdown(f"Leave-one-out damage: the calibration loss of the model with **only block i** removed, for every i. "
            f"Cached block inputs cut the work from {cost['naive']} to {cost['cached']} block calls per batch "
            f"({100 * cost['saving']:.0f}% less).")
if st.button("Measure damage", type="primary", key="measure_damage"):
    try:
        ids = calib[: int(n_win), : int(seq)]
        bar = st.progress(0.0, text="Dense pass…")
        dmg = measure_damage(lm, ids, progress=lambda f, m: bar.progress(f, text=m),
                             calibration=dict(state.get("calib_info") or {}))
        bar.empty()
        state.put_result("damage_result", dmg)
        state.put_result("damage", dmg.deltas())
        state.put_result("set_damage", None)
    except Exception as e:  # noqa: BLE001
        views.show_error(e)

if dmg is None:
    st.info("No damage measured yet for this calibration: press **Measure damage**.")
    st.stop()

plan = None
try:
    plan = settings.current_plan(scores)
except SimDiffError as e:
    views.show_error(e)
st.caption(f"Dense calibration ppl {dmg.dense_ppl:.2f} on {dmg.calibration.get('samples')} × "
           f"{dmg.calibration.get('seq_len')} tokens · {dmg.meta.get('seconds', 0):.1f} s · "
           f"{dmg.meta.get('block_executions')} block calls (naive {dmg.meta.get('naive_block_executions')})")
views.chart(curves_figure(scores, dmg, alpha=alpha, removed=plan.removed_layers if plan else None),
            "ground_truth_curves", "gt_curves")

st.header("Criterion agreement")
try:
    k = plan.num_removed if plan else None
    rows = agreement_table(scores, dmg, alpha=alpha, num=k,
                           keep_first=bool(state.get("keep_first", True)), keep_last=bool(state.get("keep_last", True)))
    table = pd.DataFrame([{"criterion": r["criterion"], "Spearman ρ": r["spearman"], "Kendall τ-b": r["kendall"],
                           **({f"top-{r['k']} overlap": f"{r['topk_overlap']}/{r['k']}"} if "k" in r else {})}
                          for r in rows]).set_index("criterion")
    st.dataframe(table.style.format({"Spearman ρ": "{:+.3f}", "Kendall τ-b": "{:+.3f}"}), key="agreement_table")
    st.caption(f"Importance (higher = keep) vs measured loss increase; +1 = perfect proxy. SimDiff at α = {alpha:.2f}; "
               f"top-k: the k blocks each criterion removes at ratio {ratio:.2f} vs the k least damaging.")
    crit = st.selectbox("Scatter: criterion", list(CRITERIA), index=list(CRITERIA).index("simdiff"), key="gt_criterion")
    views.chart(agreement_scatter(scores, dmg, crit, alpha=alpha), f"agreement_{crit}", "gt_scatter")
except Exception as e:  # noqa: BLE001
    views.show_error(e)

st.header("Multi-block damage")
st.caption("Remove each criterion's whole set at once and compare with the sum of its single-block damages.")
if plan is not None and st.button("Measure set damage", key="measure_sets"):
    try:
        sets = {}
        for c in ("cosine", "angular", "mssd_rel", "masd_rel", "simdiff"):
            p = make_plan(scores, c, num=plan.num_removed, alpha=alpha, keep_first=plan.keep_first,
                          keep_last=plan.keep_last)
            sets[c] = p.removed_layers
        n, s = dmg.calibration["samples"], dmg.calibration["seq_len"]
        with st.spinner("Evaluating each set…"):
            state.put_result("set_damage", set_damage(lm, calib[:n, :s], sets, dmg))
    except Exception as e:  # noqa: BLE001
        views.show_error(e)
sets_rows = state.result("set_damage")
if sets_rows:
    st.dataframe(pd.DataFrame(sets_rows)[["label", "removed", "ppl", "delta_loss", "additive_delta", "interaction"]],
                 key="set_table")
    views.chart(set_damage_figure(sets_rows), "set_damage", "gt_sets")

st.header("Report")
# the Export page's evaluation of this plan (records.Evaluation), if it ran one
ppl = None if plan is None else exports.plan_evaluation(plan)
rec = state.result("recovery")  # a LoRA recovery of this plan carries the honest comparison: report that
if plan is not None and rec is not None and list(rec["plan_key"][1]) == list(plan.removed_layers) \
        and rec.get("evaluation") is not None:
    ppl = rec["evaluation"]
try:
    sens = None  # the Calibration sensitivity page's comparison, when it ran on this model
    stored = state.get("sens_runs")
    from simdiff_core.analysis.metrics import CRITERIA

    if stored and plan is not None and plan.criterion in CRITERIA and stored["runs"] and \
            all(r.num_layers == L for r in stored["runs"].values()):
        from simdiff_core.pruning.sensitivity import sensitivity

        sens = sensitivity(stored["runs"], plan.criterion, num=plan.num_removed, alpha=alpha,
                           keep_first=plan.keep_first, keep_last=plan.keep_last,
                           **(settings.fusion_kwargs() if plan.criterion == "simdiff" else {}))
    html_doc, n_figs = build_report_html(scores, damage=dmg, plan=plan, ppl=ppl, sets=sets_rows, alpha=alpha,
                                         sensitivity=sens)
    st.download_button("Download report (HTML, works offline)", html_doc.encode("utf-8"),
                       f"simdiff_report_{L}blocks.html", "text/html", key="dl_report",
                       help=f"{n_figs} interactive figures, agreement table, plan and perplexity in one file")
except Exception as e:  # noqa: BLE001
    views.show_error(e)
