"""Exact candidate elimination (``PrefixEvaluator.losses_bounded``): the subset-head bound never exceeds the
loss, and greedy/beam/local with elimination choose the same sets as evaluating every candidate.

Tiny random models have near-uniform next-token distributions (no vocabulary subset holds most of the
mass), so their default bound is loose and eliminates nothing; tests that need eliminations either use a
tight subset (``bound_vocab`` = V - 2) or a real model: the embedded SmolLM2 cut to 6 blocks."""

from __future__ import annotations

import math
import random

import pytest
import torch

from simdiff_core import make_windows
from simdiff_core.evaluation.evaluator import PrefixEvaluator
from simdiff_core.methods import run_method
from simdiff_core.models.load import wrap_model
from simdiff_core.pruning.prune import pruned_model
from tests.support.reference import naive_loss

FAMS = ("llama", "gemma3", "qwen2")  # gemma3: sliding/global layers; soft-capping switched on below


@pytest.fixture(scope="module")
def ids(tokenizer):
    return make_windows(tokenizer, "wikitext2", n=3, seq_len=20)


def model(tiny, family, layers, seed):
    lm = tiny(family, num_layers=layers, seed=seed)
    if family == "gemma3":
        lm.model.config.final_logit_softcapping = 3.0  # post-processing the bound must apply too
    return lm


