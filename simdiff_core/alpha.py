"""Choose SimDiff's alpha automatically, by the calibration perplexity of the pruning it produces.

    from simdiff_core.alpha import auto_alpha
    best, trials = auto_alpha(lm, scores, calib_ids, ratio=0.25)
    plan = make_plan(scores, "simdiff", ratio=0.25, alpha=best)

For each alpha on the grid (default 0, 0.1, ..., 1) the one-shot SimDiff plan is computed from the
cached scores (free); distinct plans are then evaluated once each by perplexity on the calibration
windows. The grid contains alpha = 1 (cosine-only ranking), so the chosen plan is never worse than
cosine-only *on the calibration data*. Ties go to the alpha closest to 0.5 (both views in play).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .evaluate import perplexity
from .plan import make_plan
from .prune import pruned_model

DEFAULT_GRID = tuple(round(a, 2) for a in np.linspace(0.0, 1.0, 11))


def auto_alpha(lm, scores, calib_ids, ratio=None, num=None, grid=DEFAULT_GRID, keep_first=True,
               keep_last=True, progress: Callable[[float, str], None] | None = None,
               should_stop=None, **fusion) -> tuple[float, list[dict]]:
    plans = {a: make_plan(scores, "simdiff", ratio=ratio, num=num, alpha=a, keep_first=keep_first,
                          keep_last=keep_last, **fusion) for a in grid}
    distinct = {}
    for a, p in plans.items():
        distinct.setdefault(tuple(p.removed_layers), []).append(a)
    ppl_of = {}
    for n, (removed, alphas) in enumerate(distinct.items()):
        if progress:
            progress(n / len(distinct), f"alpha {alphas} -> evaluating plan {n + 1}/{len(distinct)}")
        model = pruned_model(lm, plans[alphas[0]].kept_layers)
        ppl_of[removed] = perplexity(model, calib_ids, device=lm.device, should_stop=should_stop)["ppl"]
    if progress:
        progress(1.0, "done")
    trials = [{"alpha": a, "removed_layers": p.removed_layers, "ppl": ppl_of[tuple(p.removed_layers)]}
              for a, p in plans.items()]
    best = min(trials, key=lambda t: (round(t["ppl"], 6), abs(t["alpha"] - 0.5)))
    return best["alpha"], trials
