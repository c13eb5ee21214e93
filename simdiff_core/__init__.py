"""SimDiff Explorer's engine: load -> calibrate -> score -> plan -> prune/merge -> evaluate -> export.

    from simdiff_core import load_model, make_windows, score_model, make_plan, pruned_model, perplexity
    lm = load_model("default")
    scores = score_model(lm, make_windows(lm.tokenizer, "wikitext2", n=8, seq_len=256))
    plan = make_plan(scores, "simdiff", ratio=0.25)
    small = pruned_model(lm, plan.kept_layers)

A pure library: it never imports streamlit. The CLI (``python -m simdiff_core``) and the app call
the same functions.
"""

__version__ = "0.1.0"

import os as _os

# OpenMP threads that spin while waiting for each other collapse on an oversubscribed CPU (a shared
# 2-core box running other jobs): a forward at 2 threads measured 8-15x slower than at 1 thread,
# which made damage and greedy runs look 30-50x slower than they are. Sleeping waiters avoid it
# (bench/bench_eval.py: omp_passive_speedup). Only effective when simdiff_core is imported before
# torch (the CLI and the app); an explicit OMP_WAIT_POLICY in the environment wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .analysis.metrics import CRITERIA, importance, simdiff_importance  # noqa: E402
from .analysis.score import Scores, score_model  # noqa: E402
from .common.errors import Cancelled, SimDiffError  # noqa: E402
from .data.text import load_text, make_windows, text_source  # noqa: E402
from .evaluation.evaluate import eval_windows, generate_sample, measure_latency, perplexity  # noqa: E402
from .export.checkpoint import export_pruned, zip_dir  # noqa: E402
from .models.load import LoadedModel, load_model, wrap_model  # noqa: E402
from .pruning.plan import Plan, make_plan  # noqa: E402
from .pruning.prune import pruned_model  # noqa: E402

__all__ = [
    "Cancelled", "CRITERIA", "LoadedModel", "Plan", "Scores", "SimDiffError", "eval_windows",
    "export_pruned", "generate_sample", "importance", "load_model", "load_text", "make_plan",
    "make_windows", "measure_latency", "perplexity", "pruned_model", "score_model",
    "simdiff_importance", "text_source", "wrap_model", "zip_dir",
]