@pytest.mark.parametrize("family", FAMS)
def test_bound_is_below_the_loss_and_the_exact_value_equals_the_reference(tiny, ids, family):
    lm = model(tiny, family, 6, seed=7)
    rng = random.Random(1)
    sets = list(dict.fromkeys(tuple(sorted(rng.sample(range(6), rng.randint(1, 3)))) for _ in range(8)))
    ref = {s: naive_loss(lm, ids, s) for s in sets}
    V = lm.model.get_output_embeddings().weight.shape[0]
    for K in (5, 300, V - 2):
        ev = PrefixEvaluator(lm, ids, batch_size=2, cache_bytes=1, bound_vocab=K)  # batch 2 recomputes its path
        got = ev.losses_bounded(sets, keep=len(sets))  # every set exact, each with its bound
        for s, (v, lb) in zip(sets, got):
            assert lb is not None and v is not None
            assert lb <= v  # guaranteed in floating point, not just to a tolerance
            assert lb <= ref[s] + 1e-6 and math.isclose(v, ref[s], rel_tol=1e-5), (K, s, lb, v, ref[s])
        if K == V - 2:
            assert max(ref[s] - lb for s, (_, lb) in zip(sets, got)) < 1e-3  # nearly all the mass: tight
    # keep=1: the argmin is exact and every set without an exact value bounds above it
    ev = PrefixEvaluator(lm, ids, batch_size=2, bound_vocab=V - 2)
    got = ev.losses_bounded(sets, keep=1)
    best = min(sets, key=lambda s: (ref[s], s))
    exact = {s: v for s, (v, _) in zip(sets, got) if v is not None}
    assert best in exact and min(exact, key=lambda s: (exact[s], s)) == best
    cut = [(s, lb) for s, (v, lb) in zip(sets, got) if v is None]
    assert cut, "the tight bound eliminated nothing"
    assert all(lb > exact[best] and lb <= ref[s] + 1e-6 for s, lb in cut)
    assert ev.stats["bound_eliminated"] == len(cut)
    # below: exact exactly for the sets that could be below the threshold
    thr = sorted(ref.values())[len(sets) // 2]
    ev2 = PrefixEvaluator(lm, ids, batch_size=2, bound_vocab=V - 2)
    for s, (v, lb) in zip(sets, ev2.losses_bounded(sets, keep=0, below=thr)):
        if ref[s] < thr - 1e-4:
            assert v is not None
        if v is None:
            assert lb >= thr


def naive_greedy(lm, ids, k):
    removed = []
    for _ in range(k):
        vals = {c: naive_loss(lm, ids, removed + [c]) for c in range(1, lm.num_layers - 1) if c not in removed}
        removed.append(min(vals, key=lambda c: (vals[c], tuple(sorted(removed + [c])))))
    return removed


def check_trace(plan, lm, ids):
    """Every trace entry is either exact (value = the reference ppl) or eliminated (lower_bound <= it)."""
    tr = plan.details["trace"]
    assert plan.details["evals"] == len(tr)
    assert plan.details["exact_evals"] == sum(1 for t in tr if "value" in t)
    for t in tr:
        ppl = math.exp(naive_loss(lm, ids, t["removed"]))
        if "value" in t:
            assert t["value"] == pytest.approx(ppl, rel=1e-5)
        else:
            assert t["lower_bound"] <= ppl * (1 + 1e-5)
    return sum(1 for t in tr if "value" not in t)


@pytest.mark.parametrize("family", FAMS)
def test_greedy_beam_local_with_elimination_choose_what_exact_evaluation_chooses(tiny, ids, family):
    lm = model(tiny, family, 7, seed=3)
    V = lm.model.get_output_embeddings().weight.shape[0]
    order = naive_greedy(lm, ids, 3)
    ev = PrefixEvaluator(lm, ids, bound_vocab=V - 2)
    g = run_method("greedy", lm, ids, num=3, evaluator=ev)
    assert g.details["order"] == order and g.details["bound_elimination"]
    assert check_trace(g, lm, ids) > 0  # candidates were eliminated
    full = run_method("greedy", lm, ids, num=3, bound=False)
    assert full.details["exact_evals"] == full.details["evals"] == g.details["evals"]
    assert [t["removed"] for t in full.details["trace"]] == [t["removed"] for t in g.details["trace"]]
    for algo, budget in (("beam", 14), ("local", 12), ("evolutionary", 10), ("greedy", 7)):  # greedy 7: budget stop
        ev = PrefixEvaluator(lm, ids, bound_vocab=V - 2)
        c = run_method("search", lm, ids, num=2, search=algo, budget=budget, evaluator=ev)
        n = run_method("search", lm, ids, num=2, search=algo, budget=budget, cached=False)
        assert c.removed_layers == n.removed_layers, algo
        assert [t["removed"] for t in c.details["trace"]] == [t["removed"] for t in n.details["trace"]], algo
        assert c.details["completed_by_fallback"] == n.details["completed_by_fallback"], algo
        assert c.details["evals"] == n.details["evals"] <= budget
        assert check_trace(c, lm, ids) > 0 or algo == "evolutionary", algo  # (evolutionary: test below)


def test_a_tie_at_the_minimum_is_never_eliminated(tiny, ids):
    """Blocks 2 and 3 carry the same weights: removing either gives the same model, bit for bit. The tie
    sits at the minimum (both near-identity), so both must be exact and the set order breaks it."""
    lm = model(tiny, "llama", 6, seed=5)
    blocks = list(lm.blocks)
    with torch.no_grad():
        for b in (blocks[2], blocks[3]):
            for name, p in b.named_parameters():
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    p.mul_(1e-3)  # nearly the identity: the cheapest removals
        for p, q in zip(blocks[3].parameters(), blocks[2].parameters()):
            p.copy_(q)
    V = lm.model.get_output_embeddings().weight.shape[0]
    sets = [(c,) for c in range(1, 5)]
    ev = PrefixEvaluator(lm, ids, bound_vocab=V - 2)
    got = dict(zip(sets, ev.losses_bounded(sets, keep=1)))
    assert got[(2,)][0] is not None and got[(3,)][0] is not None and got[(2,)][0] == got[(3,)][0]
    assert got[(1,)][0] is None or got[(4,)][0] is None  # the bound is active: the far ones are eliminated
    allx = dict(zip(sets, PrefixEvaluator(lm, ids, bound_vocab=V - 2).losses_bounded(sets, keep=len(sets))))
    assert min(allx, key=lambda s: (allx[s][0], s)) == (2,)
    g = run_method("greedy", lm, ids, num=1, evaluator=PrefixEvaluator(lm, ids, bound_vocab=V - 2))
    assert g.removed_layers == [2]
    # a near-tie: block 3 a hair away from block 2; the argmin is the one every-set-exact evaluation finds
    with torch.no_grad():
        next(blocks[3].parameters()).mul_(1 + 1e-6)
    for keep in (1, 2):
        ev = PrefixEvaluator(lm, ids, bound_vocab=V - 2)
        part = dict(zip(sets, ev.losses_bounded(sets, keep=keep)))
        full = dict(zip(sets, PrefixEvaluator(lm, ids, bound_vocab=V - 2).losses_bounded(sets, keep=len(sets))))
        top = sorted(sets, key=lambda s: (full[s][0], s))[:keep]
        assert all(part[s][0] == full[s][0] for s in top)
        assert sorted((s for s in sets if part[s][0] is not None), key=lambda s: (part[s][0], s))[:keep] == top


@pytest.mark.slow
def test_real_model_eliminates_with_the_default_subset(embedded_lm, tokenizer):
    """SmolLM2 cut to 6 blocks (real, peaked distributions): the default 1/8-vocabulary bound eliminates
    candidates, and greedy still removes what the naive loop removes."""
    lm = wrap_model(pruned_model(embedded_lm, [0, 1, 2, 14, 28, 29]), tokenizer, source="smollm2-6")
    ids = make_windows(tokenizer, "wikitext2", n=2, seq_len=16)
    order = naive_greedy(lm, ids, 2)
    g = run_method("greedy", lm, ids, num=2)
    assert g.details["order"] == order
    assert check_trace(g, lm, ids) > 0, "the default bound eliminated nothing on a real model"


def test_evolutionary_with_elimination_takes_the_exact_path(tiny, ids):
    lm = model(tiny, "llama", 9, seed=3)  # 7 removable blocks: room beyond the seeded population
    ev = PrefixEvaluator(lm, ids, bound_vocab=lm.model.get_output_embeddings().weight.shape[0] - 2)
    c = run_method("search", lm, ids, num=2, search="evolutionary", budget=16, evaluator=ev)
    n = run_method("search", lm, ids, num=2, search="evolutionary", budget=16, cached=False)
    assert c.removed_layers == n.removed_layers
    assert [t["removed"] for t in c.details["trace"]] == [t["removed"] for t in n.details["trace"]]
    assert c.details["eliminated_by_bound"] > 0 and c.details["evals"] == n.details["evals"]
    assert c.details["objective_value"] == pytest.approx(n.details["objective_value"], rel=1e-5)


@pytest.mark.slow
def test_exactly_tied_candidates_choose_the_same_plan_with_elimination_on_or_off(embedded_lm, tokenizer):
    """Issue 24's case: blocks 5, 6 and 7 of the embedded model made identities (o_proj and down_proj
    zeroed, on a copy), so removing any two of them gives the same model bit for bit. Local search
    compares values from the bounded path and the plain one; both must be one computation, or
    the tie is broken by which path produced each value ([5, 7] with elimination, [5, 6] without)."""
    import copy

    lm = wrap_model(copy.deepcopy(embedded_lm.model), tokenizer, source="identities-5-6-7")
    with torch.no_grad():
        for i in (5, 6, 7):
            for name, p in lm.blocks[i].named_parameters():
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    p.zero_()
    ids = make_windows(tokenizer, "wikitext2", n=2, seq_len=32)
    ev = PrefixEvaluator(lm, ids)
    pairs = [(5, 6), (5, 7), (6, 7)]
    bounded = ev.losses_bounded(pairs, keep=len(pairs))
    plain = PrefixEvaluator(lm, ids).losses(pairs)  # same windows and batches: the same subset S
    assert len({v for v, _ in bounded} | set(plain)) == 1  # one value, bit for bit, on either path
    on = run_method("search", lm, ids, num=2, search="local", budget=40, evaluator=ev)
    off = run_method("search", lm, ids, num=2, search="local", budget=40, bound=False)
    assert on.removed_layers == off.removed_layers
    assert [t["removed"] for t in on.details["trace"]] == [t["removed"] for t in off.details["trace"]]
