"""Pruning methods (score-only, iterative re-scoring, greedy and searches, SLM) and compare, on tiny real
models. The delta merge: tests/pruning/test_merge.py; the MC objective: tests/evaluation/test_objectives.py;
the CLI: tests/cli/test_cli_methods.py; the shoot-out page: tests/app/test_shootout_page.py."""

from __future__ import annotations

import json

import pytest
import torch

from simdiff_core import make_windows, score_model
from simdiff_core.common.errors import SimDiffError
from simdiff_core.methods import run_method
from simdiff_core.models.load import LoadedModel
from simdiff_core.pruning.build import build_pruned
from simdiff_core.pruning.plan import make_plan, select_lowest
from simdiff_core.pruning.prune import pruned_model, weights_fingerprint


@pytest.fixture(scope="module")
def ids(tokenizer):
    return make_windows(tokenizer, "wikitext2", n=2, seq_len=32)


# ------------------------------------------------------------------ methods
def _check(plan, L, k, method):
    plan.validate(L)
    assert plan.method == method and plan.num_removed == k
    assert 0 not in plan.removed_layers and L - 1 not in plan.removed_layers  # locks respected
    json.loads(plan.to_json())  # serialisable


def test_score_only_methods(tiny, ids):
    lm = tiny("llama", 8, seed=0)
    sc = score_model(lm, ids)
    p = run_method("oneshot", lm, ids, num=3, criterion="cosine", scores=sc)
    _check(p, 8, 3, "oneshot")
    assert p.removed_layers == make_plan(sc, "cosine", num=3).removed_layers
    b = run_method("block", lm, ids, num=3, scores=sc)
    _check(b, 8, 3, "block")
    A = sc.matrices["angular_boundaries"]
    start = min(range(1, 8 - 3), key=lambda l: A[l][l + 3])  # windows inside blocks 1..6
    assert b.removed_layers == list(range(start, start + 3))
    assert b.details["half_open_range"] == [start, start + 3] and b.details["removed_list"] == b.removed_layers


def test_iterative_rescoring(tiny, ids):
    """Each step removes the argmin of a fresh scoring of the pruned model; that differs from one-shot."""
    lm = tiny("llama", 8, seed=0)
    it = run_method("iterative", lm, ids, num=3, criterion="cosine")
    _check(it, 8, 3, "iterative")
    kept = list(range(8))
    for t in it.details["trace"]:
        sub = LoadedModel(model=pruned_model(lm, kept), tokenizer=lm.tokenizer, source="t", device=lm.device,
                          dtype=lm.dtype, block_path=lm.block_path)
        j = select_lowest(score_model(sub, ids).importance("cosine"), 1)[0]
        assert kept[j] == t["removed"]
        kept.pop(j)
    differs = []
    for seed in range(4):  # random blocks: re-scoring changes the choice on some of them
        lm = tiny("llama", 8, seed=seed)
        sc = score_model(lm, ids)
        it = run_method("iterative", lm, ids, num=3, criterion="cosine", scores=sc)
        one = make_plan(sc, "cosine", num=3)
        assert it.details["order"][0] == select_lowest(sc.importance("cosine"), 1)[0]  # step 1 = one-shot favourite
        differs.append(one.removed_layers != it.removed_layers)
        if differs[-1]:
            break
    assert any(differs), "re-scoring never changed the choice on these models"


def test_greedy_and_searches_respect_budgets(tiny, ids):
    lm = tiny("llama", 7, seed=3)
    g = run_method("greedy", lm, ids, num=2)
    _check(g, 7, 2, "greedy")
    assert g.details["evals"] == 5 + 4  # SLEB: every candidate at step 1, the remaining ones at step 2
    first = [t for t in g.details["trace"] if len(t["removed"]) == 1]
    # sets eliminated by a bound carry lower_bound instead of value (never the step's best)
    assert min((t for t in first if "value" in t), key=lambda t: t["value"])["removed"][0] in g.removed_layers
    for algo in ("greedy", "beam", "local", "evolutionary"):
        p = run_method("search", lm, ids, num=2, search=algo, budget=6)
        _check(p, 7, 2, "search")
        assert p.details["evals"] <= 6 and p.details["search"] == algo
        if not p.details["completed_by_fallback"]:
            best = min(t["value"] for t in p.details["trace"] if len(t["removed"]) == 2 and "value" in t)
            assert p.details["objective_value"] == pytest.approx(best, rel=1e-5)
    t = run_method("search", lm, ids, num=2, search="local", seconds=0.01)
    _check(t, 7, 2, "search")
    assert t.details["evals"] <= 2
    with pytest.raises(SimDiffError, match="search algorithm"):
        run_method("search", lm, ids, num=2, search="nope")


