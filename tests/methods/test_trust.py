"""Issue 13 item checks that belong to no single module: merge base, GGUF cache dtype, α ties,
position-0 option, compare's evaluation text, text chunking, export --force recovery, damage memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from simdiff_core import make_windows
from simdiff_core.common.errors import SimDiffError
from simdiff_core.methods import run_method
from simdiff_core.pruning.build import build_pruned
from simdiff_core.pruning.merge import group_for, merged_model
from simdiff_core.pruning.plan import Plan


@pytest.fixture
def ids(tokenizer):
    return make_windows(tokenizer, "wikitext2", n=2, seq_len=32)


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


# ------------------------------------------------------------------ item 5: GGUF cache and dtype
@pytest.mark.slow
def test_gguf_cache_written_by_a_bf16_load_serves_exact_float32(embedded_lm, tmp_path, monkeypatch):
    """A bf16 load into a fresh cache, then a float32 load from that cache: the float32 weights must
    be the dequantised GGUF's, not bf16-rounded ones."""
    from safetensors import safe_open

    from simdiff_core import load_model
    from simdiff_core.models.gguf import _gguf_cache_dir

    monkeypatch.setenv("SIMDIFF_CACHE", str(tmp_path))
    half = load_model("default", device="cpu", dtype="bfloat16")
    assert half.model.dtype == torch.bfloat16 and any("cached dequantised" in n for n in half.notes)
    del half
    cache = _gguf_cache_dir(__import__("pathlib").Path(embedded_lm.gguf_file))
    assert cache.is_relative_to(tmp_path)
    for f in cache.glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            assert {st.get_slice(k).get_dtype() for k in st.keys()} == {"F32"}
    full = load_model("default", device="cpu", dtype="float32")
    assert any("from cache" in n for n in full.notes)
    ref = embedded_lm.model.state_dict()  # float32 load (session fixture)
    got = full.model.state_dict()
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(got[k], ref[k]), k


# ------------------------------------------------------------------ item 6: alpha = 1 is cosine, any norm
def _tie_scores(L=12):
    """Per-block stats where robust z-scores of BI clip: blocks 1, 2 and 7 are far below the median,
    so all three normalise to 0 (a tie); cosine ranks them 7 (most redundant), 2, 1."""
    from simdiff_core.analysis.score import Scores

    bi = [0.5, 0.004, 0.002, 0.30, 0.31, 0.32, 0.29, 0.001, 0.305, 0.295, 0.315, 0.6][:L]
    layers = [{"index": i, "cosine": 1.0 - b, "bi": b, "mssd": 1.0 + ((i * 7) % L), "masd": 1.0 + ((i * 3) % L),
               "mssd_rel": 0.1 + ((i * 7) % L) / 10, "masd_rel": 0.1 + ((i * 3) % L) / 10} for i, b in enumerate(bi)]
    return Scores(model="tiny-llama", num_layers=L, layers=layers)


@pytest.mark.parametrize("norm", ["rank", "robust"])
def test_alpha_one_plan_is_the_cosine_plan_on_ties(norm):
    from simdiff_core.analysis.metrics import normalise
    from simdiff_core.pruning.plan import make_plan

    scores = _tie_scores()
    if norm == "robust":  # the constructed case really ties
        n = normalise([l["bi"] for l in scores.layers], "robust")
        assert n[1] == n[2] == n[7] == 0.0
    for k in range(1, 11):
        cos = make_plan(scores, "cosine", num=k).removed_layers
        assert make_plan(scores, "simdiff", num=k, alpha=1.0, norm=norm).removed_layers == cos, k
    assert make_plan(scores, "cosine", num=1).removed_layers == [7]


@pytest.mark.parametrize("norm", ["rank", "robust"])
def test_alpha_one_plan_is_the_cosine_plan_on_the_embedded_model(embedded_scores, norm):
    from simdiff_core.pruning.plan import make_plan

    for k in range(1, embedded_scores.num_layers - 2):
        cos = make_plan(embedded_scores, "cosine", num=k).removed_layers
        assert make_plan(embedded_scores, "simdiff", num=k, alpha=1.0, norm=norm).removed_layers == cos, k


def test_auto_alpha_never_worse_than_cosine_with_robust_ties(tiny, ids):
    from simdiff_core import perplexity, pruned_model
    from simdiff_core.methods.alpha import auto_alpha, trials_best
    from simdiff_core.pruning.plan import make_plan

    lm = tiny("llama", 12, seed=4)
    scores = _tie_scores()
    alpha, trials = auto_alpha(lm, scores, ids, num=2, norm="robust")
    cos_plan = make_plan(scores, "cosine", num=2)
    assert [t for t in trials if t["alpha"] == 1.0][0]["removed_layers"] == cos_plan.removed_layers
    cos_ppl = perplexity(pruned_model(lm, cos_plan.kept_layers), ids)["ppl"]
    assert trials_best(trials)["ppl"] <= cos_ppl * (1 + 1e-9)


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


