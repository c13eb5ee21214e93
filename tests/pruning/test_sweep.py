"""The live slider's precomputed plans and stabilities for every block count (simdiff_core/pruning/sweep.py)
against a naive loop: sort the blocks by importance with the cosine tie-break and the locks, take k;
stability by planning every bootstrap replicate on its own (per-replicate importance, Python sort)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from simdiff_core import make_plan, make_windows, score_model
from simdiff_core.analysis.metrics import importance
from simdiff_core.analysis.uncertainty import replicate_layers, replicate_metrics
from simdiff_core.pruning.sweep import removal_order, stability_sweep


def _naive_removed(layers, imp, k, keep_first, keep_last):
    L = len(layers)
    allowed = [i for i in range(L) if not (keep_first and i == 0) and not (keep_last and i == L - 1)]
    key = lambda i: (np.inf if np.isnan(imp[i]) else imp[i], -layers[i]["cosine"], i)  # noqa: E731
    return sorted(sorted(allowed, key=key)[:k])


@pytest.fixture(scope="module")
def scores(tokenizer):
    from tests.support.tiny import tiny_lm

    return score_model(tiny_lm("llama", tokenizer, 9, 0), make_windows(tokenizer, "wikitext2", n=6, seq_len=16))


@pytest.mark.parametrize("criterion,alpha,locks,fusion", [
    ("simdiff", 0.5, (True, True), {}), ("simdiff", 0.15, (False, True), {"beta": 0.0, "scale_free": False}),
    ("simdiff", 1.0, (True, False), {"norm": "robust"}), ("cosine", 0.5, (True, True), {}),
    ("mssd_rel", 0.5, (False, False), {})])
def test_every_block_count_equals_a_naive_plan_and_naive_stability(scores, criterion, alpha, locks, fusion):
    kf, kl = locks
    L = scores.num_layers
    K = L - kf - kl
    order = removal_order(scores, criterion, alpha=alpha, keep_first=kf, keep_last=kl, **fusion)
    freq = stability_sweep(scores, criterion, alpha=alpha, keep_first=kf, keep_last=kl, n_boot=30, seed=3, **fusion)
    assert len(order) == K and freq.shape == (K, L)
    imp = importance(scores.layers, criterion, alpha=alpha, **fusion)
    reps = replicate_metrics(scores, 30, 3)
    rep_layers = [replicate_layers(reps, b) for b in range(30)]
    rep_imp = [importance(lay, criterion, alpha=alpha, **fusion) for lay in rep_layers]
    for k in range(1, min(K, L - 1) + 1):  # the planner leaves at least one block
        want = _naive_removed(scores.layers, imp, k, kf, kl)
        assert sorted(order[:k]) == want
        assert make_plan(scores, criterion, num=k, alpha=alpha, keep_first=kf, keep_last=kl,
                         **fusion).removed_layers == want
        counts = np.zeros(L)
        for lay, ri in zip(rep_layers, rep_imp):
            counts[_naive_removed(lay, ri, k, kf, kl)] += 1
        assert freq[k - 1] == pytest.approx(counts / 30, abs=1e-12), k


def test_ties_go_by_the_cosine_order_then_the_index():
    from tests.support.builders import constructed_scores as _constructed

    # blocks 1..4 tie on MSSD (all 1.0): the cosine order decides, then the index (blocks 2 and 3 share cosine)
    sc = _constructed([[0.1] * 4, [0.3] * 4, [0.7] * 4, [0.7] * 4, [0.5] * 4, [0.2] * 4])
    assert removal_order(sc, "mssd", keep_first=True, keep_last=True) == [2, 3, 4, 1]
    freq = stability_sweep(sc, "mssd", n_boot=10)
    assert freq[0].tolist() == [0, 0, 1, 0, 0, 0] and freq[1].tolist() == [0, 0, 1, 1, 0, 0]


# ----------------------------------------------------------------- the live slider's payloads (ui/live_slider.py)
def _j(x):
    return json.loads(json.dumps(x))


def _naive_freq(scores, criterion, alpha, k, kf, kl, fusion, n_boot=200, seed=0):
    reps = replicate_metrics(scores, n_boot, seed)
    counts = np.zeros(scores.num_layers)
    for b in range(n_boot):
        lay = replicate_layers(reps, b)
        counts[_naive_removed(lay, importance(lay, criterion, alpha=alpha, **fusion), k, kf, kl)] += 1
    return counts / n_boot


def test_preview_payload_equals_naive_plans_at_every_count(scores):
    from simdiff_core.export import figures
    from ui import live_slider

    fusion = {"beta": 0.5, "scale_free": True}
    p = live_slider.preview_payload(scores, "simdiff", 0.35, True, False, fusion, ["cosine", "mssd_rel"], True)
    sent = _j(live_slider.public(p))  # what the browser gets
    assert "_orders" not in sent and all("_freq" not in c for c in sent["charts"].values())
    L = scores.num_layers
    assert sent["kmax"] == L - 1
    imp = {c: importance(scores.layers, c, alpha=0.35, **(fusion if c == "simdiff" else {}))
           for c in ("simdiff", "cosine", "mssd_rel")}
    for k in range(1, L):
        want = {c: _naive_removed(scores.layers, imp[c], k, True, False) for c in imp}
        assert live_slider.removed(sent, k) == want["simdiff"]
        freq = _naive_freq(scores, "simdiff", 0.35, k, True, False, fusion)
        assert live_slider.frequency(p, k) == pytest.approx(freq, abs=1e-12)
        assert live_slider.assemble(sent, "stability", k) == _j(figures.stability_spec(freq, want["simdiff"]))
        assert live_slider.assemble(sent, "overlap", k) == _j(figures.overlap_spec(want, L))
    assert live_slider.removed(sent, L) is None and live_slider.removed(sent, 0) is None


@pytest.mark.parametrize("criterion", ["simdiff", "cosine"])
def test_curves_payload_equals_naive_plans_at_every_count_and_alpha(scores, criterion):
    from simdiff_core.analysis.uncertainty import fused_band
    from simdiff_core.export import figures
    from ui import live_slider

    fusion = {"beta": 0.3, "scale_free": False}
    base = figures.curves_base(scores.layers, scale_free=False)
    band = lambda a: fused_band(scores, alpha=a, n_boot=20, **fusion)  # noqa: E731
    sent = _j(live_slider.public(live_slider.curves_payload(scores, criterion, True, True, fusion, base, band)))
    L = scores.num_layers
    assert len(sent["charts"]["simdiff"]["frames"]) == 21
    for a in live_slider.ALPHAS:
        alpha = float(a)
        fused = importance(scores.layers, "simdiff", alpha=alpha, **fusion)
        imp = fused if criterion == "simdiff" else importance(scores.layers, criterion)
        for k in range(1, L - 1):
            want = _naive_removed(scores.layers, imp, k, True, True)
            assert live_slider.removed(sent, k, a) == want, (a, k)
            assert live_slider.assemble(sent, "curves", k, a) == _j(figures.curves_spec(base, want, markers=False))
            assert live_slider.assemble(sent, "simdiff", k, a) == _j(figures.with_band(figures.bars_spec(
                fused, want, title=f"SimDiff importance, α = {alpha:.2f} (higher = keep)", shapes=True), band(alpha)))


def test_a_compared_criterion_the_scores_cannot_rank_is_reported_not_fatal():
    from tests.support.builders import constructed_scores
    from ui import live_slider

    sc = constructed_scores([[0.1] * 4, [0.3] * 4, [0.7] * 4, [0.6] * 4, [0.5] * 4, [0.2] * 4])
    for lay in sc.layers:
        del lay["angular"]  # scores written before the angular metric existed
    p = live_slider.preview_payload(sc, "cosine", 0.5, True, True, {}, ["angular", "mssd"], False)
    assert list(p["_errors"]) == ["angular"] and set(p["_orders"]) == {"cosine", "mssd"}
    assert "stability" not in p["charts"]
    assert live_slider.assemble(p, "overlap", 2)["data"][0]["y"] == ["cosine", "mssd"]
    assert live_slider.removed(p, 2) == [2, 3]
