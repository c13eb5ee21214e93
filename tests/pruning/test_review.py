"""Adversarial review checks (H8): numbers the app shows, each against an independent computation."""

from __future__ import annotations

import numpy as np
import pytest

from simdiff_core.analysis.score import Scores
from tests.support.builders import constructed_scores as _constructed


def _tied_mssd_scores(cos_by_block: list[list[float]]) -> Scores:
    """Scores (with per-window sums, one token per window) whose MSSD/MASD are 1 for every block,
    so every difference criterion ties everywhere and only the cosine tie-break decides."""
    return _constructed(cos_by_block)


@pytest.fixture
def tied():
    rng = np.random.default_rng(3)
    cos = [list(0.3 + 0.02 * rng.standard_normal(8)) for _ in range(6)]
    cos[4] = [0.95] * 8  # the most redundant block by cosine, but not the lowest index
    return _tied_mssd_scores(cos)


@pytest.mark.parametrize("criterion", ["mssd", "masd_rel"])
def test_stability_and_sensitivity_break_ties_like_the_planner(tied, criterion):
    from simdiff_core.pruning.plan import make_plan
    from simdiff_core.pruning.sensitivity import sensitivity
    from simdiff_core.pruning.stability import plan_stability

    plan = make_plan(tied, criterion, num=1)
    assert plan.removed_layers == [4]  # all tied: the cosine order decides (plan.cosine_tiebreak)
    st = plan_stability(tied, criterion, num=1, n_boot=50)
    assert st.removed == plan.removed_layers  # the app shows an "internal" error when these differ
    # every resample ties too, and block 4 has the highest cosine in every window: always removed
    assert st.frequency[4] == 1.0 and st.stable
    rep = sensitivity({"a": tied, "b": tied}, criterion=criterion, num=1)
    assert rep.removed == {"a": plan.removed_layers, "b": plan.removed_layers}


def test_vectorised_selection_with_tiebreak_equals_the_planner_per_column():
    from simdiff_core.pruning.plan import select_lowest
    from simdiff_core.pruning.stability import select_lowest_cols

    rng = np.random.default_rng(0)
    imp = rng.integers(0, 3, size=(9, 60)).astype(float)   # many ties
    tb = rng.integers(0, 2, size=(9, 60)).astype(float)    # ties in the tie-break too
    imp[2, 5] = np.nan
    for kf, kl in ((True, True), (False, True), (True, False)):
        sel = select_lowest_cols(imp, 3, kf, kl, tiebreak=tb)
        for r in range(60):
            assert np.flatnonzero(sel[:, r]).tolist() == select_lowest(imp[:, r], 3, kf, kl, tiebreak=tb[:, r])


def _regex_bpe_tokenizer(pattern: str):
    """A byte-level BPE tokenizer with the given pre-tokenisation regex and merges that make '.\\n\\n'
    one token (as Llama-3 and Qwen2 vocabularies do)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alphabet))}
    merges = [("Ċ", "Ċ"), (".", "ĊĊ"), (".", "Ċ")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return PreTrainedTokenizerFast(tokenizer_object=tok)


# Llama-3's pre-tokenisation regex (Qwen2's differs only in \p{N} vs \p{N}{1,3}): punctuation takes the
# line breaks after it (" ?[^\s\p{L}\p{N}]+[\r\n]*"), so "word.|\n\n" is not a safe place to cut.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def test_chunked_tokenisation_equals_whole_text_for_a_llama3_style_tokenizer(monkeypatch, tmp_path):
    import random

    from simdiff_core.data import text as data
    from simdiff_core.data.text import iter_tokens, load_text, text_source

    tok = _regex_bpe_tokenizer(LLAMA3_PATTERN)
    monkeypatch.setattr(data, "_CHUNK_CHARS", 64)  # many chunk boundaries in a small text
    rng = random.Random(1)
    words = ["layer", "pruning.", "blocks", "cosine,", "3.14", "(MSSD)", "end."]
    seps = [" ", "\n", "\n\n", " \n "]
    text = "".join(rng.choice(words) + rng.choice(seps) for _ in range(600))
    whole = tok(text, add_special_tokens=False).input_ids
    assert tok.convert_tokens_to_ids(".ĊĊ") in whole  # the merge across "." and the line breaks happens
    f = tmp_path / "t.txt"
    f.write_text(text, encoding="utf-8")
    for src in (text_source(text), load_text(str(f))):
        chunks = list(src.chunks())
        assert "".join(chunks) == text and len(chunks) > 20
        assert [t for part in iter_tokens(tok, src) for t in part] == whole


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


def test_prune_preview_parameter_estimate_equals_the_pruned_model(tiny):
    """Prune preview's "Parameters" metric against counting the parameters of the model actually built."""
    from simdiff_core.pruning.prune import pruned_model
    from ui.views import estimate_cost

    lm = tiny("llama", 6)
    removed = [1, 3, 4]
    small = pruned_model(lm, [i for i in range(6) if i not in removed])
    cost = estimate_cost(lm, removed)
    assert cost["params_after"] == sum(p.numel() for p in small.parameters())
    assert cost["params_before"] == sum(p.numel() for p in lm.model.parameters())
    # speedup from per-token matmul work: block weights + LM head, by direct count
    blocks = [sum(p.numel() for p in b.parameters()) for b in lm.blocks]
    head = lm.model.get_output_embeddings().weight.numel()
    assert cost["speedup"] == pytest.approx((sum(blocks) + head) / (sum(blocks) + head - sum(blocks[i] for i in removed)))


