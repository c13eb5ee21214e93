"""``best_repaired_vs_dense_smollm2``: the best training-free repaired 8/30 checkpoint the explorer makes / dense.

    python bench/run.py --only-repaired          # this section alone (minutes on 2 CPU cores)

Protocol (issue 22): embedded SmolLM2-135M float32; calibration 16 x 256 tokens of the shipped
WikiText-2 *valid* split; perplexity 8 x 512 tokens of the *test* split. Candidates: the one-shot plan of
every criterion (``analysis.metrics.CRITERIA``, ``linear`` included), PruneMe's block (from one scoring
pass), the repair-aware ``repairable`` method, both costs (from one span pass), and the repair-aware
*searches* (``SEARCHES``: greedy/SLEB, beam, local with ``objective="repaired_ppl"``, each set scored by
its perplexity after the repair on the selection windows below), all at 8 of 30 blocks. Each is
repaired with each of the repair stage's ``lstsq`` (ReplaceMe) and ``ridge`` (lstsq pulled towards
``T = I`` by a cross-validated strength), dense fit on the calibration windows; every (plan, repair)
pair is a candidate. The *chosen* checkpoint is the one with the lowest perplexity
after repair on **selection** windows: the next 8 x 256 tokens of the valid split, disjoint from the
windows the repair was fitted on (the fit windows flatter a repair that memorised them: the absolute-cost
plan has the lowest repaired calibration ppl and a poor test ppl) and never the test text it is then
measured on; the key is its test perplexity / the dense model's. Every candidate's numbers are kept
under ``candidates``. The searches *optimise* the selection perplexity, so theirs is optimistic (a
choice among them by it favours them); the test text still decides nothing.
Goal <= 2.0 (87.1 / 27.6 = 3.2 without repair).
"""

from __future__ import annotations

import time

from .harness import log

NUM, CALIB, SELECT, TEST = 8, (16, 256), (8, 256), (8, 512)
# repair-aware searches (methods/search.py, objective repaired_ppl on the selection windows)
SEARCHES = {"search:greedy:repaired": {"search": "greedy"},
            "search:beam:repaired": {"search": "beam", "beam_width": 3},
            "search:local:repaired": {"search": "local", "budget": 300, "seed": 0}}
# every plan is repaired both ways: plain least squares (ReplaceMe) and the cross-validated ridge
REPAIRS = ("lstsq", "ridge")


