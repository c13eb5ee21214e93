"""Metric definitions and SimDiff fusion: each block's cosine, BI, MSSD, MASD and the fused importance
against a direct computation from the hidden states (tiny config models and the embedded GGUF)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from simdiff_core import make_windows, score_model
from simdiff_core.analysis.metrics import normalise, simdiff_importance


def _ids(tokenizer, n=2, s=32):
    return make_windows(tokenizer, "wikitext2", n=n, seq_len=s)


# ------------------------------------------------------------------ metrics
def test_metrics_match_direct_hidden_state_computation(tiny, tokenizer):
    lm = tiny("llama", num_layers=5)
    ids = _ids(tokenizer, 3, 40)
    scores = score_model(lm, ids, batch_size=2, matrix_tokens=64)
    with torch.no_grad():
        hs = lm.model(ids, output_hidden_states=True).hidden_states  # L+1 entries, last one normed
    L = lm.num_layers
    for i in range(L - 1):  # hidden_states[i] -> block i -> hidden_states[i+1] (raw) for i < L-1
        x, y = hs[i].double(), hs[i + 1].double()
        d = y - x
        layer = scores.layers[i]
        assert layer["cosine"] == pytest.approx(F.cosine_similarity(x, y, dim=-1).mean().item(), rel=1e-5)
        assert layer["mssd"] == pytest.approx(d.pow(2).mean().item(), rel=1e-5)
        assert layer["masd"] == pytest.approx(d.abs().mean().item(), rel=1e-5)
        rel = (d.pow(2).mean(-1) / x.pow(2).mean(-1)).mean().item()
        assert layer["mssd_rel"] == pytest.approx(rel, rel=1e-5)
        assert layer["bi"] == pytest.approx(1 - layer["cosine"])
        assert layer["angular"] == pytest.approx(math.acos(layer["cosine"]) / math.pi)


def test_last_block_is_hooked_before_the_final_norm(tiny, tokenizer):
    """output_hidden_states[-1] is norm(last block output); our hook must see the raw output."""
    lm = tiny("llama", num_layers=4)
    ids = _ids(tokenizer, 1, 24)
    captured = {}
    from simdiff_core.analysis.hooks import block_hooks

    with torch.no_grad(), block_hooks(lm.blocks, lambda i, x, y: captured.__setitem__(i, y.clone())):
        hs = lm.model(ids, output_hidden_states=True).hidden_states
    raw = captured[lm.num_layers - 1]
    assert not torch.allclose(raw, hs[-1], atol=1e-4)
    assert torch.allclose(lm.model.model.norm(raw), hs[-1], atol=1e-5)


def test_cross_layer_matrices_shapes_and_diagonals(embedded_scores):
    m = embedded_scores.matrices
    L = embedded_scores.num_layers
    cos, cka, ang = np.array(m["output_cosine"]), np.array(m["cka"]), np.array(m["angular_boundaries"])
    assert cos.shape == (L, L) and cka.shape == (L, L) and ang.shape == (L + 1, L + 1)
    assert np.allclose(np.diag(cos), 1, atol=1e-4) and np.allclose(np.diag(cka), 1, atol=1e-4)
    assert np.allclose(cos, cos.T, atol=1e-5) and np.allclose(ang, ang.T, atol=1e-5)
    assert np.all(ang >= 0) and np.all(ang <= 1) and np.allclose(np.diag(ang), 0, atol=1e-3)
    assert 0 < m["matrix_tokens"] <= 256


def test_scoring_is_independent_of_batch_size(tiny, tokenizer):
    lm = tiny("qwen2", num_layers=4)
    ids = _ids(tokenizer, 4, 32)
    a = score_model(lm, ids, batch_size=1)
    b = score_model(lm, ids, batch_size=4)
    for la, lb in zip(a.layers, b.layers):
        for k in ("cosine", "mssd", "masd", "mssd_rel", "masd_rel"):
            assert la[k] == pytest.approx(lb[k], rel=1e-4)


def test_rank_and_robust_normalisation_by_hand():
    assert normalise([3.0, 1.0, 2.0], "rank").tolist() == [1.0, 0.0, 0.5]
    assert normalise([1.0, 1.0, 5.0], "rank").tolist() == [0.25, 0.25, 1.0]  # tied ranks averaged
    r = normalise([1.0, 2.0, 3.0, 1000.0], "robust")
    assert r.min() >= 0 and r.max() == 1.0  # the outlier is clipped at +3 MAD
    assert r[0] < r[1] < r[2]


def test_simdiff_fusion_formula_and_alpha_ends():
    layers = [dict(bi=b, mssd_rel=s, masd_rel=a, mssd=s, masd=a) for b, s, a in
              [(0.1, 5.0, 0.3), (0.3, 1.0, 0.2), (0.2, 3.0, 0.9), (0.05, 0.5, 0.1)]]
    imp = simdiff_importance(layers, alpha=0.3, beta=0.5)
    nb = normalise([l["bi"] for l in layers])
    ns = normalise([l["mssd_rel"] for l in layers])
    na = normalise([l["masd_rel"] for l in layers])
    assert np.allclose(imp, 0.3 * nb + 0.7 * (0.5 * ns + 0.5 * na))
    assert np.argsort(simdiff_importance(layers, alpha=1.0)).tolist() == np.argsort(nb).tolist()


# ------------------------------------------------------------------ item 8a: position 0 is an option
@pytest.mark.parametrize("first_token", [True, False])
def test_first_token_option_matches_direct_computation(tiny, tokenizer, first_token):
    import torch.nn.functional as F

    from simdiff_core import score_model
    from simdiff_core.analysis.score import protocol

    lm = tiny("llama", 4)
    ids = make_windows(tokenizer, "wikitext2", n=3, seq_len=20)
    scores = score_model(lm, ids, batch_size=2, first_token=first_token)
    with torch.no_grad():
        hs = lm.model(ids, output_hidden_states=True, use_cache=False).hidden_states
    start = 0 if first_token else 1
    for i in range(lm.num_layers - 1):
        x, y = hs[i][:, start:].double(), hs[i + 1][:, start:].double()
        assert scores.layers[i]["cosine"] == pytest.approx(F.cosine_similarity(x, y, dim=-1).mean().item(), rel=1e-6)
        assert scores.layers[i]["mssd_rel"] == pytest.approx(
            ((y - x).pow(2).mean(-1) / x.pow(2).mean(-1)).mean().item(), rel=1e-5)
    assert scores.calibration["tokens"] == 3 * (20 - start)
    word = "included" if first_token else "excluded"
    assert scores.calibration["first_token"] == word
    line = protocol(scores.calibration)
    assert f"position 0 / BOS {word}" in line and "heatmaps on a subsample of positions 1..S-1" in line
    if not first_token:  # the HTML report states it too
        from simdiff_core.export.report import build_report_html

        assert f"position 0 / BOS {word}" in build_report_html(scores)[0]
