"""A model dispatched by accelerate (``--device-map``, here a CPU + disk-offload split) gives the same
pruned, merged, generated and exported results as the same model loaded plainly, bit for bit.

accelerate replaces each dispatched module's ``forward`` with a partial bound to that module and
keeps offloaded weights in hook-side maps (the module holds ``meta`` placeholders). Pruned views and
merged blocks must not run the original module's forward or reload stale offloaded weights.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from simdiff_core.export.checkpoint import export_pruned
from simdiff_core.models.load import wrap_model
from simdiff_core.pruning.merge import merged_model
from simdiff_core.pruning.plan import Plan
from simdiff_core.pruning.prune import pruned_model, weights_fingerprint

L = 6
KEPT = [0, 2, 3, 5]
# blocks 1, 3 and 4 offloaded to disk; block 2 (kept, renumbered 1) and 3 (kept, renumbered 2) mix
DMAP = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu",
        **{f"model.layers.{i}": ("disk" if i in (1, 3, 4) else "cpu") for i in range(L)}}


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tokenizer):
    from transformers import AutoModelForCausalLM

    from tests.support.tiny import tiny_model

    d = tmp_path_factory.mktemp("model")
    tiny_model("llama", num_layers=L, seed=3).save_pretrained(d)
    plain = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    split = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, device_map=DMAP,
                                                 offload_folder=str(d / "offload")).eval()
    # really dispatched: an offloaded block holds meta placeholders and runs through accelerate's hook
    assert split.model.layers[3].mlp.up_proj.weight.device.type == "meta"
    assert "forward" in split.model.layers[3].__dict__
    return wrap_model(plain, tokenizer, "plain"), wrap_model(split, tokenizer, "split")


def _ids(n=2, s=12, seed=0):
    return torch.randint(0, 49152, (n, s), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_pruned_view_and_generate_with_cache_match_the_plain_model(pair):
    plain, split = pair
    ids = _ids()
    a, b = pruned_model(plain, KEPT), pruned_model(split, KEPT)
    assert torch.equal(a(ids, use_cache=False).logits, b(ids, use_cache=False).logits)
    prompt = ids[:1, :6]
    ga = a.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
    gb = b.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)  # IndexError before the fix
    assert torch.equal(ga, gb)
    assert torch.equal(gb, b.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False))
    # the view's device map names its own blocks; the original is untouched
    assert sorted(k for k in b.hf_device_map if k.startswith("model.layers.")) == [f"model.layers.{j}" for j in range(4)]
    assert b.hf_device_map["model.layers.2"] == "disk" and b.hf_device_map["model.layers.1"] == "cpu"
    assert len(split.blocks) == L
    assert torch.equal(plain.model(ids).logits, split.model(ids).logits)


@torch.no_grad()
def test_merge_matches_the_plain_model(pair):
    plain, split = pair
    before = weights_fingerprint(plain.model)
    plan = Plan(model="t", num_layers=L, removed_layers=[3, 4], merged_groups=[{"base": 2, "layers": [2, 3, 4]}])
    ids = _ids(seed=1)
    ma, mb = merged_model(plain, plan), merged_model(split, plan)
    la, lb = ma(ids, use_cache=False).logits, mb(ids, use_cache=False).logits
    assert torch.equal(la, lb)
    assert not torch.allclose(la, pruned_model(plain, plan.kept_layers)(ids, use_cache=False).logits, atol=1e-4)
    prompt = ids[:1, :6]
    assert torch.equal(ma.generate(prompt, max_new_tokens=6, do_sample=False),
                       mb.generate(prompt, max_new_tokens=6, do_sample=False))
    # the merged block is private: the shared models are unchanged
    assert weights_fingerprint(plain.model) == before
    assert split.model.model.layers[3].mlp.up_proj.weight.device.type == "meta"
    assert torch.equal(plain.model(ids).logits, split.model(ids).logits)


def test_export_matches_the_plain_model(pair, tmp_path):
    from transformers import AutoModelForCausalLM

    plain, split = pair
    for plan in (Plan(model="t", num_layers=L, removed_layers=[1, 4]),
                 Plan(model="t", num_layers=L, removed_layers=[3, 4], merged_groups=[{"base": 2, "layers": [2, 3, 4]}])):
        tag = "merge" if plan.merged_groups else "prune"
        oa = export_pruned(plain, plan, tmp_path / f"a-{tag}")
        ob = export_pruned(split, plan, tmp_path / f"b-{tag}")
        wa, wb = load_file(oa / "model.safetensors"), load_file(ob / "model.safetensors")
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), tag
        back = AutoModelForCausalLM.from_pretrained(ob, dtype=torch.float32).eval()
        with torch.no_grad():
            ids = _ids(seed=2)
            ref = (merged_model(plain, plan) if plan.merged_groups else pruned_model(plain, plan.kept_layers))
            assert torch.equal(back(ids).logits, ref(ids).logits), tag


@torch.no_grad()
def test_materialized_view_owns_real_weights(pair):
    """``pruned_model(materialize=True)`` (recovery trains it) on a dispatched model: real, private, tied."""
    plain, split = pair
    ids = _ids(seed=4)
    a, b = pruned_model(plain, KEPT, materialize=True), pruned_model(split, KEPT, materialize=True)
    assert all(p.device.type == "cpu" for p in b.parameters())  # nothing left on meta
    assert not any("_hf_hook" in m.__dict__ for m in b.model.layers.modules())  # no offload hooks inside
    assert b.lm_head.weight is b.model.embed_tokens.weight  # tied weights stay tied
    shared = {p.data_ptr() for p in split.model.parameters() if p.device.type != "meta"}
    assert not shared & {p.data_ptr() for p in b.parameters()}
    assert torch.equal(a(ids, use_cache=False).logits, b(ids, use_cache=False).logits)
    with torch.no_grad():
        b.model.layers[1].mlp.up_proj.weight.mul_(0)  # a private copy: the shared model is unaffected
    assert torch.equal(plain.model(ids).logits, split.model(ids).logits)


def test_parameter_counts_of_a_disk_offloaded_model_equal_the_plain_model(tmp_path):
    """Offloaded weights are meta placeholders (data pointer 0 for all of them): each still counts."""
    import torch
    from transformers import AutoModelForCausalLM

    from simdiff_core.models.blocks import count_parameters
    from tests.support.tiny import tiny_model

    tiny_model("llama", num_layers=4, seed=0).save_pretrained(tmp_path / "m")
    dmap = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu",
            **{f"model.layers.{i}": ("disk" if i in (1, 2) else "cpu") for i in range(4)}}
    split = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32, device_map=dmap,
                                                 offload_folder=str(tmp_path / "off"))
    assert split.model.layers[1].mlp.up_proj.weight.device.type == "meta"
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32)
    # independent count: every distinct parameter object once (tied weights are one object)
    assert count_parameters(split) == sum(p.numel() for p in plain.parameters()) == count_parameters(plain)


def test_lazy_evaluator_on_a_dispatched_model_matches_the_plain_model(pair):
    """The lazy capture (a view whose stand-ins record the block calls) on an offloaded split: same losses."""
    from simdiff_core.evaluation.evaluator import PrefixEvaluator

    plain, split = pair
    ids = _ids(n=3, s=12, seed=1)
    sets = [(1,), (3, 4), (2,), ()]
    a = PrefixEvaluator(plain, ids, batch_size=2, lazy=True).losses(sets)
    b = PrefixEvaluator(split, ids, batch_size=2, lazy=True).losses(sets)
    assert a == pytest.approx(b, rel=1e-6, abs=1e-7)
    assert a == pytest.approx(PrefixEvaluator(plain, ids, batch_size=2).losses(sets), rel=1e-6)