def bench_repaired(lm, only: str | None = None, methods=REPAIRS) -> dict:
    """``only``: comma list of candidate names to repair (default: all; the choice is among those run);
    ``methods``: the repairs each candidate plan is given (each (plan, repair) pair is a candidate)."""
    try:
        from simdiff_core.repair import apply_repair, fit_repair
    except ImportError:
        return {"best_repaired_vs_dense_smollm2": None, "reason": "the repair stage (simdiff_core.repair) is not installed"}
    from simdiff_core.analysis.metrics import CRITERIA
    from simdiff_core.analysis.score import score_model
    from simdiff_core.data.text import make_windows
    from simdiff_core.evaluation.evaluate import eval_windows, perplexity
    from simdiff_core.evaluation.repaired_objective import holdout_windows
    from simdiff_core.methods import run_method
    from simdiff_core.pruning.plan import make_plan
    from simdiff_core.pruning.prune import pruned_model

    t0 = time.perf_counter()
    calib = make_windows(lm.tokenizer, "wikitext2", n=CALIB[0], seq_len=CALIB[1])
    # the valid split's next windows: held out from the fit (the same helper as --holdout-samples)
    select = holdout_windows(lm.tokenizer, "wikitext2", after=CALIB[0], n=SELECT[0], seq_len=SELECT[1])
    assert CALIB[1] == SELECT[1] and not any(bool((select[i] == c).all()) for i in range(len(select)) for c in calib)
    test = eval_windows(lm.tokenizer, "wikitext2", TEST[1], TEST[0])
    want = [w.strip() for w in only.split(",") if w.strip()] if only else None
    plans, searched = {}, {}

    def wanted(prefix: str) -> bool:
        return want is None or any(w.startswith(prefix) for w in want)

    scores = None
    if wanted("oneshot:") or wanted("block") or wanted("search:"):
        scores = score_model(lm, calib, calibration={"source": "wikitext2"})
    if wanted("oneshot:") or wanted("block"):
        plans.update({f"oneshot:{c}": make_plan(scores, c, num=NUM).removed_layers for c in CRITERIA})
        plans["block"] = run_method("block", lm, calib, num=NUM, scores=scores).removed_layers
    if wanted("search:"):
        from simdiff_core.evaluation.repaired_objective import RepairedEvaluator

        # the repair-aware searches (objective repaired_ppl): every set repaired (lstsq, dense fit on the
        # calibration windows) and scored on the *selection* windows — never on the test text
        rev = RepairedEvaluator(lm, calib, select)
        for name, opts in SEARCHES.items():
            if want is not None and name not in want:
                continue
            t1 = time.perf_counter()
            plan = run_method("search", lm, calib, num=NUM, scores=scores, objective="repaired_ppl",
                              repaired_evaluator=rev, **opts)
            plans[name] = plan.removed_layers
            searched[name] = {"search_seconds": round(time.perf_counter() - t1, 1),
                              "search_objective_value": plan.details["objective_value"],
                              "evals": plan.details["evals"], "exact_evals": plan.details["exact_evals"]}
            log(f"{name}: {plan.removed_layers} selection ppl after repair {plan.details['objective_value']:.2f} "
                f"({plan.details['evals']} sets, {plan.details['exact_evals']} exact, "
                f"{searched[name]['search_seconds']} s)")
    if wanted("repairable:"):
        from simdiff_core.analysis.linear_spans import span_replaceability

        # the repair-aware method (methods/repairable.py), both costs: every plan the explorer offers is a
        # candidate; the held-out selection windows, not the test text, decide between them
        heat = span_replaceability(lm, calib, max_span=NUM, max_mb=1024)
        for cost in ("relative", "absolute"):
            plans[f"repairable:{cost}"] = run_method("repairable", lm, calib, num=NUM, spans=heat,
                                                     cost=cost).removed_layers
    if want is not None:
        unknown = [w for w in want if w not in plans]
        if unknown:
            raise SystemExit(f"error: unknown repaired candidates {unknown}; choose from {', '.join(plans)}")
        plans = {n: plans[n] for n in want}
    log("repaired candidates: " + "; ".join(f"{n} {r}" for n, r in plans.items()))
    dense = perplexity(lm.model, test, device=lm.device)["ppl"]
    seen, rows = {}, []
    for name, removed in plans.items():
        key = tuple(removed)
        if key in seen:
            for row in seen[key]:
                row["labels"].append(name)
            continue
        kept = [i for i in range(lm.num_layers) if i not in removed]
        pm = pruned_model(lm, kept)
        test_pruned = perplexity(pm, test, device=lm.device)["ppl"]
        seen[key] = []
        for method in methods:  # every (plan, repair) pair is a candidate; the selection windows choose
            rep = fit_repair(lm, removed, calib, method=method)
            fixed = apply_repair(pm, rep)
            row = {"labels": [name], "removed": list(removed), "repair": method, **searched.get(name, {}),
                   "calib_ppl_repaired": perplexity(fixed, calib, device=lm.device)["ppl"],
                   "select_ppl_repaired": perplexity(fixed, select, device=lm.device)["ppl"],
                   "test_ppl_pruned": test_pruned,
                   "test_ppl_repaired": perplexity(fixed, test, device=lm.device)["ppl"]}
            if method == "ridge":
                row["ridge_strengths"] = [s["ridge"]["strength"] for s in rep.spans if "ridge" in s]
            seen[key].append(row)
            rows.append(row)
            log(f"repaired ({method}) {name}: {removed} test {row['test_ppl_pruned']:.1f} -> "
                f"{row['test_ppl_repaired']:.1f} (after repair: fit windows {row['calib_ppl_repaired']:.1f}, "
                f"selection {row['select_ppl_repaired']:.1f})")
    best = min(rows, key=lambda r: r["select_ppl_repaired"])
    best["second_domain"] = second_domain(lm, best["removed"], best["repair"], calib)
    log(f"second domain ({best['second_domain']['protocol']}): dense {best['second_domain']['dense']:.2f}, pruned "
        f"{best['second_domain']['pruned']:.2f}, repaired {best['second_domain']['repaired']:.2f}")
    return {"best_repaired_vs_dense_smollm2": round(best["test_ppl_repaired"] / dense, 4),
            "best_repaired_plan": best, "dense_test_ppl": dense, "candidates": rows,
            "oracle_best_by_test_vs_dense": round(min(r["test_ppl_repaired"] for r in rows) / dense, 4),
            **{f"best_{m}_only_vs_dense": round(min((r for r in rows if r["repair"] == m),
                                                    key=lambda r: r["select_ppl_repaired"])["test_ppl_repaired"]
                                                / dense, 4) for m in methods},
            "protocol": f"calib {CALIB[0]} x {CALIB[1]} WikiText-2 valid; test {TEST[0]} x {TEST[1]} WikiText-2 test; "
                        f"{NUM}/{lm.num_layers} blocks; repairs {'/'.join(methods)} (dense fit); the (plan, repair) "
                        "pair chosen by the ppl after repair on "
                        f"{SELECT[0]} x {SELECT[1]} held-out WikiText-2 valid windows"
                        + (f"; candidates restricted to {only}" if only else ""),
            "seconds": round(time.perf_counter() - t0, 1)}


def second_domain(lm, removed, method: str, calib) -> dict:
    """Dense / pruned / repaired perplexity of one candidate on the shipped code sample (8 x 512 where it fits):
    a repair fitted on WikiText-2 that only learned WikiText's format would not carry over to it."""
    from simdiff_core.evaluation.evaluate import perplexity
    from simdiff_core.evaluation.honest import second_domain_text, second_domain_windows
    from simdiff_core.pruning.prune import pruned_model
    from simdiff_core.repair import apply_repair, fit_repair

    spec = second_domain_text("wikitext2", "wikitext2")
    ids, protocol = second_domain_windows(lm.tokenizer, spec, seq_len=TEST[1], windows=TEST[0])
    pm = pruned_model(lm, [i for i in range(lm.num_layers) if i not in set(removed)])
    fixed = apply_repair(pm, fit_repair(lm, removed, calib, method=method))
    return {"text": spec, "protocol": protocol, **{k: perplexity(m, ids, device=lm.device)["ppl"] for k, m in
                                                   (("dense", lm.model), ("pruned", pm), ("repaired", fixed))}}
