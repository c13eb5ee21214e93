"""How much does the verdict depend on the calibration text, and how do two scored runs compare?

    from simdiff_core.pruning.sensitivity import sensitivity, relative_depth, overlay_frame
    rep = sensitivity({"WikiText-2": s1, "code": s2}, criterion="simdiff", num=8)
    rep.rho[("WikiText-2", "code")]      # Spearman rho between the two per-block importance rankings
    rep.removed["code"], rep.flips        # the blocks each source removes; blocks not removed by all

Why: the same model scored on encyclopaedic prose, source code or dialogue can rank its blocks
differently, and a pruning chosen on one text may not be the one another text would choose.

Definitions (also in docs/insight.md):

* Importance per source: ``metrics.importance`` with the same criterion, alpha, beta and
  normalisation for every source; ``removed[s]``: the plan ``plan.make_plan`` makes from it
  (same count and locks; ties by the cosine order).
* ``rho[a, b]``: Spearman's rank correlation of the two importance vectors, i.e. the Pearson
  correlation of their ranks (ties get their average rank). 1 = same order.
* ``overlap[a, b]``: ``|removed[a] & removed[b]|`` and Jaccard ``|A & B| / |A | B|``.
* ``flips``: blocks removed by at least one source but not by all, with the sources that remove them.

Two runs of different depth are overlaid on relative depth: block i of an L-block model sits at
``i / (L - 1)`` (0 = first block, 1 = last).

Cost: O(sources² x L) arithmetic on stored scores; no forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from ..analysis.metrics import importance, normalise
from ..common.errors import SimDiffError
from .plan import cosine_tiebreak, select_lowest


def spearman(a, b) -> float:
    """Spearman's rho: Pearson correlation of the (tie-averaged) ranks; NaN if either is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.size < 2:
        raise SimDiffError(f"cannot correlate rankings of {a.size} and {b.size} blocks")
    ra, rb = normalise(a, "rank"), normalise(b, "rank")
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


@dataclass
class Sensitivity:
    names: list[str]
    importance: dict[str, list[float]]
    removed: dict[str, list[int]]
    rho: dict[tuple[str, str], float] = field(default_factory=dict)
    overlap: dict[tuple[str, str], dict] = field(default_factory=dict)
    flips: dict[int, list[str]] = field(default_factory=dict)   # block -> sources that remove it

    @property
    def agreed(self) -> list[int]:
        """Blocks every source removes."""
        sets = [set(v) for v in self.removed.values()]
        return sorted(set.intersection(*sets)) if sets else []

    def pairs_table(self) -> list[dict]:
        return [{"source A": a, "source B": b, "spearman_rho": round(self.rho[a, b], 4),
                 "common_removed": self.overlap[a, b]["common"], "jaccard": round(self.overlap[a, b]["jaccard"], 4)}
                for a, b in self.rho]

    def to_dict(self) -> dict:
        return {"sources": self.names, "removed": self.removed, "agreed": self.agreed,
                "flips": {str(k): v for k, v in self.flips.items()}, "pairs": self.pairs_table()}


def sensitivity(runs: dict, criterion: str = "simdiff", num: int = 1, alpha: float = 0.5, keep_first: bool = True,
                keep_last: bool = True, **fusion) -> Sensitivity:
    """Compare the per-block verdicts of one model scored on several calibration sources (``runs``: name -> Scores)."""
    if len(runs) < 2:
        raise SimDiffError("calibration sensitivity needs at least two scored sources")
    sizes = {n: s.num_layers for n, s in runs.items()}
    if len(set(sizes.values())) != 1:
        raise SimDiffError(f"the sources were scored on models with different block counts: {sizes}")
    names = list(runs)
    imp = {n: importance(runs[n].layers, criterion, alpha=alpha, **fusion) for n in names}
    removed = {n: select_lowest(imp[n], num, keep_first, keep_last, tiebreak=cosine_tiebreak(runs[n].layers))
               for n in names}  # ties as in plan.make_plan
    out = Sensitivity(names, {n: v.tolist() for n, v in imp.items()}, removed)
    for a, b in combinations(names, 2):
        out.rho[a, b] = spearman(imp[a], imp[b])
        A, B = set(removed[a]), set(removed[b])
        out.overlap[a, b] = {"common": len(A & B), "jaccard": len(A & B) / len(A | B) if A | B else 1.0}
    every = set.intersection(*(set(v) for v in removed.values()))
    for i in sorted(set().union(*(set(v) for v in removed.values())) - every):
        out.flips[i] = [n for n in names if i in removed[n]]
    return out


def relative_depth(num_layers: int) -> np.ndarray:
    """Block i of an L-block model at i / (L - 1): 0 = first block, 1 = last (a 1-block model sits at 0)."""
    if num_layers < 1:
        raise SimDiffError("a model needs at least one block")
    return np.arange(num_layers) / max(num_layers - 1, 1)


def overlay_frame(runs: dict, metric: str, relative: bool | None = None):
    """Long table (run, block, depth, value) of one per-block metric for several runs, ready to plot.

    ``relative``: put the x axis on relative depth; default: only when the block counts differ.
    """
    import pandas as pd

    counts = {s.num_layers for s in runs.values()}
    if relative is None:
        relative = len(counts) > 1
    rows = []
    for name, s in runs.items():
        depth = relative_depth(s.num_layers)
        for i, layer in enumerate(s.layers):
            if metric not in layer:
                raise SimDiffError(f"run '{name}' has no per-block '{metric}'")
            rows.append({"run": name, "block": i, "depth": float(depth[i]), "x": float(depth[i]) if relative else i,
                         "value": float(layer[metric])})
    return pd.DataFrame(rows), relative
