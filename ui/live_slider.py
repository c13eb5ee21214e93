"""What the slider pages precompute so the browser repaints a move before the server answers (issue 17).

Why: a Streamlit rerun is a server round trip plus a React render of the whole fragment; measured, that
alone is 3-6 x the round-trip floor. So each slider page builds, once per settings (scores, criterion,
locks, α on Prune preview, fusion settings, compared criteria; cached per session with
``state.per_scores``), a *payload* with the preview of every block count k (and on Layer curves every α
on the slider's 0.05 grid). The live elements (``ui.live_chart``: the charts and the block stack) listen
to the real widgets' DOM events (the ratio slider, the count box, the α slider: components v2 run in
the main document) and repaint from it at once, also while dragging; the server's fragment rerun then
confirms with identical data (no redraw when nothing differs). The widgets stay the authority: AppTest
drives them, the session value is what the other pages read, and without the hook (no widget with the
bound label in the page, e.g. a future Streamlit) the page works through the server path alone.

A payload (plain JSON)::

    {"id", "L", "bind": {"ratio": label, "count": label | None, "alpha": label | None},
     "kmax": K,                               # the largest count the planner allows with these locks
     "orders": {akey: [blocks in removal order]},   # akey "" when the order does not depend on α
     "importance": {akey: [...]},             # for the block stack's tooltips
     "charts": {name: {"by": "k" | "a" | "", "base": spec, "frames": {fkey: frame}}}}

The removed set for (k, α) is ``sorted(orders[akey][:k])`` (simdiff_core/pruning/sweep.py). A chart
for a state is ``assemble``: its base spec, with the frame's ``data`` and ``layout`` keys, and the
layout's shapes extended by the frame's shape groups for the removed set (``each``: one shape per
block; ``run``: one shape per run of consecutive blocks). ``ui/live_chart.py``'s JavaScript does
exactly what ``assemble`` does; tests check ``assemble`` against the figure builders at every state.

Cost (per settings change, not per move): Prune preview: one stability spec and one overlap spec per
k (~1 ms each); Layer curves: a fused importance, bootstrap band and bar spec per α (21). The payload
is sent to a browser session once (``ui.live_chart``), a few hundred kB at 80 blocks.
"""

from __future__ import annotations

import uuid

import numpy as np

from simdiff_core import SimDiffError
from simdiff_core.export import figures
from simdiff_core.pruning import sweep
from simdiff_core.pruning.plan import candidates

ALPHAS = [f"{i * 0.05:.2f}" for i in range(21)]     # the α slider's values (step 0.05), as keys
# The display labels of the widgets a live element binds to: the browser finds the widgets by these
# (``aria-label``), so the pages label their widgets with the same constants.
RATIO_LABEL = "Pruning ratio"
COUNT_LABEL = "Blocks to remove"
ALPHA_LABEL = "SimDiff α"


def akey(alpha: float) -> str:
    return f"{float(alpha):.2f}"


def kmax(L: int, keep_first: bool, keep_last: bool) -> int:
    return min(len(candidates(L, keep_first, keep_last)), L - 1)


def removed(payload: dict, k: int, a: str = "") -> list[int] | None:
    """The removed set the payload gives for count ``k`` at α key ``a`` (None where the planner refuses k)."""
    if not 1 <= k <= payload["kmax"]:
        return None
    order = payload["orders"][a if a in payload["orders"] else ""]
    return sorted(order[:k])


def assemble(payload: dict, chart: str, k: int, a: str = "") -> dict | None:
    """The spec of ``chart`` at count ``k`` and α key ``a`` from the payload (what the browser draws)."""
    drop = removed(payload, k, a)
    if drop is None:
        return None
    c = payload["charts"][chart]
    f = c["frames"][str(k) if c["by"] == "k" else a if c["by"] == "a" else ""]
    layout = dict(c["base"]["layout"], **f.get("layout", {}))
    if "groups" in f:
        shapes = list(c["base"]["layout"].get("shapes", []))
        for g in f["groups"]:
            if "each" in g:
                shapes += [g["each"][i] for i in drop]
            else:
                shapes += [dict(g["run"], x0=lo - g["pad"], x1=hi + g["pad"]) for lo, hi in figures.contiguous_runs(drop)]
        layout["shapes"] = shapes
    return {"data": f.get("data", c["base"]["data"]), "layout": layout}


def _base(spec: dict) -> dict:
    return {"data": spec["data"], "layout": {k: v for k, v in spec["layout"].items() if k != "shapes"}}


def _new(L, kf, kl, bind, orders, importance, charts_: dict) -> dict:
    return {"id": uuid.uuid4().hex, "L": L, "bind": bind, "kmax": kmax(L, kf, kl),
            "orders": orders, "importance": importance, "charts": charts_}


# ---------------------------------------------------------------------------------------------- Prune preview
def overlap_sets(criterion: str, others, k: int, orders: dict) -> dict:
    sets = {criterion: sorted(orders[criterion][:k])}
    for o in others:
        if o in orders:
            sets[o] = sorted(orders[o][:k])
    return sets