def test_slm_merges_to_target(tiny, ids):
    lm = tiny("llama", 8, seed=0)
    before = weights_fingerprint(lm.model)
    p = run_method("slm", lm, ids, num=3, threshold=0.999)
    _check(p, 8, 3, "slm")
    assert p.merged_groups and weights_fingerprint(lm.model) == before
    for g in p.merged_groups:  # consecutive windows, merged into their lowest block (the paper's base)
        assert g["base"] == min(g["layers"]) and g["layers"] == list(range(g["base"], max(g["layers"]) + 1))
    assert sum(len(g["layers"]) - 1 for g in p.merged_groups) == 3
    assert p.details["threshold_final"] <= 0.999 and p.details["similarity"] >= p.details["threshold_final"] - 1e-9
    assert torch.isfinite(build_pruned(lm, p)(input_ids=ids, use_cache=False).logits).all()


def test_compare_library_with_accuracy(tiny, ids):
    from simdiff_core.evaluation.objectives import load_mc
    from simdiff_core.methods.compare import overlap, parse_specs, run_compare, to_csv_text, to_markdown

    lm = tiny("llama", 6, seed=0)
    res = run_compare(lm, ids, parse_specs("oneshot:cosine,block,search:local"), num=2, accuracy=True, eval_ids=ids,
                      accuracy_items=load_mc()[:4], budget=3)
    rows = res["rows"]
    assert [r["method"] for r in rows] == ["dense", "oneshot", "block", "search"]
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["ppl"] > 1 for r in rows)
    assert rows[3]["evals"] <= 3 and rows[3]["criterion"] == "ppl/local"
    header = to_csv_text(rows).splitlines()[0].split(",")
    assert {"method", "criterion", "removed_layers", "ppl", "accuracy"} <= set(header)
    labels, mat = overlap(rows)
    assert len(labels) == 3 and all(mat[i][i] == 1.0 for i in range(3))
    assert "| block |" in to_markdown(res)
    with pytest.raises(SimDiffError, match="unknown method"):
        parse_specs("oneshot:cosine,bogus")


def test_compare_keeps_going_when_one_method_fails(tiny, ids):
    import math

    from simdiff_core.methods.compare import overlap, parse_specs, run_compare, to_markdown

    lm = tiny("llama", 6, seed=0)
    specs = parse_specs("oneshot:cosine") + [{"method": "slm", "label": "slm", "threshold": 2.0}] + parse_specs("block")
    res = run_compare(lm, ids, specs, num=2, eval_ids=ids)
    rows = res["rows"]
    assert [r["method"] for r in rows] == ["dense", "oneshot", "slm", "block"]
    assert rows[2]["criterion"].startswith("failed: SLM similarity threshold") and math.isnan(rows[2]["ppl"])
    assert rows[3]["ppl"] > 1 and rows[3]["removed_layers"]
    overlap(rows)
    assert "failed:" in to_markdown(res)


