"""Layer curves: per-block cosine / MSSD / MASD curves, the fused SimDiff score, cross-layer heatmaps.

Everything here is recomputed from the stored Scores (no forward pass). The ratio and α sliders sit in
a fragment with the charts they change: a move reruns only that fragment, on top of figure bases and
heatmaps built once per calibration (simdiff_core/export/figures.py), so it repaints in milliseconds. The blocks the
current plan (criterion, ratio, locks from the Prune preview) would drop are shaded on every curve.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from simdiff_core import SimDiffError
from simdiff_core.analysis import derived, uncertainty
from simdiff_core.analysis.score import protocol as score_protocol
from simdiff_core.export import figures
from simdiff_core.export import figures_repair
from ui import links, live_chart, live_slider, models, run_view, settings, shell, state, views

shell.setup_page("Layer curves")
if state.get("scores") is not None:
    live_chart.preload()  # plotly.js loads while the rest of the page runs and renders (bench/suite/reopen.py)

D = links.CURVES_DEFAULTS   # shared with the quick view of a run (ui/run_view.py)
with st.sidebar:
    st.subheader("Curves")
    scale_free = st.toggle("Scale-free MSSD/MASD", **state.bound("scale_free"),
                           help="Divide each token's difference by its input norm (hidden-state norms grow with "
                                "depth). Off: raw MSSD/MASD.")
    state.put("scale_free", scale_free)
    log_mssd = st.toggle("Log scale for MSSD/MASD", **links.seeded("log_mssd", D["log_mssd"]),
                         help="MSSD and MASD are dominated by a few outlier blocks; a log axis shows the rest.")
    clip = st.toggle("Clip outlier blocks", **links.seeded("clip_outliers", D["clip_outliers"]), disabled=log_mssd,
                     help="Fit the MSSD/MASD axes to the other blocks and write the outliers' values (▲) at the top "
                          "edge. Outlier: above 5 × the 90th percentile of the blocks.")
    show_bands = st.toggle("Bootstrap bands", **links.seeded("show_bands", D["show_bands"]),
                           help="Shade each curve's confidence band: percentile bootstrap over the calibration windows "
                                "(200 resamples, seed 0). Needs at least 2 windows.")
    level = st.select_slider("Band level", [0.8, 0.9, 0.95], **links.seeded("band_level", D["band_level"]), disabled=not show_bands,
                             format_func=lambda v: f"{v:.0%}")
    views.run_marker("curves_page", state.count_run("curves_page"))

st.title("Layer curves")
scores = models.require_scores()
L = scores.num_layers
st.caption(f"{scores.model} · {L} blocks · calibrated on {score_protocol(scores.calibration)}")
if scores.meta.get("partial"):
    part = scores.meta["partial"]
    st.warning(f"Partial scores: calibration was cancelled after {part['windows']} of {part['of']} windows.",
               icon=":material/hourglass_bottom:")
damage = state.result("damage")
damage = damage if damage is not None and len(damage) == scores.num_layers else None
# The metric traces depend on the scores and the toggles only: built (and validated) once per
# calibration; a slider move adds the dropped blocks' shading to this base (simdiff_core/export/figures.py: curves_spec).
bands = None
if show_bands:
    if uncertainty.has_windows(scores):
        bands = state.per_scores(scores, ("bands", level), lambda: uncertainty.bands(scores, level=level))
    else:
        st.caption("No bootstrap bands: these scores carry no per-window statistics (calibrate again with at "
                   "least 2 windows).")
base_key = ("curves", scale_free, log_mssd, clip, level if bands else None, None if damage is None else tuple(damage))
base = state.per_scores(scores, base_key,
                        lambda: figures.curves_base(scores.layers, scale_free=scale_free, log_mssd=log_mssd,
                                                   damage=damage, bands=bands, clip=clip))
if bands:
    st.caption(f"Shaded: {level:.0%} percentile-bootstrap band over the {len(scores.windows['tokens'])} calibration "
               "windows (200 resamples, seed 0); error bars on the fused importance likewise.")


def payload_for(criterion: str, kf: bool, kl: bool) -> dict:
    """The curves' shading and the fused bars at every count and α of the slider grid (ui/live_slider.py):
    built once per settings and session, so a ratio / α move is painted by the browser before the server."""
    fusion = settings.fusion_kwargs()
    key = ("live_curves", criterion, kf, kl, tuple(sorted(fusion.items())), base_key)

    def band(a: float):
        if not bands:
            return None
        return state.per_scores(scores, ("fused_band", level, a, fusion["beta"], fusion["scale_free"]),
                                lambda: uncertainty.fused_band(scores, alpha=a, level=level, **fusion))

    return state.per_scores_recent(scores, "live_curves", key, lambda: live_slider.curves_payload(
        scores, criterion, kf, kl, fusion, base, band))


@st.fragment
def curves_panel():
    """The ratio and α sliders with everything they change: a move reruns only this function.

    The two charts are live elements (ui/live_slider.py): the browser repaints them from a payload
    precomputed for every count and α as soon as a slider moves; this run then confirms them."""
    views.run_marker("curves_fragment", state.count_run("curves_fragment"))
    c1, c2 = st.columns(2)
    ratio = c1.slider(live_slider.RATIO_LABEL, 0.01, 1.0, step=0.01, **state.bound("ratio"),
                      help="Fraction of blocks the highlighted plan removes (shared with Prune preview).")
    state.put("ratio", ratio)
    alpha = c2.slider(live_slider.ALPHA_LABEL, 0.0, 1.0, step=0.05, **state.bound("alpha"),
                      help="Weight of similarity (1 − cosine) against difference (MSSD, MASD). α = 1 is cosine-only.")
    alpha = round(alpha, 2)  # the slider's 0.05 grid, as the precomputed payload (no float noise)
    state.put("alpha", alpha)
    links.publish()  # a fragment run: app.py does not run, so the URL follows the sliders here
    quick = run_view.link_markdown(state.get("run_id"), links.current()) if state.get("run_id") else None
    dropped = []
    criterion = state.get("criterion", "simdiff")
    payload = live = None
    try:
        plan = settings.current_plan(scores)
        payload = payload_for(criterion, bool(state.get("keep_first", True)), bool(state.get("keep_last", True)))
        dropped = plan.removed_layers
        st.markdown(f"Highlighted: the **{len(dropped)}** blocks that **{plan.criterion}** at ratio {ratio:.2f} "
                    f"would drop: `{dropped}`")
        a = live_slider.akey(alpha)
        live = {"id": payload["id"], "state": {"k": plan.num_removed, "a": a}}
        if quick:
            st.caption(quick)
        if live_slider.removed(payload, plan.num_removed, a) != dropped:  # same order, same rule: never expected
            st.error("internal: the precomputed curves differ from the plan")
    except SimDiffError as e:
        views.show_error(e)
    fusion = settings.fusion_kwargs()
    imp = scores.importance("simdiff", alpha=alpha, **fusion)
    frame = derived.curves_frame(scores.layers, imp, dropped)
    fband = None
    if bands:
        fband = state.per_scores(scores, ("fused_band", level, alpha, fusion["beta"], fusion["scale_free"]),
                                 lambda: uncertainty.fused_band(scores, alpha=alpha, level=level, **fusion))
        for k, b in list(bands.items()) + [("simdiff", fband)]:
            if k in frame.columns and isinstance(b, dict):
                frame[f"{k}_lo"], frame[f"{k}_hi"] = b["lo"], b["hi"]
    views.chart(figures.Spec(figures.curves_spec(base, dropped, markers=False)), "layer_curves", "curves", frame=frame,
                live=True, bind=live and dict(live, chart="curves"), payload=payload)
    views.chart(figures.Spec(live_slider.bars_at(imp, alpha, dropped, fband)), "simdiff_importance", "simdiff",
                frame=frame, live=True, bind=live and dict(live, chart="simdiff"), payload=payload)


curves_panel()


def linear_section():
    """Linear replaceability (simdiff_core/analysis/linear.py) beside the cosine / MSSD / MASD curves."""
    st.subheader("Linear replaceability")
    if all(l.get("linear") is None for l in scores.layers):
        why = (scores.meta.get("linear") or {}).get("reason", "these scores were made before the curve existed")
        st.caption(f"No linear-replaceability curve in these scores: {why}.")
        return
    lb = bands.get("linear") if bands else None
    # built once per calibration and band level, like the heatmaps (the plan's shading lives on the curves above)
    spec = state.per_scores(scores, ("linear_curve", level if lb else None),
                            lambda: figures_repair.linear_curve(scores.layers, lb).to_dict())
    views.chart(figures.Spec(spec), "linear_replaceability", "linear_curve", live=True,
                frame=figures_repair.linear_frame(scores.layers, lb))
    warn = (scores.meta.get("linear") or {}).get("warning")
    st.caption("Share of block i's removal error that one least-squares matrix on block i−1's MLP output cannot "
               "recover (ReplaceMe's repair; 0 = fully repairable, 1 = no help). Criterion `linear` ranks by it."
               + (" Band: the maps stay at the full-data fit; windows are resampled." if lb else "")
               + (f" Note: {warn}." if warn else ""))


linear_section()

if damage is None:
    st.caption("Add the measured ground truth (loss with each block removed) as a fourth curve, with "
               "criterion agreement, on the Ground truth page.")
st.page_link(shell.PAGES["ground_truth"], label="Ground truth: measured damage, criterion agreement, report",
             icon=":material/fact_check:")

st.header("Cross-layer heatmaps")
m = scores.matrices
tabs = st.tabs(["Output cosine", "n-block angular distance", "CKA", "n-block linear replaceability"])


def _heatmaps() -> list[tuple[int, str, dict, pd.DataFrame]]:
    """The heatmap specs and CSV frames: they depend on the scores alone, so built once per calibration."""
    out = []
    if "output_cosine" in m:
        out.append((0, "output_cosine", figures.heatmap(m["output_cosine"], "Cosine between block outputs", zmin=None,
                                                       zmax=1, hover_label="cosine").to_dict(),
                    pd.DataFrame(m["output_cosine"])))
    if "angular_boundaries" in m:
        D, x, y = derived.nblock_angular(m["angular_boundaries"])
        out.append((1, "angular", figures.heatmap(D, "Angular distance across n blocks (PruneMe): low = "
                                                 "removable window", x_title="first block l", y_title="n blocks", x=x,
                                                 y=y, colorscale="Magma", hover_label="distance").to_dict(),
                    pd.DataFrame(D, index=pd.Index(y, name="n"), columns=x)))
    if "cka" in m:
        out.append((2, "cka", figures.heatmap(m["cka"], "Linear CKA between block outputs", zmin=0, zmax=1,
                                             hover_label="CKA").to_dict(), pd.DataFrame(m["cka"])))
    return out


views_def = state.per_scores(scores, "heatmaps", _heatmaps)
# Every chart of this page is drawn by the live component (ui/live_chart.py), also those no slider moves:
# one plotly.js for the page. An st.plotly_chart would make the browser load and run Streamlit's own 4.7 MB
# plotly bundle as well, next to the curves, which then waited for both (bench/suite/reopen.py).
for t, name, spec, df in views_def:
    with tabs[t]:
        views.chart(figures.Spec(spec), name, f"hm_{name}", frame=df, live=True)
with tabs[3]:
    heat = state.result("linear_spans")
    if heat is not None:
        views.chart(figures.Spec(figures_repair.span_heatmap(heat).to_dict()), "linear_spans", "hm_linear_spans",
                    frame=figures_repair.span_frame(heat), live=True)
        st.caption(f"Removing [a, a+n): share of the error one matrix on block a−1 cannot recover; {heat['tokens']} "
                   f"calibration tokens, {heat['passes']} pass(es). Compare with the angular-distance tab: low "
                   "angular distance says the span changes little, low here says what it changes is repairable.")
    elif st.button("Compute the span heatmap (one more pass over the calibration windows)", key="linear_spans_btn"):
        from ui import runs

        # an opened run's model is loaded now (said first; refused if its weights are not the run's), and
        # its windows are cut again from the run's text and checked against its token hash (ui/runs.py)
        lm = runs.ensure_model()
        ids = state.get("calib_ids")
        if lm is None or lm.num_layers != L:
            st.error("The span heatmap needs the calibrated model: run Calibrate on the Load & calibrate page again.")
        elif ids is None:
            st.error("The span heatmap needs the run's calibration windows: "
                     f"{state.get('_windows_problem') or 'run Calibrate on the Load & calibrate page again'}.")
        else:
            from simdiff_core.analysis.linear_spans import span_replaceability

            bar = st.progress(0.0, text="Span heatmap…")
            made_under = state.tag()
            try:
                heat = span_replaceability(lm, ids, progress=lambda f, msg: bar.progress(min(f, 1.0), text=msg))
            except SimDiffError as e:
                views.show_error(e)
            else:
                state.put_result("linear_spans", heat, made_under=made_under)
                st.rerun()
if "method" in m:
    st.caption(m["method"])
if not views_def:
    st.info("These scores carry no cross-layer matrices.")
