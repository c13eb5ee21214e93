"""The shared workflows (calibrate, auto α, evaluate, export) and the one hub check / batch rule."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.nn.functional as F


def _naive_ppl(model, ids) -> float:
    """exp(mean NLL of tokens 1..S-1), one window at a time."""
    nll, n = 0.0, 0
    with torch.no_grad():
        for w in ids:
            logits = model(input_ids=w[None], use_cache=False).logits[0, :-1].float()
            nll += F.cross_entropy(logits, w[1:], reduction="sum").item()
            n += w.numel() - 1
    return math.exp(nll / n)


def test_evaluate_plan_matches_a_naive_loop_and_reuses_the_dense_number(tiny):
    from simdiff_core.evaluation.evaluate import eval_windows
    from simdiff_core.pruning.plan import Plan
    from simdiff_core.pruning.prune import pruned_model
    from simdiff_core.workflows import evaluate_plan

    lm = tiny("llama", 5, seed=4)
    plan = Plan(model="t", num_layers=5, removed_layers=[1, 3])
    ev = evaluate_plan(lm, plan, windows=3, seq_len=24)
    ids = eval_windows(lm.tokenizer, "wikitext2", 24, 3)
    assert ev.ppl_dense == pytest.approx(_naive_ppl(lm.model, ids), rel=1e-4)
    assert ev.ppl_pruned == pytest.approx(_naive_ppl(pruned_model(lm, [0, 2, 4]), ids), rel=1e-4)
    assert ev.tokens == 3 * 23 and "3 non-overlapping windows x 24" in ev.protocol
    other = Plan(model="t", num_layers=5, removed_layers=[2])
    again = evaluate_plan(lm, other, windows=3, seq_len=24, dense=ev)
    assert again.ppl_dense == ev.ppl_dense
    assert again.ppl_pruned == pytest.approx(_naive_ppl(pruned_model(lm, [0, 1, 3, 4]), ids), rel=1e-4)


def test_choose_alpha_is_auto_alpha_with_its_best_trial(tiny, calib_ids):
    from simdiff_core import score_model
    from simdiff_core.methods.alpha import AUTO_BETAS, auto_alpha, trials_best
    from simdiff_core.workflows import choose_alpha

    lm = tiny("llama", 6, seed=2)
    ids = calib_ids[:2, :32]
    scores = score_model(lm, ids)
    choice = choose_alpha(lm, scores, ids, num=2)
    a, trials = auto_alpha(lm, scores, ids, num=2, betas=AUTO_BETAS)
    best = trials_best(trials)
    assert (choice.alpha, choice.beta, choice.ppl) == (a, best["beta"], best["ppl"])
    assert choice.distinct == len({tuple(t["removed_layers"]) for t in trials}) and choice.num == 2
    assert choice.record()["chosen"] == a


def _env(monkeypatch, **kv):
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
              "HF_ENDPOINT"):
        monkeypatch.delenv(k, raising=False)
    for k, v in kv.items():
        monkeypatch.setenv(k, v)


def test_one_hub_reachable_says_offline_when_offline(monkeypatch):
    """One function for models, datasets and lm-eval; offline mode means unreachable, without a try."""
    import simdiff_core.data.text
    import simdiff_core.evaluation.downstream
    from simdiff_core.models.sources import hub_reachable

    assert not hasattr(simdiff_core.evaluation.downstream, "hub_reachable") or simdiff_core.evaluation.downstream.hub_reachable is hub_reachable
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        _env(monkeypatch, HF_ENDPOINT=f"http://127.0.0.1:{port}")
        assert hub_reachable(timeout=2) is True                     # a real endpoint that answers
        _env(monkeypatch, HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HUB_OFFLINE="1")
        assert hub_reachable(timeout=2) is False                    # offline mode wins, reachable or not
        _env(monkeypatch, HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_DATASETS_OFFLINE="true")
        assert hub_reachable(timeout=2) is True and hub_reachable(timeout=2, datasets=True) is False
    finally:
        server.close()
    _env(monkeypatch, HF_ENDPOINT=f"http://127.0.0.1:{port}")       # nothing listens there any more
    assert hub_reachable(timeout=2) is False
    _env(monkeypatch, HF_ENDPOINT=f"http://127.0.0.1:{port}", HTTPS_PROXY="http://127.0.0.1:9")
    assert hub_reachable(timeout=2) is True                         # behind a proxy the client decides


def test_one_batch_rule_for_scoring_streaming_and_damage():
    import simdiff_core.analysis.streaming as streaming
    from simdiff_core.analysis.score import auto_batch_size
    from simdiff_core.evaluation.evaluator import prefix  # damage's batches: the evaluator's

    assert streaming.auto_batch_size is auto_batch_size and prefix.auto_batch_size is auto_batch_size
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    # ~2k tokens per CPU batch (at most 4 windows), ~16k on CUDA (at most 16); damage at half the tokens
    assert [auto_batch_size(cpu, s) for s in (64, 512, 1024, 4096)] == [4, 4, 2, 1]
    assert [auto_batch_size(gpu, s) for s in (256, 2048, 32768)] == [16, 8, 1]
    assert [auto_batch_size(cpu, s, share=0.5) for s in (256, 512, 2048)] == [4, 2, 1]
    assert [auto_batch_size(gpu, s, share=0.5) for s in (256, 2048)] == [8, 4]


def test_one_figures_module_for_app_report_and_cli(embedded_scores):
    from simdiff_core.export import figures
    from simdiff_core.export.report import build_report_html

    m = embedded_scores.matrices["cka"]
    app, paper = figures.heatmap(m, "CKA"), figures.heatmap(m, "CKA", publication=True)
    assert app.data[0].z.tolist() == paper.data[0].z.tolist() == [list(map(float, r)) for r in m]
    rows = [{"method": "dense", "criterion": None, "ppl": 10.0}, {"method": "oneshot", "criterion": "cosine", "ppl": 31.5}]
    bars = figures.shootout_bars(rows)
    assert list(bars.data[0].x) == ["dense", "oneshot:cosine"] and list(bars.data[0].y) == [10.0, 31.5]
    curve = figures.loss_curve([{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}])
    assert list(curve.data[0].y) == [3.0, 2.5]
    html, n = build_report_html(embedded_scores)
    assert n >= 4 and "CKA" in html
