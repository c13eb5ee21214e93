"""The lazy evaluator (no dense pass beyond block 0) gives the same losses as building each pruned
model and measuring it, for every supported family, and runs exactly the blocks of the prefix trie."""

from __future__ import annotations

import math

import pytest

from simdiff_core import make_windows
from simdiff_core.evaluation.evaluator import PrefixEvaluator
from tests.support.tiny import FAMILIES
from tests.support.reference import naive_loss


@pytest.fixture(scope="module")
def ids(tokenizer):
    return make_windows(tokenizer, "wikitext2", n=3, seq_len=24)


def trie_edges(sets, L) -> int:
    """Blocks an exact evaluator must run per batch: distinct (membership prefix, kept block) pairs."""
    return len({tuple(i in s for i in range(j + 1)) for s in map(set, sets) for j in range(L) if j not in s})


@pytest.mark.parametrize("family", FAMILIES)
def test_lazy_losses_equal_pruned_model_perplexity(tiny, ids, family):
    lm = tiny(family, num_layers=5, seed=3)
    sets = [(2,), (1, 3), (3,), (0, 4), ()]
    ev = PrefixEvaluator(lm, ids, batch_size=2, lazy=True)
    assert ev.stats["capture_block_calls"] == 2  # block 0 once per batch, nothing else
    got = ev.losses(sets)
    for s, a in zip(sets, got):
        ref = naive_loss(lm, ids, s)
        assert math.isclose(a, ref, rel_tol=1e-5, abs_tol=1e-6), (family, s, a, ref)
    assert ev.dense_loss == got[-1]
    full = PrefixEvaluator(lm, ids, batch_size=2)
    assert full.dense_loss == pytest.approx(got[-1], rel=1e-6)


def test_lazy_runs_exactly_the_prefix_trie(tiny, ids):
    lm = tiny("llama", num_layers=7, seed=1)
    sets = [(3, 5), (3, 6), (1, 5), (5, 6), (2, 3)]
    ev = PrefixEvaluator(lm, ids, batch_size=3, lazy=True)
    ev.losses(sets)
    # block 0 ran in the capture (the root edge of every set here: none removes it); nothing runs twice
    assert ev.stats["capture_block_calls"] + ev.stats["block_calls"] == trie_edges(sets, 7)
    # the dense loss afterwards reuses the prefix it shares with the last path
    before = ev.stats["block_calls"]
    ev.dense_loss
    assert ev.stats["block_calls"] - before == 7 - 1  # the last path (in prefix order) removed block 1
    assert ev.dense_loss == pytest.approx(PrefixEvaluator(lm, ids).dense_loss, rel=1e-6)


def test_lazy_path_bound_and_cancel(tiny, ids):
    from simdiff_core.common.errors import Cancelled

    lm = tiny("gemma3", num_layers=6, seed=2)
    ev = PrefixEvaluator(lm, ids, batch_size=1, lazy=True, cache_bytes=1)  # no batch keeps its path
    assert ev.persistent == 0
    sets = [(1,), (2, 4)]
    assert ev.losses(sets) == pytest.approx(PrefixEvaluator(lm, ids, batch_size=3).losses(sets), rel=1e-6)
    with pytest.raises(Cancelled):
        PrefixEvaluator(lm, ids, lazy=True, should_stop=lambda: True)


@pytest.mark.parametrize("family", ["gemma2", "granite", "opt"])  # soft-capping, logits_scaling, project_out
def test_head_tiles_of_any_size_give_the_naive_loss(tiny, ids, family, monkeypatch):
    from simdiff_core.evaluation.evaluator import head

    lm = tiny(family, num_layers=3, seed=4)
    ref = naive_loss(lm, ids, (1,))
    monkeypatch.setattr(head, "VOCAB_TILE", 4999)  # does not divide the vocabulary (49152)
    ev = PrefixEvaluator(lm, ids, head_chunk_bytes=4 * 4999 * 5)  # 5 rows per tile: many row blocks
    assert math.isclose(ev.loss((1,)), ref, rel_tol=1e-5)
    assert math.isclose(ev.dense_loss, naive_loss(lm, ids, ()), rel_tol=1e-5)


def test_set_damage_through_the_evaluator_equals_each_pruned_model(tiny, ids):
    from simdiff_core.evaluation.agreement import set_damage
    from simdiff_core.evaluation.damage import measure_damage

    lm = tiny("qwen2", num_layers=6, seed=5)
    dmg = measure_damage(lm, ids)
    sets = {"a": [2, 4], "b": [4, 2], "c": [1], "d": [1, 3, 4]}
    rows = {r["label"]: r for r in set_damage(lm, ids, sets, dmg)}
    for label, rem in sets.items():
        ref = naive_loss(lm, ids, rem)
        assert math.isclose(rows[label]["loss"], ref, rel_tol=1e-5), (label, rows[label]["loss"], ref)
        assert rows[label]["ppl"] == pytest.approx(math.exp(ref), rel=1e-5)
        assert rows[label]["delta_loss"] == pytest.approx(ref - dmg.dense_loss, abs=1e-5)
    assert rows["a"]["loss"] == rows["b"]["loss"] and rows["a"]["removed"] == [2, 4]
    assert rows["c"]["interaction"] == pytest.approx(0.0, abs=1e-5)  # one block: its single damage
