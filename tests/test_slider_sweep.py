"""The live slider's precomputed plans and stabilities for every block count (simdiff_core/pruning/sweep.py)
against a naive loop: sort the blocks by importance with the cosine tie-break and the locks, take k;
stability by planning every bootstrap replicate on its own (per-replicate importance, Python sort)."""

from __future__ import annotations

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
    from tiny import tiny_lm

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
    from test_insight import _constructed

    # blocks 1..4 tie on MSSD (all 1.0): the cosine order decides, then the index (blocks 2 and 3 share cosine)
    sc = _constructed([[0.1] * 4, [0.3] * 4, [0.7] * 4, [0.7] * 4, [0.5] * 4, [0.2] * 4])
    assert removal_order(sc, "mssd", keep_first=True, keep_last=True) == [2, 3, 4, 1]
    freq = stability_sweep(sc, "mssd", n_boot=10)
    assert freq[0].tolist() == [0, 0, 1, 0, 0, 0] and freq[1].tolist() == [0, 0, 1, 1, 0, 0]
