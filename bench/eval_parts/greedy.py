"""``greedy_cost_vs_naive``: greedy k steps (SLEB) as the app runs it / the naive full-forward loop."""

from __future__ import annotations

from .common import naive_ppl, timed


def bench_greedy(lm, ids, k: int) -> dict:
    """SLEB greedy k steps as the app runs it (``run_method("greedy")``: evaluator construction, prefix
    reuse, exact elimination by the subset-head bound) vs the naive loop (pruned_model + perplexity for
    every candidate), CPU time of this process. The method runs before and after the naive loop (mean of
    the two; fair under load that drifts); the removal order must be the naive loop's. Also timed once:
    the method with elimination off (``bound=False``: every candidate exact), for where the gain comes from."""
    from simdiff_core.methods import run_method

    allowed = list(range(1, lm.num_layers - 1))

    def naive():
        removed: list[int] = []
        for _ in range(k):
            vals = {c: naive_ppl(lm, ids, tuple(sorted(removed + [c]))) for c in allowed if c not in removed}
            removed.append(min(vals, key=lambda c: (vals[c], tuple(sorted(removed + [c])))))
        return removed

    def method(**kw):
        return run_method("greedy", lm, ids, num=k, **kw)

    p1, w1, c1 = timed(method)
    order, wn, cn = timed(naive)
    p2, w2, c2 = timed(method)
    p0, w0, c0 = timed(lambda: method(bound=False))
    for p in (p1, p2, p0):
        assert p.details["order"] == order, (p.details["order"], order)
    cm, wm = (c1 + c2) / 2, (w1 + w2) / 2
    return {"greedy_method_cpu_s": round(cm, 2), "greedy_naive_cpu_s": round(cn, 2),
            "greedy_cost_vs_naive": round(cm / cn, 3), "greedy_cost_vs_naive_wall": round(wm / wn, 3),
            "greedy_no_elimination_cpu_s": round(c0, 2), "greedy_no_elimination_vs_naive": round(c0 / cn, 3),
            "greedy_candidates": p1.details["evals"], "greedy_exact_evals": p1.details["exact_evals"],
            "greedy_order": order}
