"""Choose SimDiff's fusion weights automatically, by the calibration perplexity of the pruning.

    from simdiff_core.methods.alpha import auto_alpha
    alpha, trials = auto_alpha(lm, scores, calib_ids, ratio=0.25)          # alpha grid, beta fixed
    alpha, trials = auto_alpha(lm, scores, calib_ids, ratio=0.25, betas=AUTO_BETAS)
    best = trials_best(trials)     # {"alpha": ..., "beta": ..., "removed_layers": ..., "ppl": ...}

For each (alpha, beta) on the grid (alpha in 0, 0.1, ..., 1; beta in ``betas``, default just the
given ``beta``) the one-shot SimDiff plan is computed from the cached scores (free); the *distinct*
plans are then evaluated once each by perplexity on the calibration windows, together, through
``evaluator.PrefixEvaluator``: plans that keep the same lowest blocks share those blocks' compute.
The evaluator is built ``lazy`` (no plan is the dense model, so no dense pass: only block 0 runs
while every block's call arguments are recorded), so the cost is exactly the blocks of the plans'
prefix trie plus one LM head per plan (and 1/8 of a head for its vocabulary-subset part, see
``evaluator/head.py``): the floor of any exact evaluation up to that 1/8 (``bench/bench_eval.py``:
``auto_alpha_macs_vs_naive`` against ``auto_alpha_floor_vs_naive``, both in multiply-adds). The grid contains
alpha = 1 (cosine-only ranking), so the chosen plan is never worse than cosine-only *on the
calibration data*, for either normalisation (plans break importance ties by the cosine order, so
alpha = 1 is exactly the cosine plan; see ``plan.cosine_tiebreak``). ``betas=AUTO_BETAS`` (0, 0.5, 1) also lets the difference view lean entirely on
MSSD or MASD, which is what rescues models where cosine picks badly (e.g. Gemma3-270M: the
scale-free MSSD view nearly halves the pruned perplexity there). Ties go to the alpha closest to
0.5, then beta closest to 0.5 (all views in play).
"""

from __future__ import annotations

import numpy as np

from ..common.progress import Progress
from ..pruning.plan import make_plan

DEFAULT_GRID = tuple(float(round(a, 2)) for a in np.linspace(0.0, 1.0, 11))
AUTO_BETAS = (0.0, 0.5, 1.0)


def auto_alpha(lm, scores, calib_ids, ratio=None, num=None, grid=DEFAULT_GRID, keep_first=True,
               keep_last=True, progress: Progress | None = None,
               should_stop=None, betas=None, beta: float = 0.5, evaluator=None,
               **fusion) -> tuple[float, list[dict]]:
    """Best alpha and every trial (alpha, beta, removed_layers, ppl); see the module docstring.

    The distinct plans are evaluated together by ``evaluator.PrefixEvaluator`` (pass one built on
    ``calib_ids`` to share it), in prefix order: plans that agree on their lowest removed blocks
    share the blocks below the first difference.
    """
    from ..evaluation.evaluator import PrefixEvaluator

    betas = tuple(betas) if betas else (float(beta),)
    plans = {(a, b): make_plan(scores, "simdiff", ratio=ratio, num=num, alpha=a, beta=b,
                               keep_first=keep_first, keep_last=keep_last, **fusion)
             for b in betas for a in grid}
    distinct: dict[tuple, list] = {}
    for key, p in plans.items():
        distinct.setdefault(tuple(p.removed_layers), []).append(key)
    if progress:
        progress(0.0, f"evaluating {len(distinct)} distinct candidate prunings")
    # lazy: no dense pass beyond block 0 (no plan here is the dense model); each plan then costs its
    # blocks from the first position where it differs from the plans evaluated before it
    ev = evaluator if evaluator is not None else PrefixEvaluator(lm, calib_ids, should_stop=should_stop, lazy=True)
    sets = list(distinct)
    vals = ev.ppls(sets, progress=None if progress is None else
                   lambda f, m: progress(f, f"evaluating {len(distinct)} candidate prunings: {m}"))
    ppl_of = dict(zip(sets, vals))
    if progress:
        progress(1.0, f"{len(distinct)} distinct prunings evaluated")
    trials = [{"alpha": a, "beta": b, "removed_layers": p.removed_layers, "ppl": ppl_of[tuple(p.removed_layers)]}
              for (a, b), p in plans.items()]
    best = trials_best(trials)
    return best["alpha"], trials


def trials_best(trials: list[dict]) -> dict:
    return min(trials, key=lambda t: (round(t["ppl"], 6), abs(t["alpha"] - 0.5), abs(t.get("beta", 0.5) - 0.5)))
