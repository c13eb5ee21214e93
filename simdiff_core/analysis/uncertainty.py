r"""How sure is each curve, and the plan? Bootstrap over calibration windows.

    from simdiff_core.analysis.uncertainty import bands
    from simdiff_core.pruning.stability import plan_stability
    b = bands(scores)                       # {"cosine": {"lo": [L], "hi": [L], "value": [L]}, ...}
    st = plan_stability(scores, "simdiff", num=8)   # st.frequency[i]: share of resamples removing i

Why: a per-block score is a mean over calibration tokens, and tokens of one window are far from
independent (they share a context), so the unit of resampling is the *window*. ``score_model``
keeps, for every block i, field k and window w, the sum ``S_k[i, w]`` of the per-token values
(cosine, squared and absolute difference, their scale-free ratios, ``x²`` and ``|x|``) and the
token count ``c[w]`` (``Scores.windows``: O(L x N) numbers, never activations).

Definitions (also in docs/metrics.md):

* Full-data value of a metric: ``m_i = sum_w S[i, w] / sum_w c[w]`` — exactly the per-block mean
  the scoring pass reports (``bi = 1 - cosine``, ``angular = arccos(cosine)/pi``).
* Bootstrap replicate b: draw N windows with replacement (multiplicity ``n_b[w]``, a multinomial
  draw, generator seeded with ``seed``, default 0) and recompute
  ``m_i^b = sum_w n_b[w] S[i, w] / sum_w n_b[w] c[w]`` for every metric, and every fused SimDiff
  importance from those metrics (same alpha, beta, normalisation as the curve it belongs to).
* Linear replaceability (``analysis/linear.py``) is a fitted ratio, not a mean: refitting the d x d map
  per replicate would need per-window d x d sums (too big), so the maps stay at the full-data fit
  and a second scoring pass stores, per block and window, the residual at that fit ``U[i, w]`` and
  ``‖h_b − h_a‖²`` ``V[i, w]`` (``windows["lin_num"]``, ``["lin_den"]``); replicate b is
  ``sum_w n_b[w] U[i, w] / sum_w n_b[w] V[i, w]``. The band therefore shows how the ratio varies
  with the text, not the extra variance of refitting the map (it is narrower than a refit bootstrap).
* Band at level ``level`` (default 0.90): the percentile interval, i.e. the (1 - level)/2 and
  (1 + level)/2 quantiles of ``m_i^b`` over ``n_boot`` replicates (default 200).
* Plan stability: for every replicate, the plan the same criterion/count/alpha/beta/locks would make
  from the replicate's metrics; ``frequency[i]`` = share of replicates whose plan removes block i.
  A block of the full-data plan is *unstable* when ``frequency < threshold`` (default 0.75); a plan
  with any unstable block is flagged.

Cost: one (L x N) @ (N x n_boot) product per field, and rankings/selections vectorised over the
replicates (milliseconds for L = 30, 200 replicates); nothing touches the model. The
per-window sums add a handful of (B, S) reductions per block to the scoring pass; ``bench/run.py``
measures both against the plain pass.
"""

from __future__ import annotations

import math

import numpy as np

from ..common.errors import SimDiffError
from .metrics import importance

FIELDS = ("cos", "sq", "ab", "x2", "xa", "sq_rel", "ab_rel")
LINEAR_FIELDS = ("lin_num", "lin_den")
METRICS = ("cosine", "bi", "angular", "mssd", "masd", "mssd_rel", "masd_rel")
DEFAULT_LEVEL = 0.90
DEFAULT_BOOT = 200
DEFAULT_SEED = 0


def check_windows(windows: dict, num_layers: int) -> None:
    """Raise SimDiffError unless ``windows`` is a well-formed ``Scores.windows`` for ``num_layers`` blocks."""
    try:
        tokens = [float(t) for t in windows["tokens"]]
        n = len(tokens)
        for k in FIELDS + tuple(f for f in LINEAR_FIELDS if f in windows):
            rows = windows[k]
            if len(rows) != num_layers or any(len(r) != n for r in rows):
                raise ValueError(f"windows.{k} is not {num_layers} x {n}")
    except (KeyError, TypeError, ValueError) as e:
        raise SimDiffError(f"malformed scores file: bad per-window statistics ({e})") from None


