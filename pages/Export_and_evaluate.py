"""Export & evaluate: perplexity dense vs pruned, generation samples, latency, then the pruned checkpoint.

The pruned model is a weight-sharing view of the cached model (``export.build_pruned``), so
evaluating it costs no extra memory. Results are kept per plan in the session; exports are listed
so ratios and criteria can be compared.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st
import torch

from simdiff_core import generate_sample, measure_latency
from simdiff_core.export.checkpoint import export_dir_under
from simdiff_core.pruning.build import build_pruned
from simdiff_core.repair import REPAIR_METHODS
from simdiff_core.workflows import evaluate_plan, evaluate_repair, export_and_record, repair_record
from ui import exports, models, settings, shell, state, streamed_export, views

shell.setup_page("Export & evaluate")
gpu = torch.cuda.is_available()

with st.sidebar:
    st.subheader("Evaluation")
    c1, c2 = st.columns(2)
    windows = c1.number_input("Windows", 1, 256, 16 if gpu else 8, key="eval_windows",
                              help="WikiText-2 test windows for perplexity")
    seq_len = c2.number_input("Seq. length", 32, 4096, 512 if gpu else 256, step=32, key="eval_seq_len")
    do_gen = st.checkbox("Generation sample", value=True, key="do_gen", help="Greedy continuation from both models")
    prompt = st.text_input("Prompt", "The history of the city begins", key="prompt", disabled=not do_gen)
    do_lat = st.checkbox("Latency (prefill / decode)", value=True, key="do_lat",
                         help="Best of 2 runs: a 128-token prefill and 16 decode steps with the KV cache")
    repair = st.selectbox("Repair", REPAIR_METHODS, key="export_repair",
                          help="Training-free repair fitted on the calibration windows and folded into the weights "
                               "(lstsq: ReplaceMe; ridge: lstsq with a cross-validated pull towards no change, safe "
                               "with few calibration tokens; rescale: per-channel scale). Compared on calibration and "
                               "held-out text; none: the plain pruned model")

st.title("Export & evaluate")
scores = models.require_scores()
if streamed_export.is_streamed():  # streamed from disk: the pruned checkpoint is written block by block
    streamed_export.render(scores)
    st.stop()
lm = models.require_model()
plan = settings.require_plan(scores, lm)
L, k = plan.num_layers, plan.num_removed
st.markdown(f"Plan: **{plan.criterion}** removes **{k} of {L}** blocks `{plan.removed_layers}` "
            f"(change it on the Prune preview page).")

evals = state.result("evals") or {}
pruned_key = (tuple(plan.removed_layers), int(windows), int(seq_len))

st.header("Evaluate")
if st.button("Evaluate dense vs pruned", type="primary", key="evaluate"):
    try:
        bar = st.progress(0.0, text="Perplexity…")
        # the dense number does not depend on the plan: an earlier evaluation on these windows is reused
        earlier = next((e for k, e in evals.items() if k[1:] == pruned_key[1:]), None)
        ev = evaluate_plan(lm, plan, int(windows), int(seq_len), dense=earlier,
                           progress=lambda f, m: bar.progress(f, text=m))
        extra = {}
        if do_gen or do_lat:
            small = build_pruned(lm, plan)
        if do_gen:
            bar.progress(1.0, text="Generating samples…")
            extra["gen"] = (prompt, generate_sample(lm.model, lm.tokenizer, prompt, 40, lm.device),
                            generate_sample(small, lm.tokenizer, prompt, 40, lm.device))
        if do_lat:
            bar.progress(1.0, text="Measuring latency…")
            extra["lat"] = (measure_latency(lm.model, 128, 16, repeats=2, device=lm.device),
                            measure_latency(small, 128, 16, repeats=2, device=lm.device))
        evals[pruned_key] = ev
        evals[("extra",) + pruned_key] = extra
        if repair != "none":
            bar.progress(0.0, text="Repair…")
            evals[("repair", repair) + pruned_key] = evaluate_repair(
                lm, plan, state.get("calib_ids"), repair, ev, int(windows), int(seq_len),
                calibration=dict(state.get("calib_info") or {}), progress=lambda f, m: bar.progress(f, text=m))
        state.put_result("evals", evals)
        bar.empty()
    except Exception as e:  # noqa: BLE001
        views.show_error(e)

ev = evals.get(pruned_key)
if ev is not None:
    c = st.columns(3)
    c[0].metric("Perplexity, dense", f"{ev.ppl_dense:.2f}")
    c[1].metric("Perplexity, pruned", f"{ev.ppl_pruned:.2f}", delta=f"{ev.ppl_pruned - ev.ppl_dense:+.2f}",
                delta_color="inverse")
    c[2].metric("Ratio", f"{ev.ppl_pruned / ev.ppl_dense:.2f}×")
    st.caption(f"Protocol: {ev.protocol}; {ev.tokens} predicted tokens.")
    extra = evals.get(("extra",) + pruned_key, {})
    if "gen" in extra:
        p, a, b = extra["gen"]
        g1, g2 = st.columns(2)
        g1.markdown(f"**Dense** ({L} blocks)")
        g1.info(f"*{p}*{a}")
        g2.markdown(f"**Pruned** ({L - k} blocks)")
        g2.info(f"*{p}*{b}")
    if "lat" in extra:
        d, s = extra["lat"]
        lat = pd.DataFrame({"dense": [d["prefill_s"] * 1000, d["decode_tok_s"]],
                            "pruned": [s["prefill_s"] * 1000, s["decode_tok_s"]]},
                           index=["prefill 128 tok (ms)", "decode (tokens/s)"])
        l1, l2, l3 = st.columns([2, 1, 1])
        l1.dataframe(lat.style.format("{:.1f}"), width="stretch")
        l2.metric("Prefill speedup", f"{d['prefill_s'] / s['prefill_s']:.2f}×")
        l3.metric("Decode speedup", f"{s['decode_tok_s'] / d['decode_tok_s']:.2f}×")
else:
    st.caption("Perplexity on the WikiText-2 test split, dense vs pruned, with the same windows.")

rep_ev = evals.get(("repair", repair) + pruned_key) if repair != "none" else None
if rep_ev is not None:
    st.subheader(f"Repaired ({repair})")
    v = rep_ev["verdict"]
    st.dataframe(pd.DataFrame(rep_ev["rows"]).set_index("model"), width="stretch", key="repair_table")
    st.caption(f"Protocol: calibration = {rep_ev['calib_protocol']} (optimistic by construction); held-out = "
               f"{rep_ev['held_protocol']}; second domain = {rep_ev.get('second_protocol', 'not measured')} (a text "
               f"the repair never saw the like of). {rep_ev['summary']}.")
    if v["improved"]:
        st.success(v["headline"], icon=":material/check_circle:")
    for msg in v["messages"]:
        st.warning(msg, icon=":material/warning:")

st.header("Export")
default_name = f"{Path(str(scores.model)).name.split('.')[0]}-{plan.criterion}-minus{k}of{L}"
c1, c2 = st.columns([3, 1])
name = c1.text_input("Export name", default_name, key="export_name",
                     help=f"Folder under {exports.export_root()}; letters, digits, '.', '_', '-'")
out_dtype = c2.selectbox("Weights dtype", ["bfloat16", "float16", "float32"], key="export_dtype",
                         help="bfloat16 halves the download of an fp32 model")
force = st.checkbox("Replace an existing export with this name", key="export_force", value=False)
if st.button("Export pruned checkpoint", type="primary", key="export"):
    try:
        with st.spinner("Writing safetensors, config, tokenizer and report…"):
            target = export_dir_under(exports.export_root(), name)
            target.parent.mkdir(parents=True, exist_ok=True)
            # a repair evaluated above is what gets exported: its folded weights, its record in the report
            fix = {} if rep_ev is None else {"model": rep_ev["model"], "extra": {"repair": repair_record(rep_ev)}}
            out, report = export_and_record(lm, plan, target, evaluation=ev, scores=scores, force=force,
                                            make_zip=True, dtype=getattr(torch, out_dtype), **fix)
        state.put("exports", exports.record_export(state.get("exports") or [], out, plan, report.evaluation))
        st.success(f"Exported to {out}", icon=":material/check_circle:")
    except Exception as e:  # noqa: BLE001
        views.show_error(e)

exports = state.get("exports") or []
last = exports[-1] if exports else None
d1, d2, d3 = st.columns(3)
if last and Path(last["zip"]).is_file():
    zp = Path(last["zip"])
    d1.download_button(f"Download pruned checkpoint ({last['zip_MB']} MB)", data=zp.read_bytes, file_name=zp.name,
                       mime="application/zip", key="dl_zip", type="primary",
                       help="safetensors + config + tokenizer + simdiff_report.json; loads with "
                            "AutoModelForCausalLM.from_pretrained")
else:
    d1.button("Download pruned checkpoint", disabled=True, key="dl_zip_disabled", help="Export first")
d2.download_button("Plan (JSON)", plan.to_json(), "plan.json", "application/json", key="dl_plan")
d3.download_button("Plan (mergekit YAML)", plan.to_mergekit_yaml(lm.gguf_file or lm.source), "mergekit.yaml",
                   "text/yaml", key="dl_yaml")

if exports:
    st.subheader("Exports this session")
    st.dataframe(pd.DataFrame(exports).drop(columns=["zip"]).set_index("name"), width="stretch",
                 key="exports_table")
