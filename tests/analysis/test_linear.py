"""Linear replaceability (analysis/linear.py) against an independent float64 least-squares reference.

The reference never asks the library where the MLP write is: it runs block a-1 a second time with
its ``mlp`` (OPT: ``fc2``) output replaced by zeros, which gives the post-attention residual R as the
block's own output in every family (a post-MLP norm, dropout or multiplier maps 0 to 0), so
M = h_a - R, and fits T with ``np.linalg.lstsq`` on the captured tokens.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from simdiff_core import SimDiffError, make_windows, score_model
from simdiff_core.analysis.linear import solve, write_site
from simdiff_core.analysis.score import Scores
from simdiff_core.analysis.uncertainty import bands
from simdiff_core.pruning.plan import make_plan
from tests.support.tiny import FAMILIES


def _mlp(block):
    return getattr(block, "mlp", None) or block.fc2


def _forward(lm, ids, zero_block=None):
    """Every block's output for windows ``ids`` (one at a time), with plain torch hooks (single thread)."""
    outs, handles = {}, []
    for i, b in enumerate(lm.blocks):
        handles.append(b.register_forward_hook(
            lambda m, a, o, _i=i: outs.setdefault(_i, []).append((o[0] if isinstance(o, tuple) else o).double())))
    if zero_block is not None:
        handles.append(_mlp(lm.blocks[zero_block]).register_forward_hook(lambda m, a, o: torch.zeros_like(o)))
    try:
        with torch.no_grad():
            for w in ids:
                lm.model(input_ids=w[None], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {i: torch.cat(v).reshape(-1, v[0].shape[-1]).numpy() for i, v in outs.items()}


def reference(lm, ids, spans, rcond=None):
    """{span: min_T ||M T - (h_b - R)||^2 / ||h_b - h_a||^2}, float64 lstsq; a span is a start a (the
    single block [a, a+1)) or (a, n) for [a, a+n)."""
    h = _forward(lm, ids)
    out = {}
    for sp in spans:
        i, n = sp if isinstance(sp, tuple) else (sp, 1)
        R = _forward(lm, ids, zero_block=i - 1)[i - 1]
        h_a, h_b = h[i - 1], h[i + n - 1]
        M, Y = h_a - R, h_b - R
        T = np.linalg.lstsq(M, Y, rcond=rcond)[0]
        out[sp] = float(((M @ T - Y) ** 2).sum() / ((h_b - h_a) ** 2).sum())
    return out


@pytest.fixture(scope="module")
def ids_small(tokenizer):
    return make_windows(tokenizer, "wikitext2", n=4, seq_len=40)   # 160 tokens > d = 64


@pytest.mark.parametrize("family", FAMILIES)
def test_curve_matches_lstsq_reference_every_family(tiny, ids_small, family):
    lm = tiny(family, num_layers=4, seed=1)
    sc = score_model(lm, ids_small, batch_size=2)
    vals = [l["linear"] for l in sc.layers]
    assert vals[0] is None                                   # no block below block 0
    ref = reference(lm, ids_small, range(1, 4))
    for i, r in ref.items():
        assert 0.0 <= vals[i] <= 1.0
        assert vals[i] == pytest.approx(r, abs=2e-4, rel=1e-3), (family, i)
    assert "reason" not in sc.meta["linear"]


def test_embedded_model_matches_reference_and_bands(embedded_lm):
    ids = make_windows(embedded_lm.tokenizer, "wikitext2", n=6, seq_len=128)   # 768 tokens > d = 576
    sc = score_model(embedded_lm, ids, batch_size=3, linear_bands=True)
    # 768 tokens for d = 576 is below the 4 d the curve asks for (it warns): there M has directions so weak
    # that the float32 products cannot resolve them, and the curve's pseudo-inverse drops eigenvalues of
    # M^T M under PINV_RTOL (singular values under sqrt(PINV_RTOL) of the largest). The reference is
    # numpy's float64 lstsq with that same singular-value cut (the tiny-model test above uses none).
    from simdiff_core.analysis.linear import PINV_RTOL

    ref = reference(embedded_lm, ids, (1, 14, 29), rcond=math.sqrt(PINV_RTOL))
    for i, r in ref.items():
        assert sc.layers[i]["linear"] == pytest.approx(r, abs=2e-3, rel=1e-2), i
    vals = np.array([l["linear"] for l in sc.layers[1:]])
    assert (vals >= 0).all() and (vals <= 1).all()
    # the second pass's per-window residuals at the fitted maps add up to the curve
    w = sc.windows
    num, den = np.asarray(w["lin_num"]).sum(1), np.asarray(w["lin_den"]).sum(1)
    np.testing.assert_allclose(num[1:] / den[1:], vals, atol=1e-3)
    b = bands(sc)["linear"]
    lo, hi, v = (np.asarray(b[k][1:]) for k in ("lo", "hi", "value"))
    assert (lo <= v + 1e-9).all() and (v <= hi + 1e-9).all() and (hi > lo).any()
    assert math.isnan(b["value"][0])


def test_scores_round_trip_and_plan_without_model(tiny, ids_small, tmp_path):
    sc = score_model(tiny("llama", num_layers=6, seed=2), ids_small, batch_size=2, linear_bands=True)
    sc.save(tmp_path / "s.json")
    back = Scores.load(tmp_path / "s.json")
    assert [l["linear"] for l in back.layers] == [l["linear"] for l in sc.layers]
    assert back.windows["lin_num"] == sc.windows["lin_num"]
    plan = make_plan(back, "linear", num=2)
    vals = np.array([np.inf] + [l["linear"] for l in sc.layers[1:-1]])   # first/last locked
    assert plan.removed_layers == sorted(np.argsort(vals, kind="stable")[:2].tolist())


def test_post_ln_family_is_refused_with_reason(tokenizer, ids_small):
    import transformers as tf

    from simdiff_core.models.load import wrap_model

    torch.manual_seed(0)
    cfg = tf.OPTConfig(vocab_size=49152, hidden_size=64, num_hidden_layers=3, ffn_dim=128, num_attention_heads=4,
                       word_embed_proj_dim=64, max_position_embeddings=512, do_layer_norm_before=False)
    lm = wrap_model(tf.AutoModelForCausalLM.from_config(cfg).eval(), tokenizer, source="tiny-opt-postln")
    assert write_site(lm.blocks[0])[0] is None
    sc = score_model(lm, ids_small, batch_size=2, linear_bands=True)
    assert all(l["linear"] is None for l in sc.layers)
    assert "post-LN" in sc.meta["linear"]["reason"]
    assert "lin_num" not in sc.windows
    with pytest.raises(SimDiffError, match="no linear-replaceability curve"):
        make_plan(sc, "linear", num=1)


def test_memory_cap_gives_none_with_reason(tiny, ids_small):
    sc = score_model(tiny("llama", num_layers=4), ids_small, batch_size=2, linear_max_mb=0.01)
    assert all(l["linear"] is None for l in sc.layers)
    assert "MB" in sc.meta["linear"]["reason"] and "--stream" in sc.meta["linear"]["reason"]
    json.loads(sc.to_json())                                 # still plain JSON (null, not NaN)


def test_solve_never_exceeds_unrepaired_and_handles_rank_deficiency():
    g = torch.Generator().manual_seed(0)
    M = torch.randn(30, 8, generator=g, dtype=torch.float64)
    M[:, 5:] = 0                                             # rank 5: G singular
    D = torch.randn(30, 8, generator=g, dtype=torch.float64)
    res, delta = solve(M.T @ M, M.T @ D, float((D ** 2).sum()))
    ref = np.linalg.lstsq(M.numpy(), D.numpy(), rcond=None)[0]
    assert res == pytest.approx(float(((M.numpy() @ ref - D.numpy()) ** 2).sum()), rel=1e-9)
    assert res <= float((D ** 2).sum())
    assert float(((M @ delta - D) ** 2).sum()) == pytest.approx(res, rel=1e-9)


def test_span_heatmap_matches_reference_and_the_curve(tiny, ids_small):
    from simdiff_core.analysis.linear_spans import span_replaceability

    lm = tiny("qwen2", num_layers=5, seed=3)
    heat = span_replaceability(lm, ids_small, batch_size=2)
    V = heat["values"]
    ref = reference(lm, ids_small, [(1, 1), (1, 3), (2, 2), (3, 2), (1, 4)])
    for (a, n), r in ref.items():
        assert V[n - 1][a] == pytest.approx(r, abs=2e-4, rel=1e-3), (a, n)
    assert all(V[n - 1][0] is None for n in range(1, 6)) and V[1][4] is None   # a = 0; a + n > L
    sc = score_model(lm, ids_small, batch_size=2)
    assert V[0][1:] == pytest.approx([l["linear"] for l in sc.layers[1:]], abs=1e-9)
    # several passes under a small memory cap give the same map
    small = span_replaceability(lm, ids_small, batch_size=2, max_mb=0.4)
    assert small["passes"] > 1 and small["values"] == V
    capped = span_replaceability(lm, ids_small, batch_size=2, max_span=2)
    assert capped["values"][2][1] is None and capped["values"][1][1] == pytest.approx(V[1][1])


def test_streamed_curve_equals_in_memory(tmp_path, tokenizer, ids_small):
    from simdiff_core.analysis.streaming import stream_score
    from tests.support.tiny import tiny_lm

    lm = tiny_lm("llama", tokenizer, 4, seed=4)
    lm.model.save_pretrained(tmp_path / "m")
    mem = score_model(lm, ids_small, batch_size=2, linear_bands=True)
    got = stream_score(tmp_path / "m", ids_small, device="cpu", dtype="float32", batch_size=2, linear=True,
                       linear_bands=True)
    assert [l["linear"] for l in got.layers] == pytest.approx([l["linear"] for l in mem.layers], abs=1e-12)
    np.testing.assert_allclose(got.windows["lin_num"], mem.windows["lin_num"], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(got.windows["lin_den"], mem.windows["lin_den"], rtol=1e-6)
