"""Pruning methods, the delta merge, the MC objective and the compare CLI, on tiny real models."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.support.repo import run_cli
from simdiff_core import make_windows, score_model
from simdiff_core.common.errors import SimDiffError
from simdiff_core.export.checkpoint import export_pruned
from simdiff_core.methods import run_method
from simdiff_core.models.load import LoadedModel
from simdiff_core.pruning.build import build_pruned
from simdiff_core.pruning.merge import merged_model
from simdiff_core.pruning.plan import Plan, make_plan, select_lowest
from simdiff_core.pruning.prune import pruned_model, weights_fingerprint


@pytest.fixture(scope="module")
def ids(tokenizer):
    return make_windows(tokenizer, "wikitext2", n=2, seq_len=32)


# ------------------------------------------------------------------ merge
def test_merge_is_base_plus_sum_of_deltas(tiny, ids):
    lm = tiny("llama", 6, seed=1)
    with torch.no_grad():  # norms start as identical ones: make them differ so they are tested too
        for i, b in enumerate(lm.blocks):
            for p in b.parameters():
                if p.ndim == 1:
                    p.add_(0.1 * i)
    before = weights_fingerprint(lm.model)
    plan = Plan(model="t", num_layers=6, removed_layers=[2, 3], merged_groups=[{"base": 4, "layers": [2, 3, 4]}])
    small = merged_model(lm, plan)
    assert weights_fingerprint(lm.model) == before  # shared model untouched
    blocks = lm.blocks
    new = small.model.layers
    assert len(new) == 4 and new[2].self_attn.layer_idx == 2
    merged = dict(new[2].named_parameters())
    p2, p3, p4 = (dict(blocks[i].named_parameters()) for i in (2, 3, 4))
    for name, p in merged.items():
        hand = p4[name] + (p2[name] - p4[name]) + (p3[name] - p4[name])
        torch.testing.assert_close(p, hand, rtol=0, atol=1e-6)
        # the published loop (assignment) would leave a copy of one block: ours differs from all of them
        assert not torch.equal(p, p4[name]) and not torch.equal(p, p2[name]) and not torch.equal(p, p3[name])
    assert new[0].mlp.down_proj.weight.data_ptr() == blocks[0].mlp.down_proj.weight.data_ptr()  # view elsewhere
    out = small(input_ids=ids, use_cache=False).logits
    assert torch.isfinite(out).all()


def test_merged_export_reloads_in_transformers(tiny, ids, tmp_path):
    from transformers import AutoModelForCausalLM

    lm = tiny("qwen2", 6, seed=2)
    plan = Plan(model="t", num_layers=6, removed_layers=[1, 2], merged_groups=[{"base": 3, "layers": [1, 2, 3]}])
    expect = build_pruned(lm, plan)(input_ids=ids, use_cache=False).logits
    out = export_pruned(lm, plan, tmp_path / "m")
    re = AutoModelForCausalLM.from_pretrained(out).eval()
    assert re.config.num_hidden_layers == 4
    with torch.no_grad():
        torch.testing.assert_close(re(input_ids=ids, use_cache=False).logits, expect, rtol=1e-4, atol=1e-4)
    assert json.loads((out / "plan.json").read_text())["merged_groups"] == plan.merged_groups


def test_merge_rejects_bad_groups(tiny):
    lm = tiny("llama", 6)
    plan = Plan(model="t", num_layers=6, removed_layers=[1, 3], merged_groups=[{"base": 4, "layers": [1, 3, 4]}])
    with pytest.raises(SimDiffError, match="consecutive"):
        merged_model(lm, plan)


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


# ------------------------------------------------------------------ multiple choice
def test_mc_accuracy_matches_naive_loglikelihood(tiny):
    from simdiff_core.data.text import bos_prefix
    from simdiff_core.evaluation.objectives import load_mc, mc_accuracy

    lm = tiny("llama", 4, seed=0)
    items = load_mc()[:6]
    assert all(len(it["choices"]) == 4 for it in items) and len(load_mc(split="dev")) == 35
    res = mc_accuracy(lm.model, lm.tokenizer, items, batch_size=5)
    correct = 0
    with torch.no_grad():
        for it in items:
            ll = []
            for ch in it["choices"]:
                ctx = lm.tokenizer(it["context"], add_special_tokens=False).input_ids
                whole = lm.tokenizer(it["context"] + " " + ch, add_special_tokens=False).input_ids
                seq = torch.tensor((bos_prefix(lm.tokenizer) or [lm.tokenizer.eos_token_id]) + whole)
                logp = F.log_softmax(lm.model(input_ids=seq[None]).logits[0].float(), -1)
                n = len(whole) - len(ctx)
                ll.append(sum(float(logp[t - 1, seq[t]]) for t in range(len(seq) - n, len(seq))))
            correct += int(max(range(4), key=lambda j: ll[j]) == it["gold"])
    assert res["n"] == 6 and res["correct"] == correct


def test_mc_file_errors(tmp_path):
    from simdiff_core.evaluation.objectives import load_mc

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "Q", "choices": ["a"], "gold": 0}\n')
    with pytest.raises(SimDiffError, match="2 choices"):
        load_mc(bad)


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


# ------------------------------------------------------------------ CLI
def test_cli_plan_method_prune_and_compare(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    lm = tiny("llama", 6, seed=0)
    src = tmp_path / "src"
    lm.model.save_pretrained(src)
    lm.tokenizer.save_pretrained(src)
    small = ["--samples", 2, "--seq-len", 32, "--device", "cpu"]
    r = run_cli("plan", "--model", src, "--method", "slm", "--num", 2, *small, "--out", tmp_path / "p.json")
    assert r.returncode == 0, r.stderr
    p = json.loads((tmp_path / "p.json").read_text())
    assert p["method"] == "slm" and p["merged_groups"] and len(p["removed_layers"]) == 2
    r = run_cli("prune", "--model", src, "--plan", tmp_path / "p.json", "--out", tmp_path / "out",
                "--eval-windows", 0, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").config.num_hidden_layers == 4

    out = tmp_path / "results.csv"
    r = run_cli("compare", "--model", src, "--num", 2, "--methods", "oneshot:cosine,oneshot:simdiff,greedy",
                *small, "--eval-windows", 2, "--eval-seq-len", 32, "--out", out)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out.open()))
    assert [x["method"] for x in rows] == ["dense", "oneshot", "oneshot", "greedy"]
    assert {"method", "criterion", "removed_layers", "ppl"} <= set(rows[0])
    assert all(len(x["removed_layers"].split()) == 2 for x in rows[1:]) and float(rows[3]["ppl"]) > 1
    assert out.with_suffix(".md").read_text().startswith("| method")

    r = run_cli("compare", "--model", src, "--num", 2, "--methods", "oneshot:nope", "--out", tmp_path / "x.csv")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: unknown criterion")
    r = run_cli("plan", "--method", "greedy", "--num", 2, "--out", tmp_path / "y.json")
    assert r.returncode == 2 and "--model" in r.stderr


# ------------------------------------------------------------------ app page
def test_shootout_page_runs(embedded_lm):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "app.py"), default_timeout=300)
    at.run()
    at.number_input(key="samples").set_value(2)
    at.number_input(key="seq_len").set_value(64)
    at.button(key="calibrate").click().run()
    at.switch_page("pages/4_Shootout.py").run()
    assert not at.exception, at.exception
    at.multiselect(key="so_methods").set_value(["oneshot:cosine", "block"])
    at.number_input(key="so_eval_windows").set_value(1)
    at.number_input(key="so_eval_seq_len").set_value(64)
    at.button(key="run_shootout").click().run()
    assert not at.exception, at.exception
    assert not [e.value for e in at.error]
    charts = at.get("plotly_chart")
    assert len(charts) == 2
    bars = json.loads(charts[0].proto.spec)["data"][0]
    assert list(bars["x"]) == ["dense", "oneshot:cosine", "block:angular_window"]
    res = at.session_state["shootout"]
    assert [r["method"] for r in res["rows"]] == ["dense", "oneshot", "block"] and res["k"] == 8
