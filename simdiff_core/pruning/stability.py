"""How stable is a plan? The share of bootstrap resamples (over calibration windows) that remove each block.

    from simdiff_core.pruning.stability import plan_stability
    st = plan_stability(scores, "simdiff", num=8)   # st.frequency[i]: share of resamples removing i

The resampled importances come from ``analysis.uncertainty`` (windows are the unit of resampling);
each replicate is planned with the planner's own ``select_lowest``. Cost: ``n_boot`` vectorised
re-plans over O(L x N) stored sums, no forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..analysis.metrics import importance
from ..analysis.uncertainty import DEFAULT_BOOT, DEFAULT_SEED, replicate_importance, replicate_metrics
from .plan import cosine_tiebreak, select_lowest


UNSTABLE_BELOW = 0.75


def select_lowest_cols(imp: np.ndarray, k: int, keep_first: bool = True, keep_last: bool = True,
                      tiebreak: np.ndarray | None = None) -> np.ndarray:
    """``plan.select_lowest`` for every column of ``imp`` (L, R): a (L, R) 0/1 matrix of removed blocks.

    Ties go by ``tiebreak`` (L, R) (lower first; the replicates' ``-cosine``, as ``plan.cosine_tiebreak``),
    then by the lower block index."""
    L, R = imp.shape
    lo, hi = (1 if keep_first else 0), (L - 1 if keep_last else L)
    if k > hi - lo:
        select_lowest(imp[:, 0], k, keep_first, keep_last)  # raises the planner's own error
    vals = np.nan_to_num(imp[lo:hi], nan=np.inf)
    if tiebreak is None:
        order = vals.argsort(axis=0, kind="stable")[:k] + lo  # stable: ties go to the lower block index
    else:
        tb = np.nan_to_num(np.asarray(tiebreak, dtype=np.float64)[lo:hi], nan=np.inf)
        idx = np.broadcast_to(np.arange(hi - lo)[:, None], vals.shape)
        order = np.lexsort((idx, tb, vals), axis=0)[:k] + lo  # last key sorts first
    out = np.zeros((L, R))
    np.put_along_axis(out, order, 1.0, axis=0)
    return out


@dataclass
class Stability:
    """Plan membership across bootstrap resamples (see the module docstring)."""

    removed: list[int]            # the full-data plan
    frequency: list[float]        # per block: share of replicates whose plan removes it
    n_boot: int
    seed: int
    threshold: float = UNSTABLE_BELOW

    @property
    def unstable(self) -> list[int]:
        """Blocks of the plan removed in fewer than ``threshold`` of the resamples."""
        return [i for i in self.removed if self.frequency[i] < self.threshold]

    @property
    def contenders(self) -> list[int]:
        """Blocks *not* in the plan that some resamples remove, most frequent first."""
        out = [i for i, f in enumerate(self.frequency) if f > 0 and i not in set(self.removed)]
        return sorted(out, key=lambda i: (-self.frequency[i], i))

    @property
    def stable(self) -> bool:
        return not self.unstable

    def to_dict(self) -> dict:
        return {"removed": self.removed, "frequency": self.frequency, "n_boot": self.n_boot, "seed": self.seed,
                "threshold": self.threshold, "unstable": self.unstable, "contenders": self.contenders}


def plan_stability(scores, criterion: str = "simdiff", num: int = 1, alpha: float = 0.5, keep_first: bool = True,
                   keep_last: bool = True, n_boot: int = DEFAULT_BOOT, seed: int = DEFAULT_SEED,
                   threshold: float = UNSTABLE_BELOW, **fusion) -> Stability:
    """How often each block is removed when the plan is made from a bootstrap resample of the windows.

    ``criterion``/``num``/``alpha``/locks/``fusion`` (beta, scale_free, norm) as for ``plan.make_plan``
    with a one-shot criterion; the full-data plan uses the same selection on ``scores.layers``.
    """
    reps = replicate_metrics(scores, n_boot, seed)
    # ties break by the cosine order, then the index, exactly as plan.make_plan does
    counts = select_lowest_cols(replicate_importance(reps, criterion, alpha=alpha, **fusion), num,
                                keep_first, keep_last, tiebreak=-reps["cosine"]).sum(axis=1)
    removed = select_lowest(importance(scores.layers, criterion, alpha=alpha, **fusion), num, keep_first, keep_last,
                            tiebreak=cosine_tiebreak(scores.layers))
    return Stability(removed=removed, frequency=(counts / n_boot).tolist(), n_boot=n_boot, seed=seed,
                     threshold=threshold)