def has_windows(scores) -> bool:
    w = getattr(scores, "windows", None) or {}
    return bool(w) and len(w.get("tokens", [])) >= 2


def _arrays(scores) -> tuple[dict[str, np.ndarray], np.ndarray]:
    if not has_windows(scores):
        raise SimDiffError("these scores have no per-window statistics (need a scoring pass with >= 2 windows; "
                           "score again with this version)")
    w = scores.windows
    out = {k: np.asarray(w[k], dtype=np.float64) for k in FIELDS}
    if has_linear_windows(scores):
        out.update({k: np.asarray(w[k], dtype=np.float64) for k in LINEAR_FIELDS})
    return out, np.asarray(w["tokens"], dtype=np.float64)


def has_linear_windows(scores) -> bool:
    w = getattr(scores, "windows", None) or {}
    return all(k in w for k in LINEAR_FIELDS) and len(w.get("lin_num", [])) == getattr(scores, "num_layers", -1)


def metrics_from_sums(sums: dict[str, np.ndarray], tokens: np.ndarray) -> dict[str, np.ndarray]:
    """Per-block metrics from (weighted) window sums: ``sums[k]`` (L, R) and ``tokens`` (R,) -> (L, R)."""
    n = np.maximum(tokens, 1e-12)[None, :]
    cos = sums["cos"] / n
    ang = np.arccos(np.clip(cos, -1.0, 1.0)) / math.pi
    out = {"cosine": cos, "bi": 1.0 - cos, "angular": ang, "mssd": sums["sq"] / n, "masd": sums["ab"] / n,
           "mssd_rel": sums["sq_rel"] / n, "masd_rel": sums["ab_rel"] / n}
    if "lin_num" in sums:
        den = sums["lin_den"]
        with np.errstate(invalid="ignore", divide="ignore"):
            out["linear"] = np.where(den > 0, sums["lin_num"] / np.where(den > 0, den, 1.0), np.nan)
    return out


