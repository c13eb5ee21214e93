"""Iterative pruning with prefix reuse (only the blocks above the last removal re-scored) chooses the
same blocks from the same importances as re-scoring every pruned model with a full pass (tiny models)."""

from __future__ import annotations

import pytest

from simdiff_core import make_windows, score_model
from simdiff_core.methods import iterative, run_method


@pytest.fixture(scope="module")
def ids(tokenizer):
    return make_windows(tokenizer, "wikitext2", n=5, seq_len=24)  # batches of 4 + 1 (score_model's rule)


@pytest.mark.parametrize("family,criterion,first_token", [("llama", "simdiff", True), ("gemma3", "cosine", False),
                                                          ("qwen2", "mssd", True), ("gpt2", "simdiff", True)])
def test_prefix_reuse_equals_full_rescoring(tiny, ids, family, criterion, first_token):
    lm = tiny(family, num_layers=8, seed=6)
    dense = score_model(lm, ids, first_token=first_token)
    kw = dict(num=4, criterion=criterion, scores=dense)
    fast = run_method("iterative", lm, ids, **kw)
    ref = run_method("iterative", lm, ids, cached=False, **kw)
    assert fast.removed_layers == ref.removed_layers
    assert fast.details["order"] == ref.details["order"]
    for a, b in zip(fast.details["trace"], ref.details["trace"]):
        assert a["kept_before"] == b["kept_before"]
        assert a["importance"] == b["importance"]  # the same sums of the same numbers (rounded to 1e-6)
    # fewer block runs than re-scoring every pruned model
    assert fast.details["block_calls"] < fast.details["block_calls_full_rescoring"]


def test_prefix_reuse_beyond_the_memory_bound(tiny, ids, monkeypatch):
    monkeypatch.setattr(iterative, "CACHE_BYTES", 1)  # no batch keeps its states: recomputed from block 0
    lm = tiny("mistral", num_layers=7, seed=7)
    kw = dict(num=3, criterion="simdiff")
    fast = run_method("iterative", lm, ids, **kw)
    ref = run_method("iterative", lm, ids, cached=False, **kw)
    assert fast.details["trace"] == ref.details["trace"]


def test_rescored_metrics_are_bitwise_those_of_a_full_pass(tiny, ids):
    from simdiff_core.methods import Context
    from simdiff_core.models.load import LoadedModel
    from simdiff_core.pruning.prune import pruned_model

    lm = tiny("gemma3", num_layers=7, seed=8)
    ctx = Context(lm=lm, calib_ids=ids, k=3)
    r = iterative.Rescorer(ctx, first_token=True)
    kept = list(range(7))
    for gone in (4, 2, 5):
        kept.remove(gone)
        got = r.scores(kept, gone)
        sub = LoadedModel(model=pruned_model(lm, kept), tokenizer=lm.tokenizer, source=lm.source, device=lm.device,
                          dtype=lm.dtype, block_path=lm.block_path)
        full = score_model(sub, ids, linear=False)   # iterative re-scoring has no linear curve (refused for it)
        for a, b in zip(got.layers, full.layers):
            assert a == b, (gone, a, b)