# ------------------------------------------------------------------ item 8b: compare evaluates held-out text
def test_compare_without_eval_ids_measures_held_out_test_windows(tiny, ids):
    from simdiff_core import perplexity, pruned_model
    from simdiff_core.data.text import load_text
    from simdiff_core.methods.compare import DEFAULT_EVAL_SEQ_LEN, DEFAULT_EVAL_WINDOWS, parse_specs, run_compare

    lm = tiny("llama", 4, seed=0)
    res = run_compare(lm, ids, parse_specs("oneshot:cosine"), num=1)
    # independent: the first windows of the shipped WikiText-2 *test* split, tokenised here
    held_out = make_windows(lm.tokenizer, load_text("wikitext2", purpose="eval"), DEFAULT_EVAL_WINDOWS,
                            DEFAULT_EVAL_SEQ_LEN, purpose="eval")
    assert not torch.equal(held_out[:, :ids.shape[1]], ids[:, :ids.shape[1]])
    dense, pruned = res["rows"][0], res["rows"][1]
    assert dense["ppl"] == pytest.approx(perplexity(lm.model, held_out)["ppl"], rel=1e-6)
    assert dense["ppl"] != pytest.approx(perplexity(lm.model, ids)["ppl"], rel=1e-3)  # not in-sample
    kept = res["plans"][0].kept_layers
    assert pruned["ppl"] == pytest.approx(perplexity(pruned_model(lm, kept), held_out)["ppl"], rel=1e-6)
    assert "test split" in res["eval_protocol"] and f"{DEFAULT_EVAL_WINDOWS} non-overlapping" in res["eval_protocol"]


def test_shootout_simdiff_rows_use_the_sessions_fusion_settings(tiny, tokenizer):
    """compare's oneshot:simdiff row must be the plan the Prune preview shows for the same alpha, beta and
    scale-free setting (auto alpha also picks beta), not a default-beta plan under the same label."""
    from simdiff_core import make_windows, score_model
    from simdiff_core.methods.compare import parse_specs, run_compare
    from simdiff_core.pruning.plan import make_plan

    lm = tiny("llama", 8, seed=4)
    ids = make_windows(tokenizer, "wikitext2", n=2, seq_len=24)
    scores = score_model(lm, ids)
    grid = [(k, a, b, sf) for k in (2, 3, 4) for a in (0.0, 0.2) for b in (0.0, 1.0) for sf in (True, False)]
    plan_of = lambda k, a, b, sf: make_plan(scores, "simdiff", num=k, alpha=a, beta=b, scale_free=sf).removed_layers  # noqa: E731
    # settings whose plan differs from the default-fusion plan at the same alpha
    k, alpha, b, sf = next(g for g in grid if plan_of(*g) != plan_of(g[0], g[1], 0.5, True))
    want = plan_of(k, alpha, b, sf)
    res = run_compare(lm, ids, parse_specs(["oneshot:simdiff"]), num=k, eval_ids=ids[:1], alpha=alpha,
                      fusion={"beta": b, "scale_free": sf})
    assert res["plans"][0].removed_layers == want


def test_shootout_scores_follow_the_sessions_first_token_choice(tiny, tokenizer):
    """With position 0 excluded on Load & calibrate, the shoot-out's criterion rows rank the same metrics."""
    from simdiff_core import make_windows
    from simdiff_core.methods.compare import parse_specs, run_compare

    lm = tiny("llama", 6, seed=4)
    ids = make_windows(tokenizer, "wikitext2", n=2, seq_len=24)
    res = run_compare(lm, ids, parse_specs(["oneshot:cosine"]), num=2, eval_ids=ids[:1], first_token=False)
    assert res["plans"][0].calibration["first_token"] == "excluded"


def test_iterative_rescoring_keeps_the_first_token_choice(tiny, tokenizer):
    """Every step of iterative pruning scores with the same position-0 choice as its dense scores."""
    from simdiff_core import make_windows, score_model
    from simdiff_core.methods import run_method
    from simdiff_core.models.load import LoadedModel
    from simdiff_core.pruning.prune import pruned_model

    lm = tiny("llama", 6, seed=5)
    ids = make_windows(tokenizer, "wikitext2", n=2, seq_len=24)
    dense = score_model(lm, ids, first_token=False)
    plan = run_method("iterative", lm, ids, num=2, criterion="cosine", scores=dense)
    kept = plan.details["trace"][1]["kept_before"]
    sub = LoadedModel(model=pruned_model(lm, kept), tokenizer=lm.tokenizer, source=lm.source, device=lm.device,
                      dtype=lm.dtype, block_path=lm.block_path)
    direct = score_model(sub, ids, first_token=False).importance("cosine")  # independent: a solo pass
    assert plan.details["trace"][1]["importance"] == pytest.approx(direct, abs=1e-6)
