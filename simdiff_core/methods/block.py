"""Contiguous block (Gromov et al. 2024 / PruneMe): cut the window of k consecutive blocks whose
input and output hidden states are closest in angular distance, arccos(cos)/pi, on the last token of
every calibration window (``scores.matrices["angular_boundaries"][l][l + k]``).

Users of PruneMe often misread which blocks its ``block_start, block_end`` means, so the plan
records both the half-open range ``[start, end)`` and the explicit list of removed blocks.
"""

from __future__ import annotations

from ..common.errors import SimDiffError


def run(ctx):
    sc = ctx.get_scores()
    A = sc.matrices.get("angular_boundaries")
    if not A:
        raise SimDiffError("these scores have no angular_boundaries matrix; re-run 'score'")
    n, allowed = ctx.k, set(ctx.allowed)
    windows = [{"start": l, "end": l + n, "distance": float(A[l][l + n])}
               for l in range(0, ctx.L - n + 1) if all(i in allowed for i in range(l, l + n))]
    if not windows:
        raise SimDiffError(f"no window of {n} consecutive removable blocks in a {ctx.L}-block model")
    best = min(windows, key=lambda w: (w["distance"], w["start"]))
    removed = list(range(best["start"], best["end"]))
    return ctx.plan(removed, "block", criterion="angular_window", details={
        "half_open_range": [best["start"], best["end"]], "removed_list": removed,
        "angular_distance": best["distance"], "window_size": n,
        "note": f"blocks [{best['start']}, {best['end']}) = {removed} (0-based; end excluded)",
        "windows": windows})