def preview_payload(scores, criterion: str, alpha: float, keep_first: bool, keep_last: bool, fusion: dict,
                    others, stability: bool) -> dict:
    """Prune preview at every k: removed set, the plan-stability chart (frequencies for that k) and the
    criteria-overlap chart (the compared criteria's sets for that k)."""
    L = scores.num_layers
    kw = dict(alpha=alpha, keep_first=keep_first, keep_last=keep_last)
    orders, errors = {}, {}
    for c in [criterion, *others]:
        try:
            orders[c] = sweep.removal_order(scores, c, **kw, **(fusion if c == "simdiff" else {}))
        except (SimDiffError, KeyError, ValueError) as e:  # e.g. a metric these scores lack
            if c == criterion:
                raise
            errors[c] = str(e)
    others = [o for o in others if o in orders]
    K = kmax(L, keep_first, keep_last)
    out_charts = {}
    if stability:
        freq = sweep.stability_sweep(scores, criterion, **kw, **(fusion if criterion == "simdiff" else {}))
        frames = {str(k): {"data": figures.stability_spec(freq[k - 1], orders[criterion][:k])["data"]}
                  for k in range(1, K + 1)}
        out_charts["stability"] = {"by": "k", "base": figures.stability_spec(freq[0], orders[criterion][:1]),
                                   "frames": frames, "_freq": freq}
    ov = {str(k): figures.overlap_spec(overlap_sets(criterion, others, k, orders), L) for k in range(1, K + 1)}
    out_charts["overlap"] = {"by": "k", "base": ov["1"], "frames": {k: {"data": s["data"]} for k, s in ov.items()}}
    imp = scores.importance(criterion, alpha=alpha, **(fusion if criterion == "simdiff" else {}))
    out = _new(L, keep_first, keep_last, {"ratio": RATIO_LABEL, "count": COUNT_LABEL, "alpha": None},
               {"": orders[criterion]}, {"": [float(v) for v in imp]}, out_charts)
    out["_orders"] = orders  # per criterion, for the server's overlap table
    out["_errors"] = errors  # compared criteria these scores cannot rank (the page says so)
    return out


# ---------------------------------------------------------------------------------------------- Layer curves
def curves_payload(scores, criterion: str, keep_first: bool, keep_last: bool, fusion: dict, base: dict,
                   fused_band=None) -> dict:
    """Layer curves at every k and α of the grid: the dropped blocks' shading on the curves, and the fused
    importance bars (values, bootstrap band, red shapes over the dropped bars) per α.

    ``base``: ``figures.curves_base`` for the page's toggles; ``fused_band(alpha)``: the band per α or None."""
    L = scores.num_layers
    by_alpha = criterion == "simdiff"
    fz = fusion if by_alpha else {}
    orders = ({a: sweep.removal_order(scores, criterion, alpha=float(a), keep_first=keep_first,
                                      keep_last=keep_last, **fz) for a in ALPHAS} if by_alpha else
              {"": sweep.removal_order(scores, criterion, keep_first=keep_first, keep_last=keep_last)})
    curves0 = figures.curves_spec(base, [0], markers=False)
    groups = [{"run": dict(s, x0=None, x1=None), "pad": 0.5} for s in curves0["layout"]["shapes"]]
    one = {"by": "", "base": _base(curves0), "frames": {"": {"groups": groups}}}
    bars, imps = {}, {}
    for a in ALPHAS:
        imp = scores.importance("simdiff", alpha=float(a), **fusion)
        imps[a] = [float(v) for v in imp]
        spec = bars_at(imp, float(a), range(L), None if fused_band is None else fused_band(float(a)))
        bars[a] = {"data": spec["data"], "layout": {"title": spec["layout"]["title"]},
                   "groups": [{"each": spec["layout"]["shapes"]}]}
    return _new(L, keep_first, keep_last, {"ratio": RATIO_LABEL, "count": None, "alpha": ALPHA_LABEL}, orders,
                imps if by_alpha else {"": imps["0.50"]},
                {"curves": one, "simdiff": {"by": "a", "base": _base(bars_at(
                    scores.importance("simdiff", alpha=0.5, **fusion), 0.5, [])), "frames": bars}})


def bars_at(imp, alpha: float, dropped, band=None) -> dict:
    """The fused importance chart of Layer curves (the page draws exactly this)."""
    spec = figures.bars_spec(imp, dropped, title=f"SimDiff importance, α = {alpha:.2f} (higher = keep)", shapes=True)
    return figures.with_band(spec, band)


def public(payload: dict) -> dict:
    """The payload without the server-only entries (``_``-prefixed), as sent to the browser."""
    return {**{k: v for k, v in payload.items() if not k.startswith("_")},
            "charts": {n: {k: v for k, v in c.items() if not k.startswith("_")} for n, c in payload["charts"].items()}}


def frequency(payload: dict, k: int) -> list[float] | None:
    """The precomputed plan-stability frequencies at count ``k`` (Prune preview; None without stability)."""
    c = payload["charts"].get("stability")
    return None if c is None or not 1 <= k <= payload["kmax"] else np.asarray(c["_freq"][k - 1]).tolist()
