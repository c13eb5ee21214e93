"""``iterative_cost_vs_full_rescoring``: iterative SimDiff with prefix reuse / a full re-scoring per step."""

from __future__ import annotations

from .common import timed


def bench_iterative(lm, ids, k: int, rounds: int = 2) -> dict:
    """Iterative SimDiff k steps: prefix reuse (only the blocks above the last removal re-scored) vs a
    full score_model pass of every pruned model (``cached=False``); interleaved rounds, CPU time, same
    removal order and trace asserted."""
    from simdiff_core.analysis.score import score_model
    from simdiff_core.methods import run_method

    scores = score_model(lm, ids)
    cpu = {True: 0.0, False: 0.0}
    plans = {}
    for _ in range(rounds):
        for cached in (True, False):
            plans[cached], _, c = timed(lambda: run_method("iterative", lm, ids, num=k, scores=scores, cached=cached))
            cpu[cached] += c
    assert plans[True].details["trace"] == plans[False].details["trace"]
    d = plans[True].details
    return {"iterative_cost_vs_full_rescoring": round(cpu[True] / cpu[False], 3),
            "iterative_cached_cpu_s": round(cpu[True], 2), "iterative_full_cpu_s": round(cpu[False], 2),
            "iterative_block_calls": d["block_calls"], "iterative_block_calls_full": d["block_calls_full_rescoring"],
            "iterative_order": d["order"]}