def test_streamed_scores_keep_the_same_per_window_sums_as_in_memory(tmp_path):
    """Bootstrap bands and plan stability of streamed scores rest on their per-window sums."""
    import torch

    from simdiff_core.analysis.score import score_model
    from simdiff_core.analysis.streaming import stream_score
    from simdiff_core.models.load import wrap_model
    from tests.support.tiny import tiny_model

    model = tiny_model("llama", num_layers=3, seed=2).eval()
    model.save_pretrained(tmp_path)
    ids = torch.randint(0, 1024, (5, 16), generator=torch.Generator().manual_seed(0))
    ref = score_model(wrap_model(model, None, str(tmp_path)), ids, batch_size=2, matrix_tokens=16)
    got = stream_score(tmp_path, ids, device="cpu", dtype="float32", batch_size=2, matrix_tokens=16)
    assert len(ref.windows["tokens"]) == 5 and got.windows == ref.windows


def test_shootout_simdiff_rows_use_the_sessions_fusion_settings(tiny, tokenizer):
    """compare's oneshot:simdiff row must be the plan the Prune preview shows for the same alpha, beta and
    scale-free setting (auto alpha also picks beta), not a default-beta plan under the same label."""
    from simdiff_core import make_windows, score_model
    from simdiff_core.methods.compare import parse_specs, run_compare
    from simdiff_core.pruning.plan import make_plan

    lm = tiny("llama", 8, seed=4)
    ids = make_windows(tokenizer, "wikitext2", n=2, seq_len=24)
    scores = score_model(lm, ids)
    grid = [(k, a, b, sf) for k in (2, 3, 4) for a in (0.0, 0.2) for b in (0.0, 1.0) for sf in (True, False)]
    plan_of = lambda k, a, b, sf: make_plan(scores, "simdiff", num=k, alpha=a, beta=b, scale_free=sf).removed_layers  # noqa: E731
    # settings whose plan differs from the default-fusion plan at the same alpha
    k, alpha, b, sf = next(g for g in grid if plan_of(*g) != plan_of(g[0], g[1], 0.5, True))
    want = plan_of(k, alpha, b, sf)
    res = run_compare(lm, ids, parse_specs(["oneshot:simdiff"]), num=k, eval_ids=ids[:1], alpha=alpha,
                      fusion={"beta": b, "scale_free": sf})
    assert res["plans"][0].removed_layers == want


def test_shootout_scores_follow_the_sessions_first_token_choice(tiny, tokenizer):
    """With position 0 excluded on Load & calibrate, the shoot-out's criterion rows rank the same metrics."""
    from simdiff_core import make_windows
    from simdiff_core.methods.compare import parse_specs, run_compare

    lm = tiny("llama", 6, seed=4)
    ids = make_windows(tokenizer, "wikitext2", n=2, seq_len=24)
    res = run_compare(lm, ids, parse_specs(["oneshot:cosine"]), num=2, eval_ids=ids[:1], first_token=False)
    assert res["plans"][0].calibration["first_token"] == "excluded"


def test_iterative_rescoring_keeps_the_first_token_choice(tiny, tokenizer):
    """Every step of iterative pruning scores with the same position-0 choice as its dense scores."""
    from simdiff_core import make_windows, score_model
    from simdiff_core.methods import run_method
    from simdiff_core.models.load import LoadedModel
    from simdiff_core.pruning.prune import pruned_model

    lm = tiny("llama", 6, seed=5)
    ids = make_windows(tokenizer, "wikitext2", n=2, seq_len=24)
    dense = score_model(lm, ids, first_token=False)
    plan = run_method("iterative", lm, ids, num=2, criterion="cosine", scores=dense)
    kept = plan.details["trace"][1]["kept_before"]
    sub = LoadedModel(model=pruned_model(lm, kept), tokenizer=lm.tokenizer, source=lm.source, device=lm.device,
                      dtype=lm.dtype, block_path=lm.block_path)
    direct = score_model(sub, ids, first_token=False).importance("cosine")  # independent: a solo pass
    assert plan.details["trace"][1]["importance"] == pytest.approx(direct, abs=1e-6)
