"""Repair-aware block choice: the k blocks whose removal the ``lstsq`` repair can best undo.

    plan = run_method("repairable", lm, calib_ids, num=8)                  # own span pass (one or more forwards)
    plan = run_method("repairable", lm, calib_ids, num=8, spans=heat)      # reuse a span_replaceability result

Why: which blocks to drop depends on whether you repair (issue 22: on SmolLM2 at 8/30 a plan that is
worse than the auto SimDiff plan unrepaired is better after the ReplaceMe repair). Every criterion
of the one-shot ranking scores what a removal *changes*; this one scores what the repair *cannot
give back*.

What: a plan removes maximal spans ``[a, b)``; the repair (``repair/``) fits one map per span on
block ``a − 1`` (dense fit), and what it cannot recover is the span's fit residual
``min_T ‖M·T − (h_b − R)‖²`` (``analysis.linear_spans``). The plan's cost is the sum over its
spans of that residual, measured relative to the size of the state the span must reproduce::

    cost(plan) = Σ_spans residual[a, b) / ‖h_b‖²          (cost="relative", default)
    cost(plan) = Σ_spans residual[a, b) / tokens          (cost="absolute")

(``relative``: a repaired state's squared relative error, the quantity the angular criteria bound
for the unrepaired one; the sum treats the spans' errors as independent.) With ``first_token=False``
position 0 is left
out of every sum (on SmolLM2 the first token's state, the attention sink, carries ~99 % of ``Σ‖h‖²``
from block 11 on); the default keeps it, so the cost is exactly the repair's own fit residual.
Measured at 8/30 (16 x 256 calibration): both settings pick the contiguous span 12-19 with the relative
cost, repaired WikiText-2 test ppl 57.3 (2.07x dense) — better than PruneMe's window (247) but not
than the issue's hand-found plan [3, 7, 12-17] (53.1): the summed span residual is a proxy, not the
repaired perplexity. The absolute cost picks blocks 2-9 there: the lowest repaired *calibration* ppl
measured (30.6) but test 73.3 (2.66x): judge a repaired plan on held-out text. The minimum over all
plans of k removable blocks is found exactly by dynamic programming over (block, removed so far):
a span must start at a block >= 1 (block 0 has no block below to fold into), contain only
removable blocks, be at most ``max_span`` long, and be followed by a kept block (two touching spans
are one span). Cost: the span pass (``span_replaceability``: one forward per group of starts that
fits ``max_mb``, plus one (tokens x d) x (d x d) product per (start, length) and batch); the DP is
``O(L · k · max_span)``.
"""

from __future__ import annotations

import math

from ..common.errors import SimDiffError

COSTS = ("relative", "absolute")


def span_costs(heat: dict, cost: str = "relative") -> dict[tuple[int, int], float]:
    """``{(a, b): cost}`` of every span the heatmap defines (``b = a + n``)."""
    if cost not in COSTS:
        raise SimDiffError(f"unknown repairable cost '{cost}'; choose from {', '.join(COSTS)}")
    res, norms = heat.get("residual"), heat.get("out_norm2")
    if res is None or norms is None:
        raise SimDiffError("this span heatmap has no residual sums; compute it again with span_replaceability")
    tokens = max(int(heat.get("tokens") or 1), 1)
    out = {}
    for n1, row in enumerate(res):
        for a, r in enumerate(row):
            if r is None:
                continue
            b = a + n1 + 1
            den = norms[b - 1] if cost == "relative" else tokens
            out[(a, b)] = float(r) / den if den > 0 else math.inf
    return out


def best_spans(costs: dict[tuple[int, int], float], num_layers: int, k: int, allowed) -> tuple[list[int], float]:
    """The removal set of ``k`` blocks from ``allowed`` made of non-touching spans ``[a, b)`` with
    ``(a, b)`` in ``costs``, minimising the sum of their costs (exact DP). Raises if none exists."""
    L, ok = num_layers, set(int(i) for i in allowed)
    inf = math.inf
    # f[i][j]: least cost with blocks < i decided, j removed, block i - 1 kept (or i == 0)
    f = [[inf] * (k + 1) for _ in range(L + 2)]
    back: dict[tuple[int, int], tuple[int, int, tuple | None]] = {}
    f[0][0] = 0.0
    for i in range(L):
        for j in range(k + 1):
            v = f[i][j]
            if v == inf:
                continue
            if v < f[i + 1][j]:                           # keep block i
                f[i + 1][j], back[(i + 1, j)] = v, (i, j, None)
            for n in range(1, k - j + 1):                 # remove [i, i + n), then keep block i + n
                b = i + n
                if b > L or (b - 1) not in ok:
                    break                                 # a span holds only removable blocks
                if (i, b) not in costs:
                    continue
                nxt = L if b == L else b + 1
                w = v + costs[(i, b)]
                if w < f[nxt][j + n]:
                    f[nxt][j + n], back[(nxt, j + n)] = w, (i, j, (i, b))
    if f[L][k] == inf:
        raise SimDiffError(f"no set of {k} removable blocks is made of repairable spans (spans start at block >= 1 "
                           "and are at most the heatmap's max_span long)")
    removed, state = [], (L, k)
    while state != (0, 0):
        i, j, span = back[state]
        if span is not None:
            removed.extend(range(*span))
        state = (i, j)
    return sorted(removed), f[L][k]


def run(ctx, cost: str = "relative", max_span: int | None = None, spans: dict | None = None,
        max_mb: float = 1024, first_token: bool = True):
    if cost not in COSTS:
        raise SimDiffError(f"unknown repairable cost '{cost}'; choose from {', '.join(COSTS)}")
    span = ctx.k if max_span is None else int(max_span)
    if spans is None:
        from ..analysis.linear_spans import span_replaceability

        spans = span_replaceability(ctx.lm, ctx.calib_ids, max_span=span, max_mb=max_mb, first_token=first_token,
                                    progress=lambda f, m: ctx.report(0.95 * f, m), should_stop=ctx.should_stop)
    if bool(spans.get("first_token", True)) != bool(first_token):
        raise SimDiffError(f"the span heatmap was computed with first_token={spans.get('first_token', True)}, "
                           f"this plan asks for first_token={first_token}")
    costs = span_costs(spans, cost)
    costs = {ab: c for ab, c in costs.items() if ab[1] - ab[0] <= span}
    removed, total = best_spans(costs, ctx.L, ctx.k, ctx.allowed)
    from ..repair import removed_spans

    parts = [{"start": a, "end": b, "cost": costs[(a, b)]} for a, b in removed_spans(removed, ctx.L)]
    return ctx.plan(removed, "repairable", criterion=f"repairable_{cost}", details={
        "cost": cost, "max_span": span, "first_token": bool(first_token), "objective_value": total, "spans": parts, "tokens": spans.get("tokens"),
        "note": "disjoint spans minimising the error the lstsq repair (dense fit) cannot recover, "
                f"{'relative to ||h_b||^2' if cost == 'relative' else 'per token'}; exact DP over the span heatmap"})
