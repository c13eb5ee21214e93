"""Plan recomputation from cached scores of an 80-block model plus chart data; forward passes counted."""

from __future__ import annotations

import time

import torch

from .harness import log, synthetic_scores


def bench_preview(L: int, repeats: int, time_figures: bool = True) -> dict:
    """One slider move: new plan from cached scores + the chart data the preview redraws.

    ``preview_ms`` = ``make_plan`` + the chart data (the curves frame with the SimDiff column and the
    dropped flags, which is what changes on a move). The app's plotly figure builders (``simdiff_core.export.figures``)
    are timed separately as ``preview_figure_ms`` on two moves: they are the app's code, not data.
    """
    import numpy as np
    import pandas as pd

    from simdiff_core.pruning.plan import make_plan

    scores = synthetic_scores(L)
    figures = None
    if time_figures:
        try:
            from simdiff_core.export import figures  # the app's chart builders
        except Exception as e:  # app not present
            log(f"preview: figures not importable ({type(e).__name__}); figures not timed")

    forwards = {"n": 0}

    def count(module, args):
        forwards["n"] += 1

    def frame(imp, dropped):
        df = pd.DataFrame(scores.layers).set_index("index")
        df["simdiff"] = imp
        df["dropped"] = df.index.isin(dropped)
        return df

    handle = torch.nn.modules.module.register_module_forward_pre_hook(count)
    ratios = [0.1, 0.2, 0.25, 0.3, 0.375, 0.5]
    times, fig_times = [], []
    try:
        for r in range(repeats):
            for ratio in ratios:
                alpha = [0.3, 0.5, 0.7][r % 3]
                t0 = time.perf_counter()
                plan = make_plan(scores, "simdiff", ratio=ratio, alpha=alpha)
                frame(np.asarray(plan.scores), plan.removed_layers)
                times.append(time.perf_counter() - t0)
        if figures is not None:
            for ratio in (0.25, 0.375):
                plan = make_plan(scores, "simdiff", ratio=ratio)
                t0 = time.perf_counter()
                figures.layer_curves(scores.layers, dropped=plan.removed_layers).to_plotly_json()
                figures.Spec(figures.bars_spec(np.asarray(plan.scores), dropped=plan.removed_layers)).to_plotly_json()
                fig_times.append(time.perf_counter() - t0)
    finally:
        handle.remove()
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return {"preview_ms": round(1000 * med(times), 2), "preview_max_ms": round(1000 * max(times), 2),
            "preview_figure_ms": round(1000 * med(fig_times), 1) if fig_times else None,
            "preview_forward_passes": forwards["n"], "preview_blocks": L, "preview_moves": len(times)}
