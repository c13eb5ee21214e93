"""How well each proxy criterion agrees with measured leave-one-out damage.

    from simdiff_core.evaluation.agreement import agreement_table, set_damage
    rows = agreement_table(scores, damage, alpha=0.5, ratio=0.25)   # one row per criterion
    # [{"criterion": "cosine", "spearman": 0.71, "kendall": 0.55, "topk_overlap": 5, "k": 7, ...}, ...]
    sets = set_damage(lm, calib_ids, {"simdiff": plan_a.removed_layers, "cosine": plan_b.removed_layers},
                      damage)                                          # multi-block damage vs sum of singles

Importance (higher = keep) is compared with damage (higher = removing the block hurts more), so a
perfect proxy has correlation +1. Correlations are computed here (no scipy at runtime):

* Spearman rho = Pearson correlation of the average ranks (ties share their mean rank).
* Kendall tau-b = (concordant - discordant) / sqrt((n0 - n1)(n0 - n2)), with n0 = n(n-1)/2 and n1,
  n2 the tied pairs in each vector — the variant scipy.stats.kendalltau computes by default.

Top-k overlap at a pruning ratio: k = round(ratio * L) (``plan.num_from_ratio``); the k blocks a
criterion would remove (its k lowest importances among the removable blocks, as ``make_plan`` picks
them, first/last locked by default) against the k blocks whose single removal hurts least.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..analysis.metrics import importance
from ..common.errors import SimDiffError
from ..common.progress import Progress
from ..pruning.plan import cosine_tiebreak, num_from_ratio, select_lowest
from .evaluate import ppl_from_loss

# Criteria compared with damage, in table order ("simdiff" uses the given alpha).
AGREEMENT_CRITERIA = ("cosine", "bi", "angular", "mssd", "masd", "mssd_rel", "masd_rel", "simdiff")


def rankdata(values) -> np.ndarray:
    """1-based ranks with ties given their average rank (scipy's 'average' method)."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(v.size, dtype=np.float64)
    sv = v[order]
    i = 0
    while i < v.size:
        j = i
        while j + 1 < v.size and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def _check_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise SimDiffError(f"correlation needs two vectors of the same length, got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise SimDiffError("correlation inputs contain NaN or infinite values")
    return x, y


def pearson(a, b) -> float:
    x, y = _check_pair(a, b)
    x, y = x - x.mean(), y - y.mean()
    den = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum()) / den if den > 0 else float("nan")


def spearman(a, b) -> float:
    """Spearman's rho with average ranks for ties (NaN when either vector is constant)."""
    x, y = _check_pair(a, b)
    return pearson(rankdata(x), rankdata(y))


def kendall_tau_b(a, b) -> float:
    """Kendall's tau-b (tie-corrected); O(n^2), fine for n = number of blocks."""
    x, y = _check_pair(a, b)
    n = x.size
    dx = np.sign(x[:, None] - x[None, :])  # (n, n)
    dy = np.sign(y[:, None] - y[None, :])
    iu = np.triu_indices(n, k=1)
    sx, sy = dx[iu], dy[iu]
    s = float((sx * sy).sum())  # concordant - discordant (pairs tied in either vector add 0)
    n0 = n * (n - 1) / 2
    tx, ty = float((sx == 0).sum()), float((sy == 0).sum())
    den = math.sqrt((n0 - tx) * (n0 - ty))
    return s / den if den > 0 else float("nan")


def topk_overlap(imp, damage, k: int, keep_first: bool = True, keep_last: bool = True, tiebreak=None) -> dict:
    """The k blocks a criterion removes (ties as in ``plan.make_plan``: ``tiebreak``) vs the k blocks
    whose single removal hurts least."""
    by_crit = select_lowest(imp, k, keep_first, keep_last, tiebreak=tiebreak)
    by_damage = select_lowest(damage, k, keep_first, keep_last)
    common = sorted(set(by_crit) & set(by_damage))
    return {"k": k, "overlap": len(common), "fraction": len(common) / k if k else float("nan"),
            "criterion_blocks": by_crit, "damage_blocks": by_damage, "common": common}


def _damage_vector(damage) -> np.ndarray:
    if hasattr(damage, "deltas"):
        return np.asarray(damage.deltas(), dtype=np.float64)
    return np.asarray(damage, dtype=np.float64)


def agreement_table(scores, damage, alpha: float = 0.5, ratio=None, num=None, criteria=AGREEMENT_CRITERIA,
                    keep_first: bool = True, keep_last: bool = True, **fusion) -> list[dict]:
    """One row per criterion: Spearman, Kendall tau-b and top-k overlap with measured damage.

    ``damage`` is a ``Damage`` or a per-block list (higher = more harmful to remove). Without
    ``ratio``/``num`` the top-k columns are left out.
    """
    d = _damage_vector(damage)
    L = scores.num_layers
    if d.size != L:
        raise SimDiffError(f"damage has {d.size} blocks but the scores have {L}")
    k = num_from_ratio(L, ratio, num) if (ratio is not None or num is not None) else None
    rows = []
    for c in criteria:
        try:
            imp = importance(scores.layers, c, alpha=alpha, **fusion)
        except ValueError as e:
            raise SimDiffError(str(e)) from None
        row = {"criterion": c if c != "simdiff" else f"simdiff (alpha={alpha:g})", "key": c,
               "spearman": spearman(imp, d), "kendall": kendall_tau_b(imp, d)}
        if k is not None:
            ov = topk_overlap(imp, d, k, keep_first, keep_last, tiebreak=cosine_tiebreak(scores.layers))
            row.update(k=k, topk_overlap=ov["overlap"], topk_fraction=ov["fraction"],
                       criterion_blocks=ov["criterion_blocks"], damage_blocks=ov["damage_blocks"])
        rows.append(row)
    return rows


def set_damage(lm, input_ids, sets: dict, damage, batch_size: int = 2,
               progress: Progress | None = None,
               should_stop: Callable[[], bool] | None = None, evaluator=None) -> list[dict]:
    """Measured damage of removing each *set* of blocks at once, next to the sum of single damages.

    ``sets`` maps a label (e.g. the criterion that chose it) to removed block indices. ``damage``
    must have been measured on the same ``input_ids``. Rows: label, removed, loss, ppl,
    delta_loss (measured), additive_delta (sum of single-block deltas), interaction = measured -
    additive (positive: blocks removed together hurt more than their single damages predict).

    The distinct sets are evaluated together by ``evaluator.PrefixEvaluator`` (lazy: no dense pass;
    sets that keep the same lowest blocks share them; pass ``evaluator`` built on ``input_ids`` to
    share one), the same loss as ``evaluate.perplexity`` of each pruned model.
    """
    from .evaluator import PrefixEvaluator

    L = lm.num_layers
    if damage.num_layers != L:
        raise SimDiffError(f"damage is for {damage.num_layers} blocks but the model has {L}")
    n_tok = int(input_ids.shape[0]) * (int(input_ids.shape[1]) - 1)
    if damage.calibration.get("tokens") not in (None, n_tok):
        raise SimDiffError("damage was measured on different calibration windows; re-measure it on these")
    deltas = damage.deltas()
    items = []
    for label, removed in sets.items():
        rem = sorted({int(i) for i in removed})
        if not rem or rem[0] < 0 or rem[-1] >= L or len(rem) >= L:
            raise SimDiffError(f"set '{label}' must remove 1..{L - 1} blocks among 0..{L - 1}, got {list(removed)}")
        items.append((label, tuple(rem)))
    if evaluator is not None and tuple(evaluator.shape) != tuple(input_ids.shape):
        raise SimDiffError("the evaluator was built on other calibration windows")
    if progress:
        progress(0.0, f"{len(items)} sets: recording the blocks' inputs")
    ev = evaluator if evaluator is not None else PrefixEvaluator(lm, input_ids, batch_size=batch_size,
                                                                 should_stop=should_stop, lazy=True)
    distinct = list(dict.fromkeys(rem for _, rem in items))  # several criteria often pick the same set
    loss_of = dict(zip(distinct, ev.losses(distinct, progress=None if progress is None else
                                           lambda f, m: progress(f, f"{len(distinct)} distinct sets: {m}"))))
    rows = []
    for label, rem in items:
        loss = loss_of[rem]
        additive = float(sum(deltas[i] for i in rem))
        measured = loss - damage.dense_loss
        rows.append({"label": label, "removed": list(rem), "loss": loss, "ppl": ppl_from_loss(loss),
                     "delta_loss": measured, "additive_delta": additive, "interaction": measured - additive,
                     "additive_ppl": ppl_from_loss(damage.dense_loss + additive)})
    if progress:
        progress(1.0, "done")
    return rows
