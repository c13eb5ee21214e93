"""Prune preview: the pruning-ratio slider and what it would remove, instantly (no forward pass).

The ratio / count / α controls live in a fragment with the preview they change, so a move reruns
only that fragment (not the sidebar, the auto-α code or the page around it).

Shows the block stack with removed blocks greyed, parameters and an estimated speedup before/after,
the removed blocks with their scores, and how the chosen set differs between criteria.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from simdiff_core import CRITERIA, SimDiffError
from simdiff_core.analysis import uncertainty
from simdiff_core.pruning import stability
from simdiff_core.pruning.plan import count_from_ratio
from simdiff_core.export import figures
from ui import links, live_chart, live_slider, models, settings, shell, state, views

shell.setup_page("Prune preview")
scores = state.get("scores")
if scores is not None:
    live_chart.preload()  # plotly.js loads while the rest of the page runs and renders
L = scores.num_layers if scores is not None else 0


COUNT_KEY = "_w_num"  # the count box: a widget with no persistent copy (it follows the ratio)


def _ratio_changed():
    # keep the count box in step with the slider (callbacks run before the page re-renders)
    r = state.widget_value("ratio")
    state.put("ratio", r)
    state.put(COUNT_KEY, count_from_ratio(L, r))


def _num_changed():
    k = int(state.get(COUNT_KEY))
    state.set_widget("ratio", k / L)


with st.sidebar:
    st.subheader("Plan")
    crit_names = list(CRITERIA)
    criterion = st.selectbox("Criterion", crit_names, **state.bound("criterion"),
                             format_func=lambda c: f"{c} — {CRITERIA[c]}",
                             help="Blocks with the lowest importance under this criterion are removed.")
    state.put("criterion", criterion)
    auto_clicked = st.button("Auto α (calibration ppl)", key="auto_alpha_btn", disabled=criterion != "simdiff",
                             help="Evaluate the distinct prunings given by α ∈ {0, 0.1, …, 1} and β (MSSD share) ∈ "
                                  "{0, 0.5, 1} on the calibration windows and keep the best. α = 1 (cosine-only) is on "
                                  "the grid, so this is never worse than cosine on the calibration data.")
    kf = st.toggle("Keep first block", **state.bound("keep_first"), help="Never remove block 0.")
    kl = st.toggle("Keep last block", **state.bound("keep_last"), help="Never remove the last block.")
    state.put("keep_first", kf)
    state.put("keep_last", kl)
    views.run_marker("preview_page", state.count_run("preview_page"))

st.title("Prune preview")
scores = models.require_scores()
lm = models.current_lm()

if auto_clicked:
    from simdiff_core.workflows import choose_alpha

    calib_ids = state.get("calib_ids")
    try:
        plan = settings.current_plan(scores)
    except SimDiffError as e:
        views.show_error(e)
    else:
        if lm is None or calib_ids is None or lm.num_layers != L:
            st.error("Auto α needs the calibrated model: run Calibrate on the Load & calibrate page again.")
        else:
            bar = st.progress(0.0, text="Auto α: evaluating candidate prunings…")
            try:
                choice = choose_alpha(lm, scores, calib_ids, num=plan.num_removed, keep_first=kf, keep_last=kl,
                                      scale_free=settings.fusion_kwargs()["scale_free"],
                                      progress=lambda f, m: bar.progress(min(f, 1.0), text=f"Auto α: {m}"))
            except SimDiffError as e:
                views.show_error(e)
            else:
                state.put("alpha", choice.alpha)
                state.put("beta", choice.beta)
                state.put_result("auto_alpha", {"alpha": choice.alpha, "beta": choice.beta, "ppl": choice.ppl,
                                                "k": choice.num, "trials": choice.distinct})
                st.rerun()
auto = state.result("auto_alpha")
if criterion == "simdiff" and auto:
    st.caption(f"Auto α chose α = {auto['alpha']:.2f}, β = {auto['beta']:.1f} (calibration ppl {auto['ppl']:.2f} for "
               f"{auto['k']} blocks, best of {auto['trials']} distinct prunings).")


def payload_for(plan, alpha: float, others: list[str]) -> dict:
    """Everything the preview shows at every block count for these settings (ui/live_slider.py): built
    once per settings and session, so a count / ratio move is painted by the browser before the server."""
    fusion = settings.fusion_kwargs()
    stab = plan.criterion in CRITERIA and uncertainty.has_windows(scores)
    key = ("live_preview", plan.criterion, alpha, kf, kl, tuple(sorted(fusion.items())), tuple(others), stab)
    return state.per_scores_recent(scores, "live_preview", key, lambda: live_slider.preview_payload(
        scores, plan.criterion, alpha, kf, kl, fusion, others, stab))


def stability_section(plan, payload: dict, live: dict) -> None:
    """How often each block is removed across bootstrap resamples of the windows, at these settings."""
    st.subheader("Plan stability")
    freq = live_slider.frequency(payload, plan.num_removed)
    if freq is None:
        st.caption("No stability: these scores carry no per-window statistics (calibrate again with ≥ 2 windows).")
        return
    stab = stability.Stability(removed=plan.removed_layers, frequency=freq, n_boot=uncertainty.DEFAULT_BOOT,
                               seed=uncertainty.DEFAULT_SEED)
    low = min(stab.frequency[i] for i in stab.removed)
    if stab.stable:
        st.success(f"Stable plan: every removed block is removed in at least {low:.0%} of {stab.n_boot} bootstrap "
                   f"resamples of the calibration windows (threshold {stab.threshold:.0%}).",
                   icon=":material/verified:")
    else:
        rival = ", ".join(f"{i} ({stab.frequency[i]:.0%})" if stab.frequency[i] >= 0.01 else f"{i} (<1%)"
                          for i in stab.contenders[:5])
        st.warning(f"Unstable plan: blocks {stab.unstable} are removed in fewer than {stab.threshold:.0%} of "
                   f"{stab.n_boot} resamples (lowest {low:.0%}). Contenders: {rival or 'none'}. More calibration "
                   "windows would make the choice firmer.", icon=":material/warning:")
    frame = pd.DataFrame({"block": range(L), "removal_frequency": stab.frequency,
                          "in_plan": [i in stab.removed for i in range(L)]}).set_index("block")
    views.chart(figures.Spec(figures.stability_spec(stab.frequency, stab.removed, stab.threshold, stab.n_boot)),
                "plan_stability", "stability", frame=frame, live=True, bind=dict(live, chart="stability"),
                payload=payload)


COMPARE_DEFAULT = ("cosine", "mssd_rel", "masd_rel", "angular")


def repair_section(plan) -> None:
    """Repair selector and a one-click repaired-perplexity estimate for the current plan (calibration text;
    workflows.estimate_repair). Inside the preview fragment, so the estimate shown always belongs to the plan
    shown; a slider move only hides it (it never refits)."""
    from simdiff_core.repair import REPAIR_METHODS
    from simdiff_core.workflows import estimate_repair

    st.subheader("Repair (training-free)")
    c = st.columns([1, 2])
    method = c[0].selectbox("Repair", REPAIR_METHODS, index=REPAIR_METHODS.index("ridge"), key="repair_method",
                            help="lstsq: one least-squares map per removed span folded into the block below "
                                 "(ReplaceMe; needs more calibration tokens than the hidden size, and overfits them "
                                 "when they are few); ridge: the same map pulled towards 'no change' by a strength "
                                 "chosen by cross-validation over the calibration windows (the safe default); "
                                 "rescale: a per-channel scale (Prune&Comp-style); none: as pruned")
    calib_ids = state.get("calib_ids")
    usable = lm is not None and lm.num_layers == L and calib_ids is not None
    key = (tuple(plan.removed_layers), method)
    if c[1].button("Estimate repaired perplexity", key="estimate_repair", disabled=method == "none" or not usable,
                   help="Fit the repair on the calibration windows and measure the calibration perplexity of the "
                        "pruned and the repaired model (one pass each)"):
        bar = st.progress(0.0, text="Fitting the repair…")
        try:
            est = estimate_repair(lm, plan, calib_ids, method, calibration=dict(state.get("calib_info") or {}),
                                  progress=lambda f, m: bar.progress(min(f, 1.0), text=m))
            state.put_result("repair_preview", {**est, "key": key})
        except Exception as e:  # noqa: BLE001
            views.show_error(e)
        bar.empty()
    est = state.result("repair_preview")
    if est is None or est["key"] != key:
        st.caption("Estimate the repaired perplexity of this plan on the calibration text (cheap: one fit, two "
                   "passes). The held-out numbers come from Export & evaluate.")
        return
    m = st.columns(3)
    m[0].metric("Calibration ppl, pruned", f"{est['ppl_pruned']:.2f}")
    m[1].metric(f"Calibration ppl, {method}", f"{est['ppl_repaired']:.2f}",
                delta=f"{est['ppl_repaired'] / est['ppl_pruned']:.2f}×", delta_color="off")
    m[2].metric("Fit time", f"{est['repair']['seconds']:.1f} s")
    n, s = est["windows"]
    st.caption(f"{est['summary']}. Perplexity on the {n} × {s} calibration windows the repair was fitted on: "
               "optimistic by construction; Export & evaluate measures it on held-out text.")


@st.fragment
def preview():
    """The ratio / count / α controls and everything they change: a move reruns only this function.

    The block stack and the two charts are live elements (ui/live_slider.py): the browser repaints them
    from a payload precomputed for every count as soon as the ratio slider or the count box moves, and
    this run then confirms them with the same data."""
    views.run_marker("preview_fragment", state.count_run("preview_fragment"))
    c = st.columns([3, 1, 2])
    wk = state.widget_key("ratio")
    ratio = c[0].slider(live_slider.RATIO_LABEL, 0.01, 1.0, step=0.01, key=wk, on_change=_ratio_changed,
                        help="Fraction of the blocks to remove; k = round(ratio × L).")
    state.put("ratio", ratio)
    # re-derived every run: the ratio may have moved on another page
    state.put(COUNT_KEY, count_from_ratio(L, ratio))
    c[1].number_input(live_slider.COUNT_LABEL, 1, L, step=1, key=COUNT_KEY, on_change=_num_changed,
                      help=f"Same as the ratio, as a count (of {L}).")
    alpha = c[2].slider(live_slider.ALPHA_LABEL, 0.0, 1.0, step=0.05, **state.bound("alpha"),
                        disabled=criterion != "simdiff", help="Only used by the simdiff criterion.")
    alpha = round(alpha, 2)  # the slider's 0.05 grid, as the precomputed payload (no float noise)
    state.put("alpha", alpha)
    links.publish()  # a fragment run: app.py does not run, so the URL follows the controls here
    try:
        plan = settings.current_plan(scores)
    except SimDiffError as e:
        views.show_error(e)
        return

    k = plan.num_removed
    default = [o for o in COMPARE_DEFAULT if o != criterion]
    others = [o for o in state.get("compare", default) if o in CRITERIA and o != criterion]
    payload = payload_for(plan, alpha, others)
    live = {"id": payload["id"], "state": {"k": k, "a": ""}}
    if live_slider.removed(payload, k) != plan.removed_layers:  # same order, same rule: never expected
        st.error("internal: the precomputed preview differs from the plan")
    st.markdown(f"**{criterion}** removes **{k} of {L}** blocks: `{plan.removed_layers}` · kept ranges "
                f"(half-open, mergekit `layer_range`): `{[list(r) for r in plan.kept_ranges()]}`")
    live_chart.stack_live(views.block_diagram(L, plan.removed_layers, plan.scores), "block_stack",
                          dict(live, removed=plan.removed_layers), payload)

    m = st.columns(4)
    m[0].metric("Blocks", f"{L - k}", delta=f"-{k}", delta_color="off")
    if lm is not None and lm.num_layers == L:
        cost = views.estimate_cost(lm, plan.removed_layers)
        m[1].metric("Parameters", views.human(cost["params_after"]),
                    delta=f"-{views.human(cost['params_before'] - cost['params_after'])} of {views.human(cost['params_before'])}",
                    delta_color="off")
        m[2].metric("Est. speedup", f"{cost['speedup']:.2f}×", help="From per-token matmul work (blocks + LM head); "
                    "measure it for real on Export & evaluate.")
    m[3].metric("Removed", f"{k / L:.0%}")

    stability_section(plan, payload, live)

    st.subheader("Removed blocks")
    table = pd.DataFrame([{**{key: l[key] for key in ("index", "cosine", "mssd_rel", "masd_rel", "mssd", "masd")},
                           "importance": plan.scores[l["index"]]} for l in scores.layers
                          if l["index"] in plan.removed_layers])
    st.dataframe(table.set_index("index"), width="stretch", key="removed_table")

    st.subheader("How criteria differ")
    st.multiselect("Compare with", [c for c in crit_names if c != criterion], default=default, key="compare",
                   help="Same block count, same locks; only the ranking differs.")
    for other, message in payload["_errors"].items():
        st.error(f"{other}: {message}", icon=":material/error:")
    others = [o for o in others if o in payload["_orders"]]
    sets = live_slider.overlap_sets(criterion, others, k, payload["_orders"])
    rows = []
    for other in others:
        shared = set(sets[other]) & set(plan.removed_layers)
        rows.append({"criterion": other, "shared with " + criterion: len(shared),
                     "only here": sorted(set(sets[other]) - shared),
                     f"only in {criterion}": sorted(set(plan.removed_layers) - shared)})
    views.chart(figures.Spec(figures.overlap_spec(sets, L)), "criteria_overlap", "overlap", live=True,
                bind=dict(live, chart="overlap"), payload=payload)
    if rows:
        st.dataframe(pd.DataFrame(rows).set_index("criterion"), width="stretch", key="overlap_table")
    repair_section(plan)


preview()
st.page_link(shell.PAGES["export"], label="Evaluate and export this plan", icon=":material/inventory_2:")
