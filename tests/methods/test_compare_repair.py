"""compare --repair: every pruned row gets the held-out perplexity of its repaired model.

The repaired perplexity is recomputed here from a private deep copy of the pruned model with the
fitted map folded by hand (``W ← Tᵀ·W`` on the copy's own ``down_proj``), not through ``apply_repair``.
"""

from __future__ import annotations

import math

import pytest
import torch

from simdiff_core import make_windows, pruned_model
from simdiff_core.evaluation.evaluate import perplexity
from simdiff_core.methods.compare import parse_specs, run_compare, to_markdown
from simdiff_core.repair import fit_repair


def test_compare_repaired_column_matches_a_hand_folded_model(tiny, tokenizer):
    lm = tiny("llama", 6, seed=7)
    calib = make_windows(tokenizer, "wikitext2", n=4, seq_len=48)
    held = make_windows(tokenizer, "wikitext2:test", n=2, seq_len=32)
    res = run_compare(lm, calib, parse_specs("oneshot:cosine,block"), num=2, eval_ids=held, repair="lstsq")
    assert res["repair"] == "lstsq" and "ppl_repaired" not in res["rows"][0]
    for row, plan in zip(res["rows"][1:], res["plans"]):
        rep = fit_repair(lm, plan.removed_layers, calib, method="lstsq")
        by_hand = pruned_model(lm, plan.kept_layers, materialize=True)
        kept = plan.kept_layers
        with torch.no_grad():
            for fold_block, T in rep.maps.items():
                lin = by_hand.model.layers[kept.index(fold_block)].mlp.down_proj
                lin.weight.copy_((T.T @ lin.weight.double()).float())
        want = perplexity(by_hand, held, batch_size=2)["ppl"]
        assert math.isclose(row["ppl_repaired"], want, rel_tol=1e-5), (row, want)
        assert row["ppl_repaired"] != row["ppl"]
    assert "ppl repaired (lstsq)" in to_markdown(res)


def test_lstsq_on_too_few_fit_tokens_fails_before_any_row(tiny):
    """lstsq with no more calibration tokens than the hidden size: one line before any scoring, not NaN rows."""
    from simdiff_core.common.errors import SimDiffError
    lm = tiny("llama", 4, seed=0)
    calib = torch.randint(0, 512, (1, 48), generator=torch.Generator().manual_seed(0))  # 48 <= d = 64
    held = torch.randint(0, 512, (1, 32), generator=torch.Generator().manual_seed(1))
    steps = []
    with pytest.raises(SimDiffError) as e:
        run_compare(lm, calib, parse_specs("oneshot:cosine"), num=1, eval_ids=held, repair="lstsq",
                    progress=lambda f, m: steps.append(m))
    assert "\n" not in str(e.value) and "48 <= 64" in str(e.value) and not steps
    res = run_compare(lm, calib, parse_specs("oneshot:cosine"), num=1, eval_ids=held, repair="ridge")
    assert res["repair"] == "ridge" and res["rows"][1]["ppl_repaired"] == res["rows"][1]["ppl_repaired"]  # not NaN
