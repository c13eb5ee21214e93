"""Honest recovery numbers: the dense + same-LoRA reference, the second-domain perplexity and the flags."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from simdiff_core.evaluation.honest import corpus_of, second_domain_text, verdict
from simdiff_core.evaluation.recover import RecoveryConfig, recover


def _naive_ppl(model, ids) -> float:
    """exp(mean NLL), one window and one position at a time, in float64 (not evaluate.perplexity's path)."""
    total, n = 0.0, 0
    with torch.inference_mode():
        for row in ids:
            logits = model(input_ids=row[None], use_cache=False).logits[0].double()
            for t in range(row.shape[0] - 1):
                total -= float(torch.log_softmax(logits[t], -1)[row[t + 1]])
                n += 1
    return math.exp(total / n)


@pytest.fixture(scope="module")
def honest_run(tokenizer):
    """One pruned + dense-reference recovery of a tiny llama, with held-out and second-domain windows."""
    from tests.support.tiny import tiny_lm

    lm = tiny_lm("llama", tokenizer, 4, seed=2)
    g = torch.Generator().manual_seed(1)
    train = torch.randint(0, 2000, (4, 24), generator=g)
    held = torch.randint(0, 2000, (2, 20), generator=g)
    second = torch.randint(2000, 4000, (2, 20), generator=g)
    cfg = RecoveryConfig(steps=6, rank=4, lr=1e-2, batch_size=2, seed=3)
    res = recover(lm, [0, 2, 3], train, cfg, eval_ids=held, second_ids=second, dense_reference=True)
    return lm, train, held, second, cfg, res


def test_dense_reference_is_the_same_lora_run_on_the_dense_model(honest_run):
    """The reference equals an independent run of the library's LoRA on a deep copy of the dense model
    with the same config and seed: same loss curve, same perplexities, bit for bit."""
    lm, train, held, second, cfg, res = honest_run
    solo = recover(copy.deepcopy(lm.model), None, train, copy.deepcopy(cfg), eval_ids=held, second_ids=second)
    r, s = res.report, solo.report
    assert r["dense_reference"]["loss_curve"] == s["loss_curve"]
    assert r["dense_reference"]["num_layers"] == 4 and r["num_layers"] == 3
    assert r["ppl_dense_lora"] == s["ppl_recovered"]
    assert r["second_domain"]["ppl_dense_lora"] == s["second_domain"]["ppl_recovered"]
    # the untrained dense numbers are the same model's too, and the training changed something
    assert r["ppl_dense"] == s["ppl_pruned"] and r["second_domain"]["ppl_dense"] == s["second_domain"]["ppl_pruned"]
    assert r["ppl_dense_lora"] != r["ppl_dense"]
    # the pruned run is unchanged by adding the reference (same numbers as a run without it)
    alone = recover(lm, [0, 2, 3], train, copy.deepcopy(cfg), eval_ids=held)
    assert alone.report["loss_curve"] == r["loss_curve"] and alone.report["ppl_recovered"] == r["ppl_recovered"]


def test_second_domain_perplexity_equals_a_naive_loop(honest_run):
    from simdiff_core.pruning.prune import pruned_model

    lm, train, held, second, cfg, res = honest_run
    sd = res.report["second_domain"]
    assert sd["ppl_dense"] == pytest.approx(_naive_ppl(lm.model, second), rel=1e-5)
    assert sd["ppl_pruned"] == pytest.approx(_naive_ppl(pruned_model(lm, [0, 2, 3]), second), rel=1e-5)
    assert sd["ppl_recovered"] == pytest.approx(_naive_ppl(res.model, second), rel=1e-5)
    assert res.report["ppl_recovered"] == pytest.approx(_naive_ppl(res.model, held), rel=1e-5)


def test_verdict_flags_the_issue_numbers():
    """The measured case of issue 22: pruned 75.0 -> 26.0 on WikiText-2 test, dense 25.1 -> 16.0."""
    p = {"dense": 25.1, "pruned": 75.0, "treated": 26.0, "dense_treated": 16.0}
    v = verdict(p, {"dense": 10.0, "pruned": 30.0, "treated": 12.0, "dense_treated": 9.0},
                train_text="wikitext2", eval_text="wikitext2")
    assert v["flags"] == ["same_corpus"]  # 26.0 > 25.1: not below the dense model here
    assert v["ratio_treated_vs_dense_treated"] == pytest.approx(26.0 / 16.0)
    assert v["ratio_pruned_vs_dense"] == pytest.approx(75.0 / 25.1)
    assert v["dense_gain_share"] == pytest.approx(math.log(25.1 / 16.0) / math.log(75.0 / 26.0))
    assert v["improved"] and "×1.62" in v["headline"]
    # below the untrained dense model, but not below the dense model given the same LoRA, nor off-domain
    v = verdict(dict(p, treated=24.0), {"dense": 10.0, "pruned": 30.0, "treated": 12.0},
                train_text="wikitext2:valid", eval_text="wikitext2:test")
    assert v["flags"] == ["same_corpus", "below_dense_untrained_only", "below_dense_only_in_domain"]
    assert any("only on the training corpus' domain" in m for m in v["messages"])
    # a treatment that raises held-out or second-domain perplexity is never an improvement
    v = verdict(dict(p, treated=80.0), None, train_text="shipped:dialogue", eval_text="wikitext2")
    assert v["flags"] == ["worse_held_out", "no_second_domain"] and not v["improved"]
    v = verdict(p, {"dense": 10.0, "pruned": 30.0, "treated": 31.0}, train_text="x.txt")
    assert "worse_out_of_domain" in v["flags"] and not v["improved"]
    # a repair (not trained on text the dense model could learn): its dense reference is the dense model
    v = verdict({"dense": 27.6, "pruned": 87.1, "treated": 56.9}, None, train_text="wikitext2", trains=False)
    assert v["flags"] == ["no_second_domain"]
    assert v["ratio_treated_vs_dense_treated"] == pytest.approx(56.9 / 27.6)
    v = verdict({"dense": 25.1, "pruned": 75.0, "treated": 26.0}, None)
    assert "no_dense_reference" in v["flags"]


def test_second_domain_is_another_corpus():
    assert corpus_of("wikitext2:valid") == corpus_of("wikitext2") == corpus_of("wikitext2:test")
    assert corpus_of("hf:wikitext/wikitext-2-raw-v1/train") == corpus_of("hf:wikitext/wikitext-2-raw-v1/test")
    assert second_domain_text("wikitext2", "wikitext2") == "shipped:code"
    assert second_domain_text("shipped:code", "wikitext2") == "shipped:dialogue"
    assert second_domain_text("wikitext2", "shipped:code") == "shipped:dialogue"


def test_recover_and_compare_workflow(tokenizer):
    """The workflow the CLI and the page call: WikiText-2 test + shipped code sample, verdict recorded."""
    from simdiff_core.data.text import make_windows
    from simdiff_core.evaluation.evaluate import eval_windows
    from simdiff_core.workflows import recover_and_compare
    from tests.support.tiny import tiny_lm

    lm = tiny_lm("qwen2", tokenizer, 3, seed=0)
    train = make_windows(tokenizer, "wikitext2", 2, 32)
    cfg = RecoveryConfig(steps=2, rank=2, lr=5e-3)
    res, ev = recover_and_compare(lm, [0, 2], train, {"source": "wikitext2"}, cfg, eval_windows=1, eval_seq_len=32)
    r = res.report
    assert r["second_domain"]["text"] == "shipped:code" and "shipped code sample" in r["second_domain"]["protocol"]
    code = eval_windows(tokenizer, "shipped:code", 32, 1)
    assert r["second_domain"]["ppl_recovered"] == pytest.approx(_naive_ppl(res.model, code), rel=1e-5)
    assert ev.ppl_dense_lora == r["ppl_dense_lora"] and ev.second_domain == r["second_domain"]
    assert "same_corpus" in ev.honesty["flags"]
    assert cfg.eval_batch_size == RecoveryConfig().eval_batch_size  # the caller's config is not modified
    # the record round-trips through the report JSON
    from simdiff_core.common.records import Evaluation

    back = Evaluation.coerce(ev.to_dict())
    assert back == ev
