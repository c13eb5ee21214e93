"""Plans and pruning: ratio → block count, locks, plan JSON, pruned views (KV cache, manual block
skipping) and non-mutation of the source model."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from simdiff_core import SimDiffError, make_plan, make_windows, pruned_model
from simdiff_core.export.checkpoint import export_pruned
from simdiff_core.pruning.plan import Plan, count_from_ratio, num_from_ratio, select_lowest
from simdiff_core.pruning.prune import weights_fingerprint
from tests.support.tiny import CORE_FAMILIES as FAMILIES


def _ids(tokenizer, n=2, s=32):
    return make_windows(tokenizer, "wikitext2", n=n, seq_len=s)


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


def test_count_from_ratio_is_the_unchecked_rounding_rule():
    # Python's round: halves to even (10 x 0.25 = 2.5 -> 2, 30 x 0.25 = 7.5 -> 8), at least 1, unchecked at 1.0
    assert [count_from_ratio(10, 0.25), count_from_ratio(30, 0.25), count_from_ratio(30, 0.01)] == [2, 8, 1]
    assert count_from_ratio(30, 1.0) == 30  # the app's count box follows a ratio slider that reaches 1
    assert all(count_from_ratio(30, r / 100) == num_from_ratio(30, ratio=r / 100) for r in range(1, 96))


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
