"""Shootout: several pruning methods/criteria at the same ratio, one table.

Runs ``simdiff_core.methods.compare.run_compare`` on the session's model and calibration windows: every
chosen method makes a plan (merging plans included), each pruned model is measured by perplexity
(and multiple-choice accuracy when asked), and the page shows the table, a bar chart, and which
blocks each method removes. Results stay in the session (key ``shootout``) until the next run.
"""

from __future__ import annotations

import streamlit as st

from simdiff_core import CRITERIA, SimDiffError, eval_windows
from simdiff_core.evaluation.evaluate import protocol_note
from simdiff_core.export import figures
from simdiff_core.methods import METHODS
from simdiff_core.methods.compare import SHOOTOUT_DEFAULTS, overlap, parse_specs, run_compare, to_csv_text, to_markdown
from simdiff_core.methods.search import ALGORITHMS
from simdiff_core.repair import REPAIR_METHODS
from ui import models, settings, shell, state, views

shell.setup_page("Shootout")
# Defaults: one constant shared with the benchmark that times them (methods.compare.SHOOTOUT_DEFAULTS).
DEFAULT_METHODS = list(SHOOTOUT_DEFAULTS.methods)
DEFAULT_BUDGET = SHOOTOUT_DEFAULTS.budget
DEFAULT_EVAL_WINDOWS = SHOOTOUT_DEFAULTS.eval_windows
DEFAULT_EVAL_SEQ_LEN = SHOOTOUT_DEFAULTS.eval_seq_len
CHOICES = ([f"oneshot:{c}" for c in CRITERIA] + [f"iterative:{c}" for c in ("simdiff", "cosine")]
           + ["greedy", "block", "slm", "repairable"] + [f"search:{a}" for a in ALGORITHMS])

with st.sidebar:
    st.subheader("Shoot-out")
    specs = st.multiselect("Methods", CHOICES, default=DEFAULT_METHODS, key="so_methods",
                           help="; ".join(f"{m}: {d}" for m, d in METHODS.items()))
    ratio = st.slider("Pruning ratio", 0.05, 0.75, float(state.get("ratio", 0.25) or 0.25), 0.01, key="so_ratio")
    objective = st.selectbox("Greedy/search objective", ["ppl", "accuracy"], key="so_objective",
                             help="ppl: calibration perplexity; accuracy: shipped MC set, dev split")
    budget = st.number_input("Search budget (evaluations)", 2, 5000, DEFAULT_BUDGET, key="so_budget")
    accuracy = st.toggle("Measure MC accuracy", value=False, key="so_accuracy",
                         help="Shipped multiple-choice set, test split (35 items), log-likelihood scoring")
    so_repair = st.selectbox("Repair", REPAIR_METHODS, key="so_repair",
                             help="Also fit this training-free repair for every method's plan on the calibration "
                                  "windows and measure the same held-out perplexity (the ppl_repaired column)")
    c1, c2 = st.columns(2)
    ev_n = c1.number_input("Eval windows", 1, 256, DEFAULT_EVAL_WINDOWS, key="so_eval_windows")
    ev_len = c2.number_input("Eval seq.", 32, 4096, DEFAULT_EVAL_SEQ_LEN, step=32, key="so_eval_seq_len")
    st.caption("Defaults (these methods, budget and eval windows, with the default 8 x 256 calibration) are "
               "sized to finish within 5 minutes on a 2-core CPU with the embedded model (measured: "
               "bench/RESULTS.md, shootout_default_s). slm, greedy and search evaluate many candidate models "
               "(the old default set with slm used over 9 CPU-minutes at 8 x 256): add them with a small "
               "calibration or budget.")

st.title("Shoot-out")
scores = models.require_scores()
lm = models.require_model()
calib = state.get("calib_ids")
st.markdown("Same model, same number of removed blocks, several methods: perplexity of each pruned model on "
            "WikiText-2 test windows. Greedy and search rows evaluate many candidate models: on a CPU keep "
            "the budget small.")

if st.button("Run shoot-out", type="primary", key="run_shootout", disabled=not specs):
    try:
        parsed = parse_specs(list(specs))
        ev = eval_windows(lm.tokenizer, "wikitext2", int(ev_len), int(ev_n))
        bar = st.progress(0.0, text="Starting…")
        made_under = state.tag()  # the calibration these rows come from
        res = run_compare(lm, calib, parsed, ratio=float(ratio), eval_ids=ev, accuracy=accuracy, objective=objective,
                          budget=int(budget), keep_first=bool(state.get("keep_first", True)),
                          keep_last=bool(state.get("keep_last", True)), alpha=float(state.get("alpha", 0.5)),
                          fusion=settings.fusion_kwargs(),
                          first_token=scores.calibration.get("first_token", "included") != "excluded",
                          calibration=dict(state.get("calib_info") or {}), repair=so_repair,
                          progress=lambda f, m: bar.progress(f, text=m[:150]))
        bar.empty()
        res["protocol"] = protocol_note(lm.tokenizer, "wikitext2", int(ev_len), int(ev_n))
        state.put_result("shootout", res, made_under=made_under)
    except (SimDiffError, Exception) as e:  # noqa: BLE001 - every failure is one line
        views.show_error(e)

res = state.result("shootout")
if res is None:
    st.info("Choose methods in the sidebar and press **Run shoot-out**.")
    st.stop()

rows = res["rows"]
caption = (f"{lm.name}: {res['k']} of {res['num_layers']} blocks removed. ppl: {res.get('protocol', '')}."
           + (" MC acc: shipped set, test split." if res.get("accuracy") else ""))
st.dataframe([{k: r.get(k) for k in ("method", "criterion", "removed_layers", "merged_groups", "ppl", "ppl_repaired",
                                     "accuracy", "seconds", "evals", "exact_evals", "repair_note") if k in r}
              for r in rows], key="so_table", hide_index=True)
if res.get("repair", "none") != "none":
    st.caption(f"ppl_repaired: the same held-out windows after the {res['repair']} repair fitted on the calibration "
               "windows (empty where it does not apply: merged plans, refused families; repair_note says why).")
st.caption(caption + " evals: candidate sets a method considered; exact_evals: those evaluated exactly (the "
           "others were eliminated by a proven lower bound on their loss).")

labels = [f"{r['method']}:{r['criterion']}" if r["criterion"] else r["method"] for r in rows]
fig = figures.shootout_bars(rows)
views.chart(fig, "shootout_ppl", "so_bars")

sets = {lab: [int(i) for i in r["removed_layers"].split()] for lab, r in zip(labels, rows) if r["method"] != "dense"}
views.chart(figures.Spec(figures.overlap_spec(sets, res["num_layers"])), "shootout_overlap", "so_overlap")
olabels, mat = overlap(rows)
st.caption("Jaccard overlap of removed blocks: " + "; ".join(
    f"{olabels[i]} vs {olabels[j]}: {mat[i][j]:.2f}" for i in range(len(olabels)) for j in range(i + 1, len(olabels))))

c1, c2 = st.columns(2)
c1.download_button("Download CSV", to_csv_text(rows), "shootout.csv", "text/csv", key="so_csv")
c2.download_button("Download Markdown", to_markdown(res, caption), "shootout.md", "text/markdown", key="so_md")
