"""The multiple-choice objective: accuracy against a naive per-choice log-likelihood loop, and bad MC files."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from simdiff_core.common.errors import SimDiffError


# ------------------------------------------------------------------ multiple choice
def test_mc_accuracy_matches_naive_loglikelihood(tiny):
    from simdiff_core.data.text import bos_prefix
    from simdiff_core.evaluation.objectives import load_mc, mc_accuracy

    lm = tiny("llama", 4, seed=0)
    items = load_mc()[:6]
    assert all(len(it["choices"]) == 4 for it in items) and len(load_mc(split="dev")) == 35
    res = mc_accuracy(lm.model, lm.tokenizer, items, batch_size=5)
    correct = 0
    with torch.no_grad():
        for it in items:
            ll = []
            for ch in it["choices"]:
                ctx = lm.tokenizer(it["context"], add_special_tokens=False).input_ids
                whole = lm.tokenizer(it["context"] + " " + ch, add_special_tokens=False).input_ids
                seq = torch.tensor((bos_prefix(lm.tokenizer) or [lm.tokenizer.eos_token_id]) + whole)
                logp = F.log_softmax(lm.model(input_ids=seq[None]).logits[0].float(), -1)
                n = len(whole) - len(ctx)
                ll.append(sum(float(logp[t - 1, seq[t]]) for t in range(len(seq) - n, len(seq))))
            correct += int(max(range(4), key=lambda j: ll[j]) == it["gold"])
    assert res["n"] == 6 and res["correct"] == correct


def test_mc_file_errors(tmp_path):
    from simdiff_core.evaluation.objectives import load_mc

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "Q", "choices": ["a"], "gold": 0}\n')
    with pytest.raises(SimDiffError, match="2 choices"):
        load_mc(bad)
