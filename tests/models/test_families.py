"""Every family the README lists as supported, swept end to end on a tiny config-built model.

score -> plan -> prune (view) -> generate with a KV cache -> export -> reload in plain transformers.
Each step is checked against an independent computation: the hook-based metrics against
``output_hidden_states``; the pruned view against a model *built* with only the kept blocks (fresh
``from_config`` with the kept blocks' weights); cached generation against greedy decoding without a
cache; the reloaded export against the pruned view. The README's list must equal ``tiny.FAMILIES``.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from simdiff_core import make_plan, make_windows, pruned_model, score_model
from simdiff_core.export.checkpoint import export_pruned
from simdiff_core.models.blocks import SUPPORTED_FAMILIES
from tests.support.tiny import FAMILIES

ROOT = Path(__file__).resolve().parents[2]


def readme_families() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- supported-families:start -->(.*?)<!-- supported-families:end -->", text, re.S)
    assert m, "README has no supported-families block"
    return [f.strip().strip("`") for f in m.group(1).replace("\n", " ").split(",") if f.strip()]


def test_readme_family_list_is_the_tested_list():
    assert readme_families() == list(FAMILIES)
    assert [f.strip() for f in SUPPORTED_FAMILIES.split(",")] == list(FAMILIES)


def _built_with_kept_blocks(lm, kept):
    """A fresh model of the same config with only ``kept`` blocks, their weights copied in."""
    cfg = copy.deepcopy(lm.model.config)
    L = cfg.num_hidden_layers
    cfg.num_hidden_layers = len(kept)
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = [cfg.layer_types[i] for i in kept]
    ref = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    prefix = lm.block_path + "."
    state = {}
    for name, t in lm.model.state_dict().items():
        if name.startswith(prefix):
            i, rest = name[len(prefix):].split(".", 1)
            if int(i) not in kept:
                continue
            name = f"{prefix}{kept.index(int(i))}.{rest}"
        state[name] = t
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in k or "inv_freq" in k or "bias" in k and "attn" in k
                                  for k in missing), (missing, unexpected)
    assert len(ref.get_submodule(lm.block_path)) == len(kept) < L
    return ref


def _greedy_no_cache(model, ids, n):
    seq = ids
    with torch.no_grad():
        for _ in range(n):
            nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    return seq


@pytest.mark.parametrize("family", FAMILIES)
def test_family_score_prune_generate_export_reload(tiny, tokenizer, family, tmp_path):
    lm = tiny(family, num_layers=6)
    ids = make_windows(tokenizer, "wikitext2", n=2, seq_len=24)

    # score: hook metrics equal the direct computation on output_hidden_states (whose entry i is
    # block i's input; the last entry has the final norm applied, so the last block is left out)
    scores = score_model(lm, ids, batch_size=2, matrix_tokens=16)
    with torch.no_grad():
        hs = lm.model(ids, output_hidden_states=True, use_cache=False).hidden_states
    assert len(hs) == lm.num_layers + 1
    for i in range(lm.num_layers - 1):
        x, y = hs[i].double(), hs[i + 1].double()
        assert scores.layers[i]["cosine"] == pytest.approx(F.cosine_similarity(x, y, dim=-1).mean().item(), rel=1e-5)
        assert scores.layers[i]["mssd"] == pytest.approx((y - x).pow(2).mean().item(), rel=1e-5)

    # prune: the view equals a model built with only the kept blocks
    plan = make_plan(scores, "simdiff", num=2)
    kept = plan.kept_layers
    assert len(kept) == 4
    small = pruned_model(lm, kept)
    ref = _built_with_kept_blocks(lm, kept)
    with torch.no_grad():
        view_logits = small(ids, use_cache=False).logits
        assert torch.allclose(view_logits, ref(ids, use_cache=False).logits, rtol=0, atol=1e-5)
    assert small.config.num_hidden_layers == 4 and lm.model.config.num_hidden_layers == 6
    types = getattr(lm.model.config, "layer_types", None)
    if isinstance(types, list):
        assert small.config.layer_types == [types[i] for i in kept]

    # generate with a KV cache == greedy without a cache == the built model's generation
    prompt = ids[:1, :12]
    out = small.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    assert torch.equal(out, _greedy_no_cache(small, prompt, 6))
    assert torch.equal(out, ref.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0))
    assert len(lm.blocks) == 6  # the source is untouched

    # export -> reload in plain transformers: same logits as the pruned view, same cached generation
    out_dir = export_pruned(lm, plan, tmp_path / family)
    re_model = AutoModelForCausalLM.from_pretrained(out_dir).eval()
    assert re_model.config.num_hidden_layers == 4
    with torch.no_grad():
        assert torch.allclose(re_model(ids, use_cache=False).logits, view_logits, rtol=0, atol=1e-5)
    assert torch.equal(re_model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True,
                                         pad_token_id=0), out)
