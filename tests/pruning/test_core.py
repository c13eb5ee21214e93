"""Engine tests: metric definitions, SimDiff fusion, plans, pruning/KV cache, non-mutation, export."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from simdiff_core import SimDiffError, make_plan, make_windows, perplexity, pruned_model, score_model
from simdiff_core.analysis.metrics import normalise, simdiff_importance
from simdiff_core.export.checkpoint import export_pruned, safe_name, export_dir_under
from simdiff_core.pruning.plan import Plan, num_from_ratio, select_lowest
from simdiff_core.pruning.prune import weights_fingerprint
from tests.support.tiny import CORE_FAMILIES as FAMILIES


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


# ------------------------------------------------------------------ plans
def test_ratio_to_count_and_bad_values():
    assert num_from_ratio(30, ratio=0.25) == 8  # round(7.5) -> 8
    assert num_from_ratio(18, num=4) == 4
    for bad in (0, -0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(SimDiffError):
            num_from_ratio(30, ratio=bad)
    with pytest.raises(SimDiffError, match="leave none"):
        num_from_ratio(30, num=30)
    with pytest.raises(SimDiffError):
        num_from_ratio(30, ratio=0.2, num=3)


def test_select_lowest_respects_locks():
    imp = [0.0, 5, 1, 5, 0.0]
    assert select_lowest(imp, 1) == [2]
    assert select_lowest(imp, 2, keep_first=False, keep_last=False) == [0, 4]
    with pytest.raises(SimDiffError, match="locked"):
        select_lowest(imp, 4)


def test_plan_json_round_trip_and_validation(embedded_scores):
    plan = make_plan(embedded_scores, "simdiff", ratio=0.25)
    assert len(plan.removed_layers) == 8 and 0 not in plan.removed_layers and 29 not in plan.removed_layers
    again = Plan.from_dict(json.loads(plan.to_json()))
    assert again.removed_layers == plan.removed_layers and again.kept_layers == plan.kept_layers
    with pytest.raises(SimDiffError, match="30 blocks but this model has 18"):
        again.validate(18)
    with pytest.raises(SimDiffError, match="malformed"):
        Plan.from_dict({"num_layers": "x", "removed_layers": [1]})
    with pytest.raises(SimDiffError):
        Plan(model="m", num_layers=4, removed_layers=[0, 1, 2, 3])
    yaml = plan.to_mergekit_yaml("some/model")
    assert "merge_method: passthrough" in yaml
    ranges = plan.kept_ranges()
    assert sum(b - a for a, b in ranges) == len(plan.kept_layers)


def test_criteria_pick_different_sets_on_embedded_model(embedded_scores):
    picks = {c: tuple(make_plan(embedded_scores, c, ratio=0.25).removed_layers)
             for c in ("cosine", "mssd", "masd_rel", "simdiff")}
    assert picks["cosine"] == tuple(make_plan(embedded_scores, "bi", ratio=0.25).removed_layers)
    assert len(set(picks.values())) >= 2  # raw MSSD follows depth growth, unlike cosine


# ------------------------------------------------------------------ pruning
@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_generation_with_cache_equals_no_cache_forward(tiny, tokenizer, family):
    lm = tiny(family, num_layers=6)
    small = pruned_model(lm, [0, 2, 3, 5])
    ids = _ids(tokenizer, 1, 16)
    out = small.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    seq = ids
    with torch.no_grad():
        for _ in range(6):  # greedy without any cache
            nxt = small(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)
    assert [b.self_attn.layer_idx for b in small.model.layers] == [0, 1, 2, 3]
    assert small.config.num_hidden_layers == 4
    if family == "gemma3":
        types = lm.model.config.layer_types
        assert small.config.layer_types == [types[i] for i in (0, 2, 3, 5)]


def test_pruned_view_equals_manual_block_skipping(tiny, tokenizer):
    """The pruned forward equals running the dense model with removed blocks replaced by identity."""
    lm = tiny("llama", num_layers=6)
    ids = _ids(tokenizer, 2, 20)
    kept = [0, 1, 3, 5]
    small = pruned_model(lm, kept)
    handles = []
    for i, b in enumerate(lm.blocks):
        if i not in kept:
            handles.append(b.register_forward_hook(
                lambda m, a, kw, out: kw.get("hidden_states", a[0] if a else None), with_kwargs=True))
    try:
        with torch.no_grad():
            ref = lm.model(ids, use_cache=False).logits
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        got = small(ids, use_cache=False).logits
    assert torch.allclose(ref, got, atol=1e-5)


def test_pruning_never_mutates_the_source(embedded_lm, embedded_scores, calib_ids, tmp_path):
    before = weights_fingerprint(embedded_lm.model)
    idx_before = [b.self_attn.layer_idx for b in embedded_lm.blocks]
    with torch.no_grad():
        logits_before = embedded_lm.model(calib_ids[:1, :32]).logits
    plan = make_plan(embedded_scores, "simdiff", ratio=0.25)
    small = pruned_model(embedded_lm, plan.kept_layers)
    small.generate(calib_ids[:1, :16], max_new_tokens=3, do_sample=False)
    export_pruned(embedded_lm, plan, tmp_path / "out")
    assert embedded_lm.num_layers == 30 and embedded_lm.model.config.num_hidden_layers == 30
    assert [b.self_attn.layer_idx for b in embedded_lm.blocks] == idx_before
    assert weights_fingerprint(embedded_lm.model) == before
    with torch.no_grad():
        assert torch.equal(embedded_lm.model(calib_ids[:1, :32]).logits, logits_before)
    # the export round-trips in plain transformers
    re = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert re.config.num_hidden_layers == 30 - len(plan.removed_layers)
    with torch.no_grad():
        assert torch.allclose(re(calib_ids[:1, :32]).logits, small(calib_ids[:1, :32]).logits, atol=1e-4)


# ------------------------------------------------------------------ export
@pytest.mark.parametrize("family", FAMILIES)
def test_export_round_trip_in_plain_transformers(tiny, tokenizer, family, tmp_path):
    lm = tiny(family, num_layers=6)
    plan = Plan(model=lm.source, num_layers=6, removed_layers=[1, 4])
    out = export_pruned(lm, plan, tmp_path / family, make_zip=True)
    assert (out / "simdiff_report.json").is_file() and out.with_suffix(".zip").is_file()
    re = AutoModelForCausalLM.from_pretrained(out)
    assert re.config.num_hidden_layers == 4
    ids = _ids(tokenizer, 1, 16)
    with torch.no_grad():
        assert torch.allclose(re(ids).logits, pruned_model(lm, plan.kept_layers)(ids).logits, atol=1e-5)
    re.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    report = json.loads((out / "simdiff_report.json").read_text())
    assert report["plan"]["removed_layers"] == [1, 4]
    with pytest.raises(SimDiffError, match="already exists"):
        export_pruned(lm, plan, out)
    export_pruned(lm, plan, out, force=True)  # --force replaces atomically
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_export_names_are_sanitised(tmp_path):
    assert safe_name("../../etc/passwd") == "etc_passwd"
    assert export_dir_under(tmp_path, "../x").parent == tmp_path.resolve()
    with pytest.raises(SimDiffError):
        safe_name("../..")


def test_perplexity_of_embedded_model_is_sane(embedded_lm):
    from simdiff_core import eval_windows

    ids = eval_windows(embedded_lm.tokenizer, windows=2, seq_len=128)
    res = perplexity(embedded_lm.model, ids)
    assert 5 < res["ppl"] < 200 and res["tokens"] == 2 * 127


def test_auto_alpha_is_never_worse_than_cosine_on_calibration(embedded_lm, embedded_scores, calib_ids):
    from simdiff_core.methods.alpha import AUTO_BETAS, auto_alpha, trials_best

    alpha, trials = auto_alpha(embedded_lm, embedded_scores, calib_ids, ratio=0.2, betas=AUTO_BETAS)
    best = trials_best(trials)
    assert best["alpha"] == alpha and {t["beta"] for t in trials} == set(AUTO_BETAS)
    cos_plan = make_plan(embedded_scores, "cosine", ratio=0.2)
    cos_ppl = perplexity(pruned_model(embedded_lm, cos_plan.kept_layers), calib_ids)["ppl"]
    assert best["ppl"] <= cos_ppl * (1 + 1e-6)
    chosen = make_plan(embedded_scores, "simdiff", ratio=0.2, alpha=alpha, beta=best["beta"])
    assert chosen.removed_layers == best["removed_layers"]
