"""Recovery & accuracy: heal the pruned model with a short LoRA fine-tune, then compare dense / pruned / recovered.

Honest numbers (``workflows.recover_and_compare``): the dense model given the same LoRA run on the same
text is the reference, every perplexity is also measured on a second-domain text, and the flags of
``evaluation/honest.py`` are shown as warnings: a number that only looks good on the training corpus'
domain is never presented as recovery.

Recovery trains a private, materialised copy of the pruned model (``simdiff_core.evaluation.recover``); the
shared cached model is never touched. The recovered model lives in this session only (key
``recovery``) until it is exported. Accuracy comes from lm-eval (standard tasks when the Hugging Face
hub is reachable, else the shipped multiple-choice set through lm-eval local tasks, labelled
"offline"); results are cached per model and task list under ``accuracy``.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st
import torch

from simdiff_core import make_windows
from simdiff_core.evaluation.downstream import OFFLINE_TASKS, STANDARD_TASKS, evaluate_tasks, retained
from simdiff_core.evaluation.recover import RecoveryConfig
from simdiff_core.export.checkpoint import export_dir_under
from simdiff_core.export.recovery_figures import loss_curves
from simdiff_core.pruning.build import build_pruned
from simdiff_core.workflows import export_and_record, honest_table, recover_and_compare, recovery_evaluation
from ui import exports, models, settings, shell, state, views

shell.setup_page("Recovery & accuracy")
gpu = torch.cuda.is_available()

with st.sidebar:
    st.subheader("Recovery (LoRA)")
    c1, c2 = st.columns(2)
    steps = c1.number_input("Steps", 1, 5000, 200 if gpu else 40, key="rec_steps")
    rank = c2.selectbox("Rank", [2, 4, 8, 16, 32, 64], index=2, key="rec_rank")
    lr = st.select_slider("Learning rate", [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3], value=1e-3, key="rec_lr",
                          format_func=lambda v: f"{v:g}")
    train_text = st.text_input("Training text", "wikitext2", key="rec_text",
                               help="wikitext2 (validation split), a file path, text:RAW, hf:DATASET/SPLIT")
    c1, c2 = st.columns(2)
    train_n = c1.number_input("Windows", 2, 4096, 64 if gpu else 32, key="rec_windows")
    train_len = c2.number_input("Seq. length", 32, 4096, 512 if gpu else 128, step=32, key="rec_seq_len")
    c1, c2 = st.columns(2)
    ev_n = c1.number_input("Eval windows", 1, 256, 8 if gpu else 4, key="rec_eval_windows",
                           help="WikiText-2 *test* windows for perplexity (held out from training)")
    ev_len = c2.number_input("Eval seq.", 32, 4096, 512 if gpu else 256, step=32, key="rec_eval_seq_len")
    second_text = st.selectbox("Second-domain text", ["auto", "shipped:code", "shipped:dialogue", "none"],
                               key="rec_second_text",
                               help="Perplexity on a text of another domain beside WikiText-2 (auto: the shipped "
                                    "code sample, or dialogue when code is the training text), as many windows "
                                    "as fit, up to the eval windows")
    dense_ref = st.checkbox("Dense + same LoRA reference", True, key="rec_dense_ref",
                            help="Also train the dense model with the same settings on the same text: the fair "
                                 "reference (costs a second, full-depth training run)")
    st.subheader("Accuracy")
    tasks = st.multiselect("Tasks", list(STANDARD_TASKS), default=["arc_easy", "piqa", "hellaswag"], key="acc_tasks",
                           help="Offline, each is replaced by its stand-in from the shipped set: "
                                + ", ".join(OFFLINE_TASKS) + " (BoolQ/WinoGrande have none)")
    limit = st.number_input("Items per task (0 = all)", 0, 100000, 0 if gpu else 20, key="acc_limit")


st.title("Recovery & accuracy")
scores = models.require_scores()
lm = models.require_model()
plan = settings.require_plan(scores, lm)
L, k = plan.num_layers, plan.num_removed
model_id = (lm.source, str(lm.device), str(lm.dtype))  # results of another loaded model must not show up here
plan_key = (model_id, tuple(plan.removed_layers))
st.markdown(f"Plan: **{plan.criterion}** removes **{k} of {L}** blocks `{plan.removed_layers}`. Recovery fine-tunes "
            f"LoRA adapters (rank {rank}) on every linear layer of the kept blocks, then merges them into the weights.")

rec = state.result("recovery")
if rec is not None and rec["plan_key"] != plan_key:
    rec = None  # a recovery of another plan: do not mix it into this comparison

st.header("Recovery")
if st.button("Run recovery", type="primary", key="run_recovery"):
    try:
        with st.spinner("Tokenising…"):
            train = make_windows(lm.tokenizer, train_text, int(train_n), int(train_len))
        bar = st.progress(0.0, text="Measuring perplexity before training…")
        chart = st.empty()
        curves = {"pruned": [], "dense": []}
        phases = 2 if dense_ref else 1

        def tracker(name, n):
            def progress(step, total, loss):
                curves[name].append({"step": step, "loss": loss})
                label = "pruned + LoRA" if name == "pruned" else "dense + same LoRA (reference)"
                bar.progress((n + step / total) / phases, text=f"{label}: step {step}/{total} · loss {loss:.3f}")
                if step == 1 or step == total or step % max(1, total // 20) == 0:
                    chart.plotly_chart(loss_curves(curves["pruned"], curves["dense"]), key=f"live_loss_{name}_{step}")
            return progress

        cfg = RecoveryConfig(steps=int(steps), rank=int(rank), lr=float(lr))
        res, evaluation = recover_and_compare(
            lm, plan.kept_layers, train, {"source": train_text, "windows": int(train_n), "seq_len": int(train_len)},
            cfg, eval_windows=int(ev_n), eval_seq_len=int(ev_len),
            second_text=None if second_text == "none" else second_text, dense_reference=dense_ref,
            progress=tracker("pruned", 0), dense_progress=tracker("dense", 1))
        rec = {"plan_key": plan_key, "model": res.model, "report": res.report, "evaluation": evaluation}
        state.put_result("recovery", rec)
        bar.empty()
        chart.empty()
    except Exception as e:  # noqa: BLE001
        views.show_error(e)

if rec is not None:
    r = rec["report"]
    h = r["honesty"]
    c = st.columns(5)
    c[0].metric("Perplexity, dense", f"{r['ppl_dense']:.2f}")
    c[1].metric("Perplexity, pruned", f"{r['ppl_pruned']:.2f}")
    c[2].metric("Perplexity, recovered", f"{r['ppl_recovered']:.2f}",
                delta=f"{r['ppl_recovered'] - r['ppl_pruned']:+.2f}", delta_color="inverse")
    if r.get("ppl_dense_lora") is not None:
        c[3].metric("Dense + same LoRA", f"{r['ppl_dense_lora']:.2f}",
                    help="The dense model given the same LoRA run on the same text: the fair reference")
    c[4].metric("Training time", f"{r['seconds']:.0f} s", help=f"{r['trainable_params']:,} LoRA parameters")
    st.markdown(f"**{h['headline']}**")
    for msg in h["messages"]:
        st.warning(msg, icon=":material/warning:")
    st.dataframe(pd.DataFrame(honest_table(r)).set_index("model"), width="stretch", key="honest_table")
    views.chart(loss_curves(r["loss_curve"], (r.get("dense_reference") or {}).get("loss_curve")), "loss_curve",
                "loss_curve")
    sd = r.get("second_domain") or {}
    st.caption(f"Perplexity protocol: {r['eval_protocol']}." + (f" Second domain: {sd['protocol']}." if sd else "")
               + f" Training: {r['calibration']['source']}, {r['train_windows'][0]} × {r['train_windows'][1]} "
               f"tokens; targets {', '.join(r['target_modules'])}; the reference is trained with the same settings "
               "and seed.")
    c1, c2 = st.columns([3, 1])
    name = c1.text_input("Export name", f"{lm.name.split(' ')[0]}-minus{k}of{L}-recovered", key="rec_export_name")
    if c2.button("Export recovered", key="export_recovered"):
        try:
            target = export_dir_under(exports.export_root(), name)
            target.parent.mkdir(parents=True, exist_ok=True)
            with st.spinner("Writing the merged checkpoint…"):
                ev = recovery_evaluation(r)
                out, report = export_and_record(lm, plan, target, evaluation=ev, scores=scores, recovery=r,
                                                force=True, make_zip=True, model=rec["model"])
            state.put("exports", exports.record_export(state.get("exports") or [], out, plan, report.evaluation,
                                                     recovered=True))
            st.success(f"Exported to {out} (LoRA merged; loads with plain transformers)", icon=":material/check_circle:")
        except Exception as e:  # noqa: BLE001
            views.show_error(e)
else:
    st.caption("A short LoRA run on calibration text usually wins back part of the perplexity lost by pruning.")

st.header("Downstream accuracy")
acc = state.result("accuracy") or {}
models = {"dense": (lm.model, (model_id,)), "pruned": (None, plan_key)}
if rec is not None:
    models["recovered"] = (rec["model"], plan_key)
task_key = (tuple(tasks), int(limit))
if st.button("Evaluate accuracy", type="primary", key="run_accuracy", disabled=not tasks):
    try:
        bar = st.progress(0.0, text="Accuracy…")
        for n, (label, (model, pk)) in enumerate(models.items()):
            key = (label, pk, task_key)
            if key in acc and label != "recovered":
                continue
            model = build_pruned(lm, plan) if label == "pruned" else model
            acc[key] = evaluate_tasks(model, lm.tokenizer, list(tasks), limit=int(limit) or None,
                                      progress=lambda f, m, n=n, label=label: bar.progress(
                                          min(1.0, (n + f) / len(models)), text=f"{label}: {m}"))
            acc[key].pop("samples", None)
        state.put_result("accuracy", acc)
        bar.empty()
    except Exception as e:  # noqa: BLE001
        views.show_error(e)

rows = []
dense_acc = acc.get(("dense", (model_id,), task_key))
for label, (_, pk) in models.items():
    a = acc.get((label, pk, task_key))
    ppl = None
    if rec is not None:
        ppl = rec["report"].get(f"ppl_{label}")
    row = {"model": label, "blocks": L if label == "dense" else L - k, "ppl": ppl}
    if rec is not None and rec["report"].get("second_domain"):
        row["ppl (second domain)"] = rec["report"]["second_domain"].get(f"ppl_{label}")
    if a:
        row.update({t: round(100 * v, 2) for t, v in a["tasks"].items()})
        row["average"] = round(100 * a["average"], 2)
        ret = retained(dense_acc, a) if dense_acc else None
        row["% retained"] = round(ret, 1) if ret is not None else None
        row["source"] = a["source"]
    rows.append(row)
table = pd.DataFrame(rows).set_index("model")
st.dataframe(table, width="stretch", key="results_table")
shown = [acc[(label, pk, task_key)] for label, (_, pk) in models.items() if (label, pk, task_key) in acc]
sources = {a["source"] for a in shown}
if "offline" in sources:
    st.caption(next(a["note"] for a in shown if a["source"] == "offline"))
elif not sources:
    st.caption("Accuracy: zero-shot, log-likelihood multiple choice (lm-eval); % retained = average / dense average.")
st.download_button("Results (CSV)", table.to_csv(), "recovery_results.csv", "text/csv", key="dl_results")
