"""Merging blocks instead of dropping them: the delta merge against the raw-tensor formula, its export,
bad groups, and the merge base (lowest block by default, --merge-base highest)."""

from __future__ import annotations

import json

import pytest
import torch

from simdiff_core import make_windows
from simdiff_core.common.errors import SimDiffError
from simdiff_core.export.checkpoint import export_pruned
from simdiff_core.methods import run_method
from simdiff_core.pruning.build import build_pruned
from simdiff_core.pruning.merge import group_for, merged_model
from simdiff_core.pruning.plan import Plan
from simdiff_core.pruning.prune import weights_fingerprint


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


# ------------------------------------------------------------------ item 4: merge into the lowest block
def _distinct_norms(lm):
    with torch.no_grad():  # norms start as identical ones: make them differ so they are tested too
        for i, b in enumerate(lm.blocks):
            for p in b.parameters():
                if p.ndim == 1:
                    p.add_(0.1 * i)


def _direct_merge(lm, base, layers):
    """theta_base + sum_k (theta_k - theta_base), written out on the raw tensors."""
    params = [dict(lm.blocks[k].named_parameters()) for k in layers]
    low = dict(lm.blocks[base].named_parameters())
    return {n: low[n].detach() + sum(p[n].detach() - low[n].detach() for p in params) for n in low}


def test_slm_merges_into_the_lowest_block_by_default(tiny, ids):
    lm = tiny("llama", 8, seed=0)
    _distinct_norms(lm)
    plan = run_method("slm", lm, ids, num=3, threshold=0.999)
    d = json.loads(plan.to_json())
    assert d["details"]["merge_base"] == "lowest" and Plan.from_dict(d).details["merge_base"] == "lowest"
    assert plan.merged_groups
    small = build_pruned(lm, plan)
    new_blocks = small.model.layers
    for g in plan.merged_groups:
        assert g["base"] == min(g["layers"]) and g["base"] in plan.kept_layers
        merged = dict(new_blocks[plan.kept_layers.index(g["base"])].named_parameters())
        for name, want in _direct_merge(lm, min(g["layers"]), g["layers"]).items():
            torch.testing.assert_close(merged[name], want, rtol=0, atol=1e-6)


def test_merge_base_option_highest_and_bases_differ(tiny, ids):
    lm = tiny("gemma3", 6, seed=1)
    _distinct_norms(lm)
    window = [2, 3, 4]
    low = Plan(model="t", num_layers=6, removed_layers=[3, 4], merged_groups=[group_for(window)])
    high = Plan(model="t", num_layers=6, removed_layers=[2, 3], merged_groups=[group_for(window, "highest")])
    assert low.merged_groups[0]["base"] == 2 and high.merged_groups[0]["base"] == 4
    m_low, m_high = merged_model(lm, low), merged_model(lm, high)
    for m, base in ((m_low, 2), (m_high, 4)):
        got = dict(m.model.layers[2].named_parameters())
        for name, want in _direct_merge(lm, base, window).items():
            torch.testing.assert_close(got[name], want, rtol=0, atol=1e-6)
        # the merged block keeps its base's layer type (sliding vs full attention)
        assert m.config.layer_types[2] == lm.model.config.layer_types[base]
    with torch.no_grad():
        assert not torch.allclose(m_low(ids, use_cache=False).logits, m_high(ids, use_cache=False).logits)
    plan = run_method("slm", lm, ids, num=2, threshold=0.999, merge_base="highest")
    assert plan.details["merge_base"] == "highest"
    assert all(g["base"] == max(g["layers"]) for g in plan.merged_groups)
    with pytest.raises(SimDiffError, match="merge base"):
        run_method("slm", lm, ids, num=2, merge_base="middle")
