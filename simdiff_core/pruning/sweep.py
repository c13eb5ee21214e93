"""Every block count at once: the one-shot plan and its bootstrap stability for k = 1..K (the live slider).

    from simdiff_core.pruning.sweep import removal_order, stability_sweep
    order = removal_order(scores, "simdiff", alpha=0.5)     # make_plan(num=k) removes sorted(order[:k])
    freq = stability_sweep(scores, "simdiff", alpha=0.5)   # freq[k - 1][i]: plan_stability(num=k).frequency[i]

Why: the app repaints the preview in the browser while a slider moves, before the server answers
(ui/live_slider.py), so it needs the plan for every count up front. The one-shot planner removes the
k lowest-importance blocks in one fixed order (importance, then the cosine tie-break, then the index),
so the plan for k is the first k blocks of that order; each bootstrap replicate's plan is likewise a
prefix of the replicate's own order. One sort per replicate therefore gives the removal frequency for
every k: ``freq[k - 1][i]`` = share of replicates ranking block i among their first k removable blocks.

Cost: one sort of the L importances, one lexsort of the (L, n_boot) replicate importances and a
cumulative sum to a (K, L) table (K = removable blocks): a few ms at 80 blocks, no forward pass.
"""

from __future__ import annotations

import numpy as np

from ..analysis.uncertainty import DEFAULT_BOOT, DEFAULT_SEED, replicate_importance, replicate_metrics
from .plan import candidates, cosine_tiebreak


def removal_order(scores, criterion: str = "simdiff", alpha: float = 0.5, keep_first: bool = True,
                  keep_last: bool = True, **fusion) -> list[int]:
    """The removable blocks in the order the one-shot planner removes them (lowest importance first).

    ``make_plan(scores, criterion, num=k, ...)`` removes ``sorted(removal_order(...)[:k])`` for every k.
    """
    imp = np.nan_to_num(np.asarray(scores.importance(criterion, alpha=alpha, **fusion), dtype=np.float64),
                        nan=np.inf)
    allowed = candidates(scores.num_layers, keep_first, keep_last)
    tb = cosine_tiebreak(scores.layers)
    tb = np.zeros(len(imp)) if tb is None else np.nan_to_num(np.asarray(tb, dtype=np.float64), nan=np.inf)
    return [int(i) for i in sorted(allowed, key=lambda i: (imp[i], tb[i], i))]


def stability_sweep(scores, criterion: str = "simdiff", alpha: float = 0.5, keep_first: bool = True,
                    keep_last: bool = True, n_boot: int = DEFAULT_BOOT, seed: int = DEFAULT_SEED,
                    **fusion) -> np.ndarray:
    """(K, L) removal frequencies: row k - 1 is ``plan_stability(..., num=k).frequency`` for k = 1..K.

    K is the number of removable blocks (``L`` minus the locked ends); same resamples (``n_boot``,
    ``seed``) and the same selection rule as ``stability.plan_stability``.
    """
    reps = replicate_metrics(scores, n_boot, seed)
    imp = replicate_importance(reps, criterion, alpha=alpha, **fusion)
    L, R = imp.shape
    allowed = np.asarray(candidates(L, keep_first, keep_last), dtype=int)
    vals = np.nan_to_num(imp[allowed], nan=np.inf)
    tb = np.nan_to_num(-reps["cosine"][allowed], nan=np.inf)
    idx = np.broadcast_to(np.arange(len(allowed))[:, None], vals.shape)
    order = allowed[np.lexsort((idx, tb, vals), axis=0)]          # (K, R): block removed at each position
    hits = np.zeros((len(allowed), L))
    np.add.at(hits, (np.repeat(np.arange(len(allowed)), R), order.ravel()), 1.0)
    return np.cumsum(hits, axis=0) / R
