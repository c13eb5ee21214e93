"""Perplexity as ``evaluate.perplexity`` defines it, on the embedded model."""

from __future__ import annotations

from simdiff_core import perplexity


def test_perplexity_of_embedded_model_is_sane(embedded_lm):
    from simdiff_core import eval_windows

    ids = eval_windows(embedded_lm.tokenizer, windows=2, seq_len=128)
    res = perplexity(embedded_lm.model, ids)
    assert 5 < res["ppl"] < 200 and res["tokens"] == 2 * 127