# ------------------------------------------------------------------ item 8b: compare evaluates held-out text
def test_compare_without_eval_ids_measures_held_out_test_windows(tiny, ids):
    from simdiff_core import perplexity, pruned_model
    from simdiff_core.data.text import load_text
    from simdiff_core.methods.compare import DEFAULT_EVAL_SEQ_LEN, DEFAULT_EVAL_WINDOWS, parse_specs, run_compare

    lm = tiny("llama", 4, seed=0)
    res = run_compare(lm, ids, parse_specs("oneshot:cosine"), num=1)
    # independent: the first windows of the shipped WikiText-2 *test* split, tokenised here
    held_out = make_windows(lm.tokenizer, load_text("wikitext2", purpose="eval"), DEFAULT_EVAL_WINDOWS,
                            DEFAULT_EVAL_SEQ_LEN, purpose="eval")
    assert not torch.equal(held_out[:, :ids.shape[1]], ids[:, :ids.shape[1]])
    dense, pruned = res["rows"][0], res["rows"][1]
    assert dense["ppl"] == pytest.approx(perplexity(lm.model, held_out)["ppl"], rel=1e-6)
    assert dense["ppl"] != pytest.approx(perplexity(lm.model, ids)["ppl"], rel=1e-3)  # not in-sample
    kept = res["plans"][0].kept_layers
    assert pruned["ppl"] == pytest.approx(perplexity(pruned_model(lm, kept), held_out)["ppl"], rel=1e-6)
    assert "test split" in res["eval_protocol"] and f"{DEFAULT_EVAL_WINDOWS} non-overlapping" in res["eval_protocol"]


# ------------------------------------------------------------------ item 8c: text chunks end between words
def test_chunked_tokenisation_equals_whole_text_in_memory_and_from_file(tokenizer, tmp_path):
    import random

    from simdiff_core.data.text import _CHUNK_CHARS, iter_tokens, load_text, text_source

    rng = random.Random(0)
    words = ["layer", "pruning", "redundant", "transformer", "blocks", "cosine", "similarity", "3.14", "(MSSD)"]
    seps = [" ", " ", " ", "\n", "\n\n", " \n ", "  "]
    parts, n = [], 0
    while n < int(2.3 * _CHUNK_CHARS):
        w = rng.choice(words) + rng.choice(seps)
        parts.append(w)
        n += len(w)
    text = "".join(parts)
    # the old fixed cut fell inside a word here (the test needs a case where that matters)
    assert not text[_CHUNK_CHARS - 1].isspace() and not text[_CHUNK_CHARS].isspace()
    whole = tokenizer(text, add_special_tokens=False).input_ids
    f = tmp_path / "t.txt"
    f.write_text(text, encoding="utf-8")
    for src in (text_source(text), load_text(str(f))):
        chunks = list(src.chunks())
        assert "".join(chunks) == text and len(chunks) >= 2
        assert all(c[-1].isspace() is False and nxt[0].isspace() for c, nxt in zip(chunks, chunks[1:]))
        assert [t for part in iter_tokens(tokenizer, src) for t in part] == whole


# ------------------------------------------------------------------ item 8d: export --force keeps the old export on failure
def test_export_force_restores_the_previous_export_when_the_final_rename_fails(tiny, tmp_path, monkeypatch):
    import errno
    import os

    from simdiff_core.export import checkpoint as export_mod

    lm = tiny("llama", 4)
    out = tmp_path / "model"
    first = Plan(model=lm.source, num_layers=4, removed_layers=[1])
    export_mod.export_pruned(lm, first, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_rename = os.rename

    def failing_rename(src, dst):  # simulates the OS refusing the rename of the new export into place
        if Path(src).name.startswith(f".{out.name}.tmp-") and Path(dst) == out:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(export_mod.os, "rename", failing_rename)
    second = Plan(model=lm.source, num_layers=4, removed_layers=[2])
    with pytest.raises(SimDiffError, match="export failed"):
        export_mod.export_pruned(lm, second, out, force=True)
    assert out.is_dir() and {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert json.loads((out / "plan.json").read_text())["removed_layers"] == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no hidden .old-/.tmp- folders left
    monkeypatch.setattr(export_mod.os, "rename", real_rename)
    export_mod.export_pruned(lm, second, out, force=True)  # and a later --force works
    assert json.loads((out / "plan.json").read_text())["removed_layers"] == [2]


# ------------------------------------------------------------------ item 8e: damage memory counts the logits
def test_damage_memory_estimate_counts_the_cache_and_the_logits(tiny, tokenizer):
    from simdiff_core.evaluation.damage import measure_damage

    lm = tiny("llama", 4)
    ids = make_windows(tokenizer, "wikitext2", n=2, seq_len=16)
    seen = {"head": [], "block": []}
    head = lm.model.get_output_embeddings()
    hooks = [head.register_forward_hook(lambda m, a, out: seen["head"].append((out.shape, out.element_size())))]
    hooks += [b.register_forward_hook(lambda m, a, out: seen["block"].append(
        ((out[0] if isinstance(out, tuple) else out).shape, (out[0] if isinstance(out, tuple) else out).element_size())))
        for b in lm.blocks]
    try:
        dmg = measure_damage(lm, ids, batch_size=2)
    finally:
        for h in hooks:
            h.remove()
    # the largest head call (the evaluator runs the head in row chunks; the dense pass asks for a few rows)
    (rows, V), elt = max(((o[0] * o[1] if len(o) == 3 else o[0], o[-1]), e) for o, e in seen["head"])
    assert V == 49152 and all(len(o) == 2 or o[1] < 16 for o, _ in seen["head"])  # never (B, S, V) logits
    (B, S, H), helt = seen["block"][0]
    assert (B, S) == (2, 16)
    meta = dmg.meta
    assert meta["cache_bytes_per_batch"] == (lm.num_layers + 1) * B * S * H * helt
    # one chunk as the head returns it, plus the float32 log-softmax (and a float32 copy below fp32)
    assert meta["logits_bytes_per_batch"] == rows * V * (elt + 4 + (4 if elt != 4 else 0))
    assert meta["memory_bytes_per_batch"] == meta["cache_bytes_per_batch"] + meta["logits_bytes_per_batch"]
    # below the old whole-batch loss: (B, S, V) logits + float32 (B, S-1, V) slice and log-softmax
    assert meta["logits_bytes_per_batch"] < B * S * V * elt + 2 * B * (S - 1) * V * 4
