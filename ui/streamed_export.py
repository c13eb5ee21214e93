"""Export & evaluate for a model that was streamed from disk (Load & calibrate, "Stream blocks from disk").

The model is not in memory, so the page offers what streams: the pruned checkpoint (optionally with the
streamed ``lstsq``/``ridge``/``rescale`` repair folded in) written shard by shard into a directory the user names
(``simdiff_core.export.streamed.stream_export``, the CLI's ``prune --stream [--repair M]``). No zip: a
multi-GB checkpoint is not a download. Perplexity, samples and latency need the model in memory; the
written checkpoint is measured with ``ppl --stream``.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from simdiff_core import SimDiffError
from ui import models, settings, shell, state, views

DTYPES = {"same as the source": None, "bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}
REPAIRS = ("none", "lstsq", "ridge", "rescale")


def is_streamed() -> bool:
    """True when the session's scores come from a streamed calibration and no model is held."""
    return bool((state.get("calib_info") or {}).get("streamed")) and models.current_lm() is None


def render(scores) -> None:
    from simdiff_core.common.progress import with_eta
    from simdiff_core.export.streamed import stream_export
    from simdiff_core.models.device import pick_dtype
    from simdiff_core.models.streaming import resolve_stream_dir

    try:
        plan = settings.current_plan(scores)
        plan.validate(scores.num_layers)
    except SimDiffError as e:
        views.show_error(e)
        st.page_link(shell.PAGES["preview"], label="Change the plan on Prune preview", icon=":material/content_cut:")
        st.stop()
    info = state.get("calib_info") or {}
    meta = info.get("streamed") if isinstance(info.get("streamed"), dict) else {}
    budget = meta.get("budget_mb")
    st.markdown(f"Plan: **{plan.criterion}** removes **{plan.num_removed} of {plan.num_layers}** blocks "
                f"`{plan.removed_layers}` (change it on the Prune preview page).")
    st.info("This model was streamed from disk and is not in memory: the pruned checkpoint is written block by "
            "block" + (f" under the calibration's memory budget ({budget:g} MB)" if budget else "") + ". Perplexity, "
            "samples and latency need a normal load; measure the written checkpoint with "
            "`python -m simdiff_core ppl --model OUT --stream`.", icon=":material/info:")
    out = st.text_input("Output directory", key="stream_out", placeholder="/data/models/my-model-pruned",
                        help="Written into a temporary sibling first and renamed when complete.").strip()
    c1, c2 = st.columns(2)
    dt = c1.selectbox("Weights dtype", list(DTYPES), key="stream_out_dtype",
                      help="bfloat16 halves a float32 checkpoint on disk")
    repair = c2.selectbox("Repair", REPAIRS, key="stream_repair",
                          help="Fitted block by block on the calibration windows and folded into the kept weights "
                               "(lstsq: ReplaceMe; ridge: lstsq with a cross-validated pull towards no change; rescale: "
                               "per-channel scale). Not checked on held-out text here.")
    force = st.checkbox("Replace the directory if it exists", key="stream_force", value=False)
    if st.button("Write the pruned checkpoint (streamed)", type="primary", key="stream_export_go"):
        try:
            if not out:
                raise SimDiffError("enter the output directory to write the pruned checkpoint to")
            target = Path(out).expanduser()
            # A visitor types this path on the server: "replace" may only replace an earlier export (it has
            # its simdiff_report.json), never an arbitrary directory such as a home or a source checkout.
            if force and target.exists() and not (target / "simdiff_report.json").is_file():
                raise SimDiffError(f"'{target}' exists and is not a SimDiff export (no simdiff_report.json): "
                                   "it is not replaced; choose another directory")
            ids = state.get("calib_ids")
            if repair != "none" and ids is None:
                raise SimDiffError("the streamed repair needs this session's calibration windows: calibrate "
                                   "again on Load & calibrate (an opened run keeps no windows)")
            bar = st.progress(0.0, text="Streamed prune…")
            res = stream_export(
                resolve_stream_dir(scores.model), plan, target,
                out_dtype=pick_dtype(DTYPES[dt], None) if DTYPES[dt] else None, memory_budget_mb=budget,
                force=force, repair=repair, windows=ids, calibration=dict(scores.calibration or {}),
                device=scores.meta.get("device", "cpu"), dtype=scores.meta.get("dtype", "float32"),
                source=scores.model, progress=with_eta(lambda f, m: bar.progress(f, text=m)))
            bar.empty()
            state.put_result("stream_export", res)
        except Exception as e:  # noqa: BLE001 - one st.error line
            views.show_error(e)
    res = state.result("stream_export")
    if res:
        rep = f"; repair {res['repair']['method']} on spans {[s[:2] for s in res['repair']['spans']]}" if res.get("repair") else ""
        st.success(f"Wrote {res['num_layers']} blocks to `{res['out']}`: {res['shards']} shard(s), "
                   f"{res['bytes_written'] / 2**20:.1f} MB in {res['seconds']} s{rep}.", icon=":material/check_circle:")
        st.caption("Beside the weights: config.json, the tokenizer, simdiff_report.json, plan.json, mergekit.yaml "
                   "and a model card (README.md), as the in-memory export writes them.")