def resample_weights(num_windows: int, n_boot: int = DEFAULT_BOOT, seed: int = DEFAULT_SEED) -> np.ndarray:
    """(num_windows, n_boot) multiplicities: each column is one draw of N windows with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(num_windows, np.full(num_windows, 1.0 / num_windows), size=n_boot).T.astype(np.float64)


def replicate_metrics(scores, n_boot: int = DEFAULT_BOOT, seed: int = DEFAULT_SEED) -> dict[str, np.ndarray]:
    """Every metric for every bootstrap replicate: name -> (L, n_boot)."""
    sums, tokens = _arrays(scores)
    W = resample_weights(len(tokens), n_boot, seed)
    return metrics_from_sums({k: v @ W for k, v in sums.items()}, tokens @ W)


def replicate_layers(reps: dict[str, np.ndarray], b: int) -> list[dict]:
    L = reps["cosine"].shape[0]
    return [dict({k: float(reps[k][i, b]) for k in METRICS}, index=i) for i in range(L)]


def _rank01(V: np.ndarray) -> np.ndarray:
    """Column-wise ``metrics.normalise(v, "rank")``: average ranks of ties, scaled to [0, 1]. V: (L, R)."""
    L = V.shape[0]
    if L <= 1:
        return np.zeros_like(V)
    order = V.argsort(axis=0, kind="stable")
    ranks = np.empty_like(V)
    np.put_along_axis(ranks, order, np.arange(L, dtype=np.float64)[:, None].repeat(V.shape[1], 1), axis=0)
    srt = np.take_along_axis(V, order, axis=0)
    for r in np.flatnonzero((np.diff(srt, axis=0) == 0).any(axis=0)):  # ties are rare: fix those columns exactly
        v = V[:, r]
        for val in np.unique(v):
            idx = v == val
            if idx.sum() > 1:
                ranks[idx, r] = ranks[idx, r].mean()
    return ranks / (L - 1)


def _robust01(V: np.ndarray) -> np.ndarray:
    """Column-wise ``metrics.normalise(v, "robust")``."""
    med = np.median(V, axis=0)
    mad = 1.4826 * np.median(np.abs(V - med), axis=0)
    std = V.std(axis=0)
    mad = np.where(mad > 0, mad, np.where(std > 0, std, 1.0))
    return (np.clip((V - med) / mad, -3.0, 3.0) + 3.0) / 6.0


def replicate_importance(reps: dict[str, np.ndarray], criterion: str, alpha: float = 0.5, beta: float = 0.5,
                         norm: str = "rank", scale_free: bool = True) -> np.ndarray:
    """``metrics.importance`` for every replicate at once: (L, R). Same formulas, vectorised over columns."""
    if criterion == "simdiff":
        if not (0.0 <= alpha <= 1.0) or not (0.0 <= beta <= 1.0):
            raise ValueError("alpha and beta must lie in [0, 1]")
        n01 = {"rank": _rank01, "robust": _robust01}.get(norm)
        if n01 is None:
            raise ValueError(f"unknown normalisation '{norm}' (rank or robust)")
        sfx = "_rel" if scale_free else ""
        return alpha * n01(reps["bi"]) + (1 - alpha) * (beta * n01(reps["mssd" + sfx])
                                                        + (1 - beta) * n01(reps["masd" + sfx]))
    if criterion == "cosine":
        return -reps["cosine"]
    if criterion in reps:
        return reps[criterion]
    if criterion == "linear":
        raise SimDiffError("these scores have no per-window linear-replaceability sums (score again with "
                           "per-window statistics on)")
    raise ValueError(f"unknown criterion '{criterion}'")


def _interval(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2], axis=1)
    return lo, hi


def bands(scores, level: float = DEFAULT_LEVEL, n_boot: int = DEFAULT_BOOT, seed: int = DEFAULT_SEED,
          fused: dict | None = None) -> dict[str, dict[str, list[float]]]:
    """Percentile bootstrap bands of every per-block metric (and the fused SimDiff importance).

    Returns ``{metric: {"value": [L], "lo": [L], "hi": [L]}}`` for ``METRICS`` plus ``"simdiff"``
    (and ``"linear"`` where the scores carry its per-window sums; NaN for block 0)
    (fused with ``fused`` = dict(alpha=, beta=, scale_free=, norm=), default alpha = beta = 0.5),
    and ``"_level"``.
    """
    if not 0.0 < level < 1.0:
        raise SimDiffError(f"band level must lie in (0, 1), got {level}")
    reps = replicate_metrics(scores, n_boot, seed)
    sums, tokens = _arrays(scores)
    full = metrics_from_sums({k: v.sum(1, keepdims=True) for k, v in sums.items()}, np.array([tokens.sum()]))
    out = {}
    for k in METRICS:
        lo, hi = _interval(reps[k], level)
        out[k] = {"value": full[k][:, 0].tolist(), "lo": lo.tolist(), "hi": hi.tolist()}
    if "linear" in reps:  # value: the stored curve (the fit's own residual), as the planner uses it
        lo, hi = _interval(reps["linear"], level)
        out["linear"] = {"value": [np.nan if l.get("linear") is None else float(l["linear"]) for l in scores.layers],
                         "lo": lo.tolist(), "hi": hi.tolist()}
    out["simdiff"] = fused_band(scores, level=level, n_boot=n_boot, seed=seed, _reps=reps, **(fused or {}))
    out["_level"] = level
    return out


def fused_band(scores, alpha: float = 0.5, beta: float = 0.5, scale_free: bool = True, norm: str = "rank",
               level: float = DEFAULT_LEVEL, n_boot: int = DEFAULT_BOOT, seed: int = DEFAULT_SEED,
               _reps: dict | None = None) -> dict[str, list[float]]:
    """Bootstrap band of the fused SimDiff importance at these weights: ``{"value", "lo", "hi"}`` per block.

    ``value`` is the importance of the stored (full-data) metrics, as the planner computes it."""
    reps = _reps if _reps is not None else replicate_metrics(scores, n_boot, seed)
    fk = dict(alpha=alpha, beta=beta, scale_free=scale_free, norm=norm)
    lo, hi = _interval(replicate_importance(reps, "simdiff", **fk), level)
    return {"value": importance(scores.layers, "simdiff", **fk).tolist(), "lo": lo.tolist(), "hi": hi.tolist()}
