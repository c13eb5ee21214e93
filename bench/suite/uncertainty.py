"""Cost of per-window sums + bootstrap bands + plan stability over the plain scoring pass."""

from __future__ import annotations

import time

from .harness import best_of


def bench_uncertainty(lm, ids, bs, repeats, device) -> dict:
    """Per-window statistics + bootstrap bands + plan stability (200 resamples each) vs the plain scoring pass.

    ``uncertainty_overhead`` = (scoring with per-window sums + bands + stability) / (scoring without them);
    target <= 1.1.
    """
    from simdiff_core.analysis.score import score_model
    from simdiff_core.analysis.uncertainty import bands
    from simdiff_core.pruning.stability import plan_stability

    holder = {}

    def plain():
        score_model(lm, ids, batch_size=bs, window_stats=False, linear=False)  # linear: suite/linear.py

    def with_bands():
        sc = score_model(lm, ids, batch_size=bs, window_stats=True, linear=False)
        t0 = time.perf_counter()
        bands(sc)
        plan_stability(sc, "simdiff", num=max(1, round(0.25 * sc.num_layers)))
        holder["bootstrap_s"] = time.perf_counter() - t0

    with_bands()  # warm-up
    t = best_of({"scoring_plain": plain, "scoring_bands_stability": with_bands}, repeats, device)
    return {"uncertainty_overhead": t["scoring_bands_stability"] / t["scoring_plain"],
            "bootstrap_seconds": round(holder["bootstrap_s"], 4), "resamples": 200, "windows": int(ids.shape[0]),
            "seconds": {k: round(v, 4) for k, v in t.items()}}
