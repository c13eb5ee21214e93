"""Adversarial review checks (H8): numbers the app shows, each against an independent computation."""

from __future__ import annotations

import numpy as np
import pytest

from simdiff_core.score import Scores


def _tied_mssd_scores(cos_by_block: list[list[float]]) -> Scores:
    """Scores (with per-window sums, one token per window) whose MSSD/MASD are 1 for every block,
    so every difference criterion ties everywhere and only the cosine tie-break decides."""
    L, N = len(cos_by_block), len(cos_by_block[0])
    win = {"tokens": [1.0] * N, "cos": [list(r) for r in cos_by_block]}
    for k in ("sq", "ab", "x2", "xa", "sq_rel", "ab_rel"):
        win[k] = [[1.0] * N for _ in range(L)]
    layers = []
    for i, r in enumerate(cos_by_block):
        c = float(np.mean(r))
        layers.append({"index": i, "cosine": c, "bi": 1 - c, "angular": float(np.arccos(c) / np.pi), "mssd": 1.0,
                       "masd": 1.0, "mssd_rel": 1.0, "masd_rel": 1.0})
    return Scores("constructed", L, layers, windows=win)


@pytest.fixture
def tied():
    rng = np.random.default_rng(3)
    cos = [list(0.3 + 0.02 * rng.standard_normal(8)) for _ in range(6)]
    cos[4] = [0.95] * 8  # the most redundant block by cosine, but not the lowest index
    return _tied_mssd_scores(cos)


@pytest.mark.parametrize("criterion", ["mssd", "masd_rel"])
def test_stability_and_sensitivity_break_ties_like_the_planner(tied, criterion):
    from simdiff_core.plan import make_plan
    from simdiff_core.sensitivity import sensitivity
    from simdiff_core.uncertainty import plan_stability

    plan = make_plan(tied, criterion, num=1)
    assert plan.removed_layers == [4]  # all tied: the cosine order decides (plan.cosine_tiebreak)
    st = plan_stability(tied, criterion, num=1, n_boot=50)
    assert st.removed == plan.removed_layers  # the app shows an "internal" error when these differ
    # every resample ties too, and block 4 has the highest cosine in every window: always removed
    assert st.frequency[4] == 1.0 and st.stable
    rep = sensitivity({"a": tied, "b": tied}, criterion=criterion, num=1)
    assert rep.removed == {"a": plan.removed_layers, "b": plan.removed_layers}


def test_vectorised_selection_with_tiebreak_equals_the_planner_per_column():
    from simdiff_core.plan import select_lowest
    from simdiff_core.uncertainty import select_lowest_cols

    rng = np.random.default_rng(0)
    imp = rng.integers(0, 3, size=(9, 60)).astype(float)   # many ties
    tb = rng.integers(0, 2, size=(9, 60)).astype(float)    # ties in the tie-break too
    imp[2, 5] = np.nan
    for kf, kl in ((True, True), (False, True), (True, False)):
        sel = select_lowest_cols(imp, 3, kf, kl, tiebreak=tb)
        for r in range(60):
            assert np.flatnonzero(sel[:, r]).tolist() == select_lowest(imp[:, r], 3, kf, kl, tiebreak=tb[:, r])
