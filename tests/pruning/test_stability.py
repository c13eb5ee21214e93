"""Plan stability under bootstrap resampling and calibration sensitivity (another text, another plan?):
the vectorised paths against the planner run once per replicate or per source."""

from __future__ import annotations

import numpy as np
import pytest

from simdiff_core import make_windows, score_model
from simdiff_core.analysis.score import Scores
from simdiff_core.pruning.stability import plan_stability
from tests.support.builders import constructed_scores as _constructed


def test_stability_is_one_for_a_block_removed_in_every_resample():
    rng = np.random.default_rng(0)
    cos = [list(0.5 + 0.05 * rng.standard_normal(10)) for _ in range(6)]
    cos[2] = [0.99] * 10           # always the most redundant block
    cos[3] = [0.80, 0.20] * 5      # average 0.5 like the others, but noisy: sometimes picked
    sc = _constructed(cos)
    s = plan_stability(sc, "cosine", num=1, n_boot=100)
    assert s.removed == [2] and s.frequency[2] == 1.0 and s.stable and s.unstable == []
    s2 = plan_stability(sc, "cosine", num=2, n_boot=100)
    # the second block is whichever of the noisy ones wins a resample: never certain
    assert s2.frequency[2] == 1.0 and sum(s2.frequency) == pytest.approx(2.0)
    assert any(0 < f < 1 for f in s2.frequency) and s2.contenders
    assert s2.unstable == [i for i in s2.removed if s2.frequency[i] < 0.75]


# ------------------------------------------------------------------ calibration sensitivity, overlays
def test_sensitivity_identical_sources_agree_and_different_texts_are_measured(tiny, tokenizer):
    from simdiff_core.data.text import load_text
    from simdiff_core.pruning.sensitivity import sensitivity, spearman

    lm = tiny("llama", 6)
    wiki = score_model(lm, make_windows(tokenizer, "wikitext2", n=3, seq_len=32))
    code = score_model(lm, make_windows(tokenizer, "shipped:code", n=3, seq_len=32))
    dia = score_model(lm, make_windows(tokenizer, load_text("shipped:dialogue"), n=3, seq_len=32))
    same = sensitivity({"a": wiki, "b": wiki}, num=2)
    assert same.rho["a", "b"] == pytest.approx(1.0) and same.flips == {} and same.overlap["a", "b"]["jaccard"] == 1
    rep = sensitivity({"wiki": wiki, "code": code, "dialogue": dia}, num=2)
    import pandas as pd

    for (a, b), rho in rep.rho.items():  # against pandas' Spearman (its own average ranks of ties)
        assert rho == pytest.approx(pd.Series(rep.importance[a]).corr(pd.Series(rep.importance[b]), method="spearman"))
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    every = set(rep.removed["wiki"]) & set(rep.removed["code"]) & set(rep.removed["dialogue"])
    assert set(rep.agreed) == every
    for blk, who in rep.flips.items():
        assert blk not in every and who == [n for n in rep.removed if blk in rep.removed[n]]


def test_relative_depth_overlay_maps_block_counts():
    from simdiff_core.pruning.sensitivity import overlay_frame, relative_depth

    assert relative_depth(5).tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    assert relative_depth(1).tolist() == [0.0]

    def fake(L):
        return Scores(f"m{L}", L, [{"index": i, "cosine": float(i), "mssd": 1.0, "masd": 1.0} for i in range(L)])

    df, rel = overlay_frame({"deep": fake(30), "shallow": fake(16)}, "cosine")
    assert rel
    deep, shallow = df[df.run == "deep"], df[df.run == "shallow"]
    assert len(deep) == 30 and len(shallow) == 16
    assert deep.x.iloc[0] == 0 and deep.x.iloc[-1] == 1 and shallow.x.iloc[-1] == 1
    assert shallow.x.iloc[8] == pytest.approx(8 / 15) and deep.x.iloc[29 // 2] == pytest.approx(14 / 29)
    df2, rel2 = overlay_frame({"a": fake(6), "b": fake(6)}, "cosine")
    assert not rel2 and df2.x.tolist() == list(range(6)) * 2


def _tied_mssd_scores(cos_by_block: list[list[float]]) -> Scores:
    """Scores (with per-window sums, one token per window) whose MSSD/MASD are 1 for every block,
    so every difference criterion ties everywhere and only the cosine tie-break decides."""
    return _constructed(cos_by_block)


@pytest.fixture
def tied():
    rng = np.random.default_rng(3)
    cos = [list(0.3 + 0.02 * rng.standard_normal(8)) for _ in range(6)]
    cos[4] = [0.95] * 8  # the most redundant block by cosine, but not the lowest index
    return _tied_mssd_scores(cos)


@pytest.mark.parametrize("criterion", ["mssd", "masd_rel"])
def test_stability_and_sensitivity_break_ties_like_the_planner(tied, criterion):
    from simdiff_core.pruning.plan import make_plan
    from simdiff_core.pruning.sensitivity import sensitivity
    from simdiff_core.pruning.stability import plan_stability

    plan = make_plan(tied, criterion, num=1)
    assert plan.removed_layers == [4]  # all tied: the cosine order decides (plan.cosine_tiebreak)
    st = plan_stability(tied, criterion, num=1, n_boot=50)
    assert st.removed == plan.removed_layers  # the app shows an "internal" error when these differ
    # every resample ties too, and block 4 has the highest cosine in every window: always removed
    assert st.frequency[4] == 1.0 and st.stable
    rep = sensitivity({"a": tied, "b": tied}, criterion=criterion, num=1)
    assert rep.removed == {"a": plan.removed_layers, "b": plan.removed_layers}


def test_vectorised_selection_with_tiebreak_equals_the_planner_per_column():
    from simdiff_core.pruning.plan import select_lowest
    from simdiff_core.pruning.stability import select_lowest_cols

    rng = np.random.default_rng(0)
    imp = rng.integers(0, 3, size=(9, 60)).astype(float)   # many ties
    tb = rng.integers(0, 2, size=(9, 60)).astype(float)    # ties in the tie-break too
    imp[2, 5] = np.nan
    for kf, kl in ((True, True), (False, True), (True, False)):
        sel = select_lowest_cols(imp, 3, kf, kl, tiebreak=tb)
        for r in range(60):
            assert np.flatnonzero(sel[:, r]).tolist() == select_lowest(imp[:, r], 3, kf, kl, tiebreak=tb[:, r])
