"""The prefix-cached evaluator equals building the pruned model and measuring it, and every method
that uses it picks the same plans as the reference full-model loop (tiny real models)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from simdiff_core import make_windows, score_model
from simdiff_core.common.errors import Cancelled, SimDiffError
from simdiff_core.evaluation.evaluate import perplexity
from simdiff_core.evaluation.evaluator import PrefixEvaluator
from simdiff_core.methods import run_method
from simdiff_core.methods.alpha import auto_alpha
from simdiff_core.pruning.plan import make_plan
from simdiff_core.pruning.prune import pruned_model
from tests.support.reference import naive_loss

FAMS = ("llama", "gemma3", "qwen2")  # gemma3: sliding and global layers with their own masks and rotary


@pytest.fixture(scope="module")
def ids(tokenizer):
    return make_windows(tokenizer, "wikitext2", n=3, seq_len=24)


@pytest.mark.parametrize("family", FAMS)
def test_cached_losses_equal_pruned_model_perplexity(tiny, ids, family):
    lm = tiny(family, num_layers=7, seed=2)
    rng = random.Random(0)
    sets = [(), (0,), (6,), (3,), (2, 3), (3, 5), (1, 2, 3), (0, 6)]
    sets += [tuple(sorted(rng.sample(range(7), rng.randint(1, 4)))) for _ in range(6)]
    # a small cache budget: only one batch keeps its path, the other recomputes from block 0
    ev = PrefixEvaluator(lm, ids, batch_size=2, cache_bytes=1)
    assert ev.persistent == 0
    got = ev.losses(sets)
    ev2 = PrefixEvaluator(lm, ids, batch_size=2)
    got2 = [ev2.loss(s) for s in reversed(sets)][::-1]  # one at a time, another order, persistent paths
    for s, a, b in zip(sets, got, got2):
        ref = naive_loss(lm, ids, s)
        assert math.isclose(a, ref, rel_tol=1e-5, abs_tol=1e-6), (s, a, ref)
        assert math.isclose(b, ref, rel_tol=1e-5, abs_tol=1e-6), (s, b, ref)
    assert len({round(v, 5) for v in got}) > len(sets) // 2  # the sets genuinely differ
    # prefix reuse: fewer block calls than running every set from block 0
    full = sum(7 - len(s) for s in dict.fromkeys(sets) if s) * 2
    assert ev2.stats["block_calls"] < full


def test_head_chunks_and_memory_bound_do_not_change_the_loss(tiny, ids):
    lm = tiny("llama", num_layers=5, seed=1)
    big = PrefixEvaluator(lm, ids, batch_size=3).losses([(1,), (2, 4)])
    small = PrefixEvaluator(lm, ids, batch_size=1, head_chunk_bytes=4 * 49152 * 5, cache_bytes=1).losses([(1,), (2, 4)])
    assert small == pytest.approx(big, rel=1e-5)


def test_evaluator_errors_and_cancel(tiny, ids):
    lm = tiny("llama", num_layers=4)
    ev = PrefixEvaluator(lm, ids)
    with pytest.raises(SimDiffError, match="out of range"):
        ev.loss((4,))
    with pytest.raises(SimDiffError, match="no blocks"):
        ev.loss((0, 1, 2, 3))
    with pytest.raises(SimDiffError, match="non-empty"):
        PrefixEvaluator(lm, ids[0])
    with pytest.raises(Cancelled):  # polled between the recording batches
        PrefixEvaluator(lm, ids, should_stop=lambda: True)
    calls = {"n": 0}

    def stop_later():
        calls["n"] += 1
        return calls["n"] > len(range(0, ids.shape[0], 1))  # after construction, at the first candidate

    stop = PrefixEvaluator(lm, ids, batch_size=1, should_stop=stop_later)
    with pytest.raises(Cancelled):
        stop.loss((1,))


def test_a_family_whose_logits_it_cannot_reproduce_is_refused(tiny, ids):
    lm = tiny("llama", num_layers=4)
    lm.model.config.logits_scaling = 3.0  # the tail would divide, the llama forward does not
    with pytest.raises(SimDiffError, match="cannot reproduce"):
        PrefixEvaluator(lm, ids)


def naive_greedy(lm, ids, k):
    """SLEB written out: every step removes the candidate whose removal gives the lowest perplexity."""
    removed = []
    allowed = list(range(1, lm.num_layers - 1))
    for _ in range(k):
        vals = {c: naive_loss(lm, ids, removed + [c]) for c in allowed if c not in removed}
        removed.append(min(vals, key=lambda c: (vals[c], c)))
    return removed


@pytest.mark.parametrize("family", FAMS)
def test_greedy_and_searches_choose_the_same_plans_as_the_reference_loop(tiny, ids, family):
    lm = tiny(family, num_layers=7, seed=3)
    order = naive_greedy(lm, ids, 3)
    g = run_method("greedy", lm, ids, num=3)
    assert g.removed_layers == sorted(order)
    ref = run_method("greedy", lm, ids, num=3, cached=False)
    assert ref.removed_layers == g.removed_layers
    assert [t["removed"] for t in g.details["trace"]] == [t["removed"] for t in ref.details["trace"]]
    for a, b in zip(g.details["trace"], ref.details["trace"]):  # eliminated sets: a bound (tests/evaluation/test_bound.py)
        assert a["value"] == pytest.approx(b["value"], rel=1e-5) if "value" in a else a["lower_bound"] <= b["value"]
    scores = score_model(lm, ids)
    for algo, budget in (("beam", 12), ("local", 10), ("evolutionary", 10), ("greedy", 7)):
        c = run_method("search", lm, ids, num=2, search=algo, budget=budget, scores=scores)
        n = run_method("search", lm, ids, num=2, search=algo, budget=budget, scores=scores, cached=False)
        assert c.removed_layers == n.removed_layers, algo
        assert [t["removed"] for t in c.details["trace"]] == [t["removed"] for t in n.details["trace"]], algo
        assert c.details["completed_by_fallback"] == n.details["completed_by_fallback"]


@pytest.mark.parametrize("family", FAMS)
def test_auto_alpha_equals_evaluating_each_plan(tiny, ids, family):
    lm = tiny(family, num_layers=8, seed=4)
    scores = score_model(lm, ids)
    best, trials = auto_alpha(lm, scores, calib_ids=ids, num=3, betas=(0.0, 0.5, 1.0))
    ppl = {}
    for t in trials:
        key = tuple(t["removed_layers"])
        if key not in ppl:
            ppl[key] = perplexity(pruned_model(lm, make_plan(scores, "simdiff", num=3, alpha=t["alpha"],
                                                             beta=t["beta"]).kept_layers), ids)["ppl"]
        assert t["ppl"] == pytest.approx(ppl[key], rel=1e-5)
    naive_best = min(trials, key=lambda t: (round(ppl[tuple(t["removed_layers"])], 6), abs(t["alpha"] - 0.5),
                                            abs(t["beta"] - 0.5)))
    assert best == naive_best["alpha"]


def test_one_evaluator_shared_between_methods(tiny, ids):
    lm = tiny("llama", num_layers=6, seed=5)
    ev = PrefixEvaluator(lm, ids)
    a = run_method("greedy", lm, ids, num=2, evaluator=ev)
    calls = ev.stats["block_calls"]
    b = run_method("search", lm, ids, num=2, search="greedy", evaluator=ev)
    assert a.removed_layers == b.removed_layers and ev.stats["block_calls"] == calls  # all memoised
    with pytest.raises(SimDiffError, match="shared evaluator"):
        run_method("greedy", lm, ids[:2], num=2, evaluator=ev)
    with torch.no_grad():
        assert ev.dense_loss == pytest.approx(perplexity(lm.model, ids)["nll"], rel=1e-5)


@pytest.mark.parametrize("family", FAMS)
def test_slm_cached_similarity_equals_building_each_merged_model(tiny, ids, family):
    from simdiff_core.pruning.prune import weights_fingerprint

    lm = tiny(family, num_layers=7, seed=6)
    before = weights_fingerprint(lm.model)
    c = run_method("slm", lm, ids, num=2, threshold=0.999)
    n = run_method("slm", lm, ids, num=2, threshold=0.999, cached=False)
    assert c.merged_groups == n.merged_groups and c.removed_layers == n.removed_layers
    assert [t["groups"] for t in c.details["trace"]] == [t["groups"] for t in n.details["trace"]]
    for a, b in zip(c.details["trace"], n.details["trace"]):
        assert a["similarity"] == pytest.approx(b["similarity"], abs=1e-5)
    assert weights_fingerprint(lm.model) == before  # merged blocks are private copies
