"""The plan the session's settings give (criterion, ratio, α, β, locks), without a forward pass.

    from ui import settings
    plan = settings.current_plan(scores)          # stored as the ``plan`` result
    plan = settings.require_plan(scores, lm)      # or the error, a link to Prune preview and st.stop()
"""

from __future__ import annotations

import streamlit as st

from simdiff_core import SimDiffError
from simdiff_core.pruning.plan import make_plan, num_from_ratio
from ui import shell, state, views


def fusion_kwargs() -> dict:
    return {"scale_free": bool(state.get("scale_free", True)), "beta": float(state.get("beta", 0.5))}


def removal_count(num_layers: int) -> int:
    """Blocks to remove at the session's ratio (``plan.num_from_ratio``); SimDiffError if impossible.

    The Prune preview's ratio slider reaches 1: that is checked as the count it gives, so "remove all 30
    of 30" reads as such rather than as a bad ratio."""
    return count_for_ratio(num_layers, float(state.get("ratio", 0.25)))


def count_for_ratio(num_layers: int, ratio: float) -> int:
    """Blocks to remove at ``ratio`` (``removal_count`` without the session: the quick view, ui/run_view.py)."""
    return num_from_ratio(num_layers, num=num_layers) if ratio >= 1 else num_from_ratio(num_layers, ratio=ratio)


def current_plan(scores, num: int | None = None):
    """The preview Plan for the session's criterion/ratio/alpha/locks (no forward pass); stored as ``plan``.

    Raises SimDiffError for impossible settings (e.g. a ratio that removes every block).
    """
    crit = state.get("criterion", "simdiff")
    if num is None:
        num = removal_count(scores.num_layers)
    fusion = fusion_kwargs() if crit == "simdiff" else {}
    plan = make_plan(scores, crit, num=num, alpha=float(state.get("alpha", 0.5)),
                     keep_first=bool(state.get("keep_first", True)), keep_last=bool(state.get("keep_last", True)),
                     **fusion)
    state.put_result("plan", plan)
    return plan


def require_plan(scores, lm):
    """The session's plan checked against the loaded model, or the error with a link to fix it and st.stop()."""
    try:
        plan = current_plan(scores)
        plan.validate(lm.num_layers)
    except SimDiffError as e:
        views.show_error(e)
        st.page_link(shell.PAGES["preview"], label="Change the plan on Prune preview", icon=":material/content_cut:")
        st.stop()
    return plan
