"""Cost of the linear-replaceability curve (analysis/linear.py) over the plain scoring pass.

``linear_scoring_cost`` = scoring with the curve and its per-window band pass (as the app and ``score``
calibrate) / the same scoring without the curve (both with per-window statistics, same batches,
interleaved, best of ``repeats``); ``linear_curve_only_cost``: the curve without its band pass (what
``score_model`` does by default, e.g. for the methods' dense scoring). The
older keys (``scoring_overhead``, ``uncertainty_overhead``, peak memory) keep measuring the metric pass
alone (``linear=False``), as they did before the curve existed, so their goals still mean the same.
"""

from __future__ import annotations

from .harness import best_of


def bench_linear(lm, ids, bs, repeats, device) -> dict:
    from simdiff_core.analysis.linear import accumulator_mb
    from simdiff_core.analysis.score import model_hidden_size, score_model

    holder = {}

    def plain():
        score_model(lm, ids, batch_size=bs, linear=False)

    def curve_only():
        score_model(lm, ids, batch_size=bs)

    def with_linear():
        holder["scores"] = score_model(lm, ids, batch_size=bs, linear_bands=True)

    with_linear()  # warm-up
    t = best_of({"scoring_plain": plain, "scoring_linear_no_band": curve_only, "scoring_linear": with_linear},
                repeats, device)
    sc = holder["scores"]
    return {"linear_scoring_cost": t["scoring_linear"] / t["scoring_plain"],
            "linear_curve_only_cost": t["scoring_linear_no_band"] / t["scoring_plain"],
            "linear_accumulator_mb": round(accumulator_mb(lm.num_layers, model_hidden_size(lm.model)), 1),
            "linear_values": [None if l.get("linear") is None else round(l["linear"], 4) for l in sc.layers],
            "seconds": {k: round(v, 4) for k, v in t.items()}}
