"""The shoot-out: several methods/criteria, one model, one budget of blocks, one table.

    from simdiff_core.methods.compare import parse_specs, run_compare, write_csv, to_markdown
    res = run_compare(lm, calib_ids, parse_specs("oneshot:cosine,oneshot:simdiff,greedy,block,slm"),
                      ratio=0.25, eval_ids=eval_windows(lm.tokenizer, "wikitext2", 256, 4))
    write_csv(res["rows"], "results.csv"); print(to_markdown(res))

A spec is ``method[:criterion]`` (``oneshot:cosine``), ``search:ALGO`` (``search:beam``) or
``repairable[:COST]`` (``repairable:absolute``; default ``relative``, see ``repairable.py``). The
dense model is scored once and the scores are shared by every method; each plan is applied
(``export.build_pruned``: merges included) and measured by perplexity on the evaluation windows
(``eval_ids``; without them, held-out WikiText-2 *test* windows, ``DEFAULT_EVAL_WINDOWS`` x
``DEFAULT_EVAL_SEQ_LEN`` tokens, never the calibration windows: an in-sample perplexity would favour
methods that fit the calibration text; ``result["eval_protocol"]`` says which) and, when ``accuracy`` is on, by multiple-choice accuracy on the shipped set's *test* split (searches
with the accuracy objective optimise the dev split). The first row is the dense model.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass

from ..analysis.metrics import CRITERIA
from ..common.errors import Cancelled, SimDiffError
from ..common.progress import Progress
from ..evaluation.evaluate import perplexity
from ..pruning.build import build_pruned
from ..pruning.plan import num_from_ratio
from . import METHODS, run_method
from .search import ALGORITHMS

DEFAULT_SPECS = "oneshot:cosine,oneshot:simdiff,iterative:simdiff,greedy,block,slm"


@dataclass(frozen=True)
class ShootoutDefaults:
    methods: tuple[str, ...]
    budget: int
    eval_windows: int
    eval_seq_len: int


# The Shootout page's defaults, sized to finish within 5 minutes on a 2-core CPU with the embedded model
# and the default 8 x 256 calibration (bench/eval_parts/shootout.py measures them: shootout_default_s).
SHOOTOUT_DEFAULTS = ShootoutDefaults(methods=("oneshot:cosine", "oneshot:simdiff", "iterative:simdiff", "block"),
                                     budget=40, eval_windows=4, eval_seq_len=256)
# held-out evaluation when the caller gives no eval_ids (the same as `compare`'s CLI defaults)
DEFAULT_EVAL_WINDOWS, DEFAULT_EVAL_SEQ_LEN = 8, 256
COLUMNS = ["method", "criterion", "removed_layers", "merged_groups", "num_removed", "ppl", "ppl_repaired", "accuracy",
           "acc_norm", "seconds", "evals", "exact_evals"]


def parse_specs(text: str | list) -> list[dict]:
    """``"oneshot:cosine,greedy,search:beam"`` -> [{"method", "criterion"|"search"}, ...]."""
    parts = text if isinstance(text, list) else [p.strip() for p in str(text).split(",")]
    specs = []
    for p in parts:
        if not p:
            continue
        method, _, arg = p.partition(":")
        if method not in METHODS:
            raise SimDiffError(f"unknown method '{method}' in --methods; choose from {', '.join(METHODS)}")
        spec = {"method": method, "label": p}
        if arg:
            if method == "search":
                if arg not in ALGORITHMS:
                    raise SimDiffError(f"unknown search algorithm '{arg}'; choose from {', '.join(ALGORITHMS)}")
                spec["search"] = arg
            elif method == "repairable":
                from .repairable import COSTS

                if arg not in COSTS:
                    raise SimDiffError(f"unknown repairable cost '{arg}' in '{p}'; choose from {', '.join(COSTS)}")
                spec["cost"] = arg
            elif method in ("oneshot", "iterative"):
                if arg not in CRITERIA:
                    raise SimDiffError(f"unknown criterion '{arg}' in '{p}'; choose from {', '.join(CRITERIA)}")
                spec["criterion"] = arg
            else:
                raise SimDiffError(f"method '{method}' takes no ':{arg}' (only oneshot/iterative take a criterion, search an algorithm, repairable a cost)")
        specs.append(spec)
    if not specs:
        raise SimDiffError("no methods given")
    return specs


def _criterion_label(plan) -> str:
    d = plan.details
    if plan.method == "search":
        return f"{d.get('objective')}/{d.get('search')}"
    if plan.method == "greedy":
        return str(d.get("objective", plan.criterion))
    return str(plan.criterion or "")


def run_compare(lm, calib_ids, specs: list[dict], ratio=None, num=None, eval_ids=None, accuracy: bool = False,
                objective: str = "ppl", budget: int | None = None, keep_first: bool = True, keep_last: bool = True,
                calibration: dict | None = None, alpha: float = 0.5, accuracy_items: list | None = None,
                progress: Progress | None = None, should_stop=None,
                eval_protocol: str | None = None, fusion: dict | None = None,
                first_token: bool = True, repair: str = "none", holdout_ids=None,
                objective_repair: str = "lstsq") -> dict:
    """Run every spec and measure it.

    Returns ``{"rows", "plans", "k", "num_layers", "model", "accuracy", "eval_protocol"}``.
    Without ``eval_ids`` perplexity is measured on held-out WikiText-2 test windows (module docstring).

    ``budget`` caps the evaluations of ``search`` rows (greedy always runs in full).
    ``fusion`` (beta, scale_free, norm) goes with ``alpha`` to the oneshot and iterative rows, so their
    SimDiff plans are the ones the same settings give everywhere else (default: beta 0.5, scale-free, rank).
    ``first_token``: whether the dense scores count position 0 (``score.score_model``); pass the session's.
    ``accuracy_items`` replaces the shipped MC test split for the accuracy column.
    ``repair`` (``lstsq``/``ridge``/``rescale``): every pruned row also gets ``ppl_repaired``, the same held-out
    perplexity after ``repair.fit_repair`` on ``calib_ids`` (NaN for merged plans and refused families,
    ``repair_note`` says why); ``result["repair"]`` names the method.
    ``objective_repair``: the repair the ``repaired_ppl`` objective applies to every set (``lstsq``/``ridge``/
    ``rescale``). ``holdout_ids``: the held-out windows of the ``repaired_ppl`` objective (greedy/search rows; not
    ``eval_ids``, which measure the result), other than ``calib_ids``, on which the repair is fitted.
    """
    from ..analysis.score import score_model
    from ..evaluation.objectives import load_mc, mc_accuracy

    k = num_from_ratio(lm.num_layers, ratio, num)
    if objective == "repaired_ppl" and any(sp["method"] in ("greedy", "search") for sp in specs):
        from ..evaluation.repaired_objective import check_holdout

        check_holdout(calib_ids, holdout_ids)  # fail before any work, not per row
    if repair != "none":
        from ..repair.accumulate import check_fit_tokens, hidden_size

        check_fit_tokens(repair, int(calib_ids.numel()), hidden_size(lm.model))  # lstsq on too few tokens
    if eval_ids is None:
        from ..evaluation.evaluate import eval_windows, protocol_note

        eval_ids = eval_windows(lm.tokenizer, "wikitext2", DEFAULT_EVAL_SEQ_LEN, DEFAULT_EVAL_WINDOWS)
        eval_protocol = protocol_note(lm.tokenizer, "wikitext2", DEFAULT_EVAL_SEQ_LEN, DEFAULT_EVAL_WINDOWS)
    elif eval_protocol is None:
        eval_protocol = f"caller's evaluation windows, {eval_ids.shape[0]} x {eval_ids.shape[1]} tokens"
    test_items = (accuracy_items or load_mc(split="test")) if accuracy else None
    n_steps = len(specs) + 2
    step = {"i": 0}

    def sub(frac, msg):
        if progress is not None:
            progress(min(1.0, (step["i"] + frac) / n_steps), f"[{step['label']}] {msg}")

    def measure(model) -> dict:
        out = {"ppl": perplexity(model, eval_ids, device=lm.device, should_stop=should_stop)["ppl"]}
        if test_items is not None:
            r = mc_accuracy(model, lm.tokenizer, test_items, device=lm.device, should_stop=should_stop)
            out.update(accuracy=r["accuracy"], acc_norm=r["acc_norm"])
        return out

    step["label"] = "dense"
    sub(0.0, "scoring and measuring the dense model")
    scores = score_model(lm, calib_ids, should_stop=should_stop, calibration=calibration or {},
                         first_token=first_token)
    rows = [{"method": "dense", "criterion": "", "removed_layers": "", "merged_groups": "", "num_removed": 0,
             **measure(lm.model), "seconds": 0.0, "evals": 0, "exact_evals": 0}]
    plans = []
    shared = {}  # one prefix-cached evaluator on the calibration windows for every method that evaluates

    def evaluator():
        if "ev" not in shared:
            from ..evaluation.evaluator import PrefixEvaluator

            shared["ev"] = PrefixEvaluator(lm, calib_ids, should_stop=should_stop)
        return shared["ev"]

    def repaired_evaluator():  # one for every repair-aware row: one capture, span fits shared
        if "rep" not in shared:
            from ..evaluation.repaired_objective import RepairedEvaluator

            shared["rep"] = RepairedEvaluator(lm, calib_ids, holdout_ids, method=objective_repair,
                                              should_stop=should_stop)
        return shared["rep"]

    for n, spec in enumerate(specs):
        step["i"], step["label"] = n + 1, spec["label"]
        opts = {k_: v for k_, v in spec.items() if k_ not in ("method", "label")}
        if spec["method"] in ("greedy", "search"):
            opts["objective"] = objective
        if spec["method"] == "search":  # greedy (SLEB) runs to completion; searches need a cap
            opts["budget"] = budget
        if spec["method"] in ("oneshot", "iterative"):
            opts.setdefault("criterion", "simdiff")
            opts["alpha"] = alpha
            for name, v in (fusion or {}).items():
                opts.setdefault(name, v)
        t0 = time.perf_counter()
        try:
            if spec["method"] == "slm" or (spec["method"] in ("greedy", "search") and objective == "ppl"):
                opts["evaluator"] = evaluator()
            if spec["method"] in ("greedy", "search") and objective == "repaired_ppl":
                opts["repaired_evaluator"] = repaired_evaluator()
            plan = run_method(spec["method"], lm, calib_ids, num=k, keep_first=keep_first, keep_last=keep_last,
                              progress=sub, should_stop=should_stop, calibration=calibration, scores=scores, **opts)
        except Cancelled:
            raise
        except SimDiffError as e:
            # One method that cannot reach k blocks (e.g. SLM's threshold) must not lose the whole table.
            nan = float("nan")
            rows.append({"method": spec["method"], "criterion": f"failed: {e}", "removed_layers": "",
                         "merged_groups": "", "num_removed": 0, "ppl": nan,
                         **({"accuracy": nan, "acc_norm": nan} if test_items is not None else {}),
                         "seconds": round(time.perf_counter() - t0, 2), "evals": 0, "exact_evals": 0})
            continue
        seconds = time.perf_counter() - t0
        sub(0.95, "measuring the pruned model")
        small = build_pruned(lm, plan)
        m = measure(small)
        if repair != "none":
            sub(0.97, f"repair {repair}")
            m.update(_repaired_ppl(lm, plan, small, calib_ids, eval_ids, repair, calibration, should_stop))
        plans.append(plan)
        rows.append({"method": spec["method"], "criterion": _criterion_label(plan),
                     "removed_layers": " ".join(map(str, plan.removed_layers)),
                     "merged_groups": "; ".join(f"{g['layers'][0]}-{g['layers'][-1]}->{g['base']}"
                                                for g in plan.merged_groups),
                     "num_removed": plan.num_removed, **m, "seconds": round(seconds, 2),
                     # evals: candidate sets considered; exact_evals: those evaluated exactly (the rest
                     # were eliminated by a proven lower bound, see methods/search.py)
                     "evals": plan.details.get("evals", 0),
                     "exact_evals": plan.details.get("exact_evals", plan.details.get("evals", 0))})
    step["i"], step["label"] = n_steps - 1, "done"
    sub(1.0, "done")
    return {"rows": rows, "plans": plans, "k": k, "num_layers": lm.num_layers, "model": lm.source,
            "accuracy": accuracy, "eval_protocol": eval_protocol, "repair": repair}


def _repaired_ppl(lm, plan, small, calib_ids, eval_ids, method, calibration, should_stop) -> dict:
    """``{"ppl_repaired", "repair_note"}`` for one row: fit on the calibration windows, measure held-out."""
    from ..repair import RepairRefused, apply_repair, fit_repair

    if plan.merged_groups:
        return {"ppl_repaired": float("nan"), "repair_note": "not repaired: merged plan"}
    try:
        rep = fit_repair(lm, plan.removed_layers, calib_ids, method=method, calibration=calibration,
                         should_stop=should_stop)
    except RepairRefused as e:
        return {"ppl_repaired": float("nan"), "repair_note": str(e)}
    ppl = perplexity(apply_repair(small, rep), eval_ids, device=lm.device, should_stop=should_stop)["ppl"]
    return {"ppl_repaired": ppl, "repair_note": rep.summary()}


def overlap(rows: list[dict]) -> tuple[list[str], list[list[float]]]:
    """Labels and the Jaccard overlap matrix of the removed-block sets of the pruned rows."""
    pr = [r for r in rows if r["method"] != "dense"]
    labels = [f"{r['method']}:{r['criterion']}" if r["criterion"] else r["method"] for r in pr]
    sets = [set(r["removed_layers"].split()) for r in pr]
    mat = [[len(a & b) / max(1, len(a | b)) for b in sets] for a in sets]
    return labels, mat


def columns(rows) -> list[str]:
    has_acc = any("accuracy" in r for r in rows)
    has_rep = any("ppl_repaired" in r for r in rows)
    return [c for c in COLUMNS if (has_acc or c not in ("accuracy", "acc_norm")) and (has_rep or c != "ppl_repaired")]


def to_csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns(rows), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: (f"{r[c]:.4f}" if isinstance(r.get(c), float) else r.get(c, "")) for c in columns(rows)})
    return buf.getvalue()


def write_csv(rows: list[dict], path) -> None:
    from pathlib import Path

    from ..common.fileio import atomic_write_text

    atomic_write_text(Path(path), to_csv_text(rows))


def to_markdown(result: dict, caption: str = "") -> str:
    rows = result["rows"]
    acc = any("accuracy" in r for r in rows)
    rep = any("ppl_repaired" in r for r in rows)
    head = (["method", "criterion / objective", "removed blocks", "ppl"]
            + ([f"ppl repaired ({result.get('repair')})"] if rep else []) + (["MC acc"] if acc else []) + ["time (s)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        removed = r["removed_layers"] or "—"
        if r["merged_groups"]:
            removed += f" (merged {r['merged_groups']})"
        cells = [r["method"], r["criterion"] or "—", removed, f"{r['ppl']:.2f}"]
        if rep:
            cells.append("—" if "ppl_repaired" not in r else f"{r['ppl_repaired']:.2f}")
        if acc:
            cells.append(f"{100 * r['accuracy']:.1f}%")
        cells.append(f"{r['seconds']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    if caption:
        lines += ["", caption]
    return "\n".join(lines) + "\n"
