"""Uncertainty (per-window sums, bootstrap replicates and bands) and the block drill-down: library
checks against independent computations on tiny models. Plan stability and calibration sensitivity:
tests/pruning/test_stability.py; their CLI: tests/cli/test_cli_insight.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simdiff_core import SimDiffError, score_model
from simdiff_core.analysis.score import Scores
from simdiff_core.analysis.uncertainty import bands, replicate_metrics, resample_weights


def test_window_sums_equal_a_direct_per_window_computation(tiny, ids32):
    lm = tiny("llama", 4)
    ids = ids32[:3]
    sc = score_model(lm, ids, batch_size=2)
    with torch.no_grad():
        hs = lm.model(ids, output_hidden_states=True).hidden_states  # entry i+1 = output of block i (not the last)
    for i in range(3):
        x, y = hs[i].double(), hs[i + 1].double()
        cos = torch.nn.functional.cosine_similarity(x, y, dim=-1)  # (N, S)
        rel = ((y - x) ** 2).sum(-1) / (x ** 2).sum(-1)
        for w in range(3):
            n = sc.windows["tokens"][w]
            assert n == ids.shape[1]
            assert sc.windows["cos"][i][w] / n == pytest.approx(cos[w].mean().item(), abs=1e-5)
            assert sc.windows["sq_rel"][i][w] / n == pytest.approx(rel[w].mean().item(), rel=1e-4)


def test_a_bootstrap_replicate_equals_scoring_the_resampled_windows(tiny, ids32):
    """Replicate b is defined as scoring the windows drawn with replacement: check it by doing exactly that."""
    lm = tiny("llama", 4)
    ids = ids32[:5]
    sc = score_model(lm, ids)
    reps = replicate_metrics(sc, n_boot=3, seed=7)
    W = resample_weights(5, 3, seed=7)
    for b in range(3):
        drawn = torch.cat([ids[w:w + 1].repeat(int(W[w, b]), 1) for w in range(5) if W[w, b] > 0])
        direct = score_model(lm, drawn).layers
        for k in ("cosine", "mssd", "masd_rel", "angular"):
            assert reps[k][:, b] == pytest.approx([l[k] for l in direct], rel=1e-4, abs=1e-6)


def test_bands_contain_the_full_value_and_shrink_with_more_windows(tiny, ids32):
    lm = tiny("llama", 6)
    few, many = score_model(lm, ids32[:4]), score_model(lm, ids32)
    bf, bm = bands(few), bands(many)
    for sc, b in ((few, bf), (many, bm)):
        for k in ("cosine", "mssd", "masd", "mssd_rel", "masd_rel"):
            full = np.array([l[k] for l in sc.layers])
            lo, hi = np.array(b[k]["lo"]), np.array(b[k]["hi"])
            assert np.all(lo <= full * (1 + 1e-6) + 1e-9) and np.all(full <= hi * (1 + 1e-6) + 1e-9), k
            assert np.allclose(b[k]["value"], full, rtol=1e-5, atol=1e-7)
        fused = sc.importance("simdiff", alpha=0.5)
        assert np.allclose(b["simdiff"]["value"], fused)
        assert np.all(np.array(b["simdiff"]["lo"]) <= np.array(b["simdiff"]["hi"]))
    for k in ("cosine", "mssd_rel", "masd_rel"):
        width = lambda b: np.mean(np.array(b[k]["hi"]) - np.array(b[k]["lo"]))  # noqa: E731
        assert width(bm) < 0.75 * width(bf), k  # 8x the windows: about 1/sqrt(8) the width
    assert bands(many) == bm  # seeded: the same bands twice


def test_scores_json_round_trips_windows_and_old_files_still_load(tiny, ids32, tmp_path):
    sc = score_model(tiny("llama", 4), ids32[:3])
    sc.save(tmp_path / "s.json")
    back = Scores.load(tmp_path / "s.json")
    assert back.windows == sc.windows and bands(back) == bands(sc)
    d = sc.to_dict()
    d.pop("windows")
    old = Scores.from_dict(d)  # a file written before per-window statistics existed
    assert old.windows == {}
    with pytest.raises(SimDiffError, match="per-window"):
        bands(old)
    d["windows"] = dict(sc.windows, cos=[[0.0]])
    with pytest.raises(SimDiffError, match="per-window"):
        Scores.from_dict(d)


@pytest.mark.parametrize("criterion,norm", [("simdiff", "rank"), ("simdiff", "robust"), ("cosine", "rank"),
                                            ("mssd_rel", "rank")])
def test_vectorised_replicates_equal_the_planner_per_replicate(tiny, ids32, criterion, norm):
    from simdiff_core.analysis.metrics import importance
    from simdiff_core.analysis.uncertainty import replicate_importance, replicate_layers
    from simdiff_core.pruning.plan import select_lowest
    from simdiff_core.pruning.stability import select_lowest_cols

    sc = score_model(tiny("llama", 6), ids32[:6])
    reps = replicate_metrics(sc, n_boot=40, seed=1)
    reps["mssd_rel"][:, 5] = 0.5  # all tied in one replicate: ties must average like metrics.normalise
    vec = replicate_importance(reps, criterion, alpha=0.3, beta=0.7, norm=norm)
    sel = select_lowest_cols(vec, 2, keep_first=True, keep_last=False)
    for b in range(40):
        one = importance(replicate_layers(reps, b), criterion, alpha=0.3, beta=0.7, norm=norm)
        assert vec[:, b] == pytest.approx(one, abs=1e-12)
        assert np.flatnonzero(sel[:, b]).tolist() == select_lowest(one, 2, keep_first=True, keep_last=False)


# ------------------------------------------------------------------ block drill-down
def test_drill_down_tokens_equal_a_direct_computation(tiny, ids32):
    from simdiff_core.analysis.drilldown import drill_down

    lm = tiny("qwen2", 5)
    ids = ids32[:3]
    d = drill_down(lm, ids, block=2, windows=2, top=7)
    with torch.no_grad():
        hs = lm.model(ids[:2], output_hidden_states=True).hidden_states
    x, y = hs[2].double(), hs[3].double()  # input and output of block 2 (not the last block: no final norm)
    r = ((y - x).norm(dim=-1) / x.norm(dim=-1)).numpy()
    assert d.values.shape == (2, ids.shape[1]) and np.allclose(d.values, r, rtol=1e-4)
    want = sorted(((r[w, p], w, p) for w in range(2) for p in range(ids.shape[1])), reverse=True)[:7]
    assert [(t["window"], t["position"]) for t in d.top] == [(w, p) for _, w, p in want]
    assert [t["value"] for t in d.top] == pytest.approx([v for v, _, _ in want], rel=1e-4)
    t0 = d.top[0]
    assert t0["token"] == lm.tokenizer.decode([int(ids[t0["window"], t0["position"]])])
    with pytest.raises(SimDiffError, match="does not exist"):
        drill_down(lm, ids, block=5)
