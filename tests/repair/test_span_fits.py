"""``DenseSpanFits`` (one capture, every span's map) against ``fit_repair`` (its own pass per removal set).

Same maps up to float64 round-off, same span records, and the repaired models built from either give
the same logits; on every fold kind (Linear, GPT-2's Conv1D, Granite's residual multiplier, OPT's
flattened MLP, Gemma3's norm gain with ``rescale``) and for a span at block 0 (left unrepaired).
"""

from __future__ import annotations

import math

import pytest
import torch

from simdiff_core import make_windows
from simdiff_core.common.errors import SimDiffError
from simdiff_core.pruning.prune import pruned_model
from simdiff_core.repair import DenseSpanFits, RepairRefused, apply_repair, fit_repair

CASES = [("llama", "lstsq"), ("gpt2", "lstsq"), ("granite", "lstsq"), ("opt", "lstsq"), ("gemma3", "rescale"),
         ("llama", "ridge"), ("opt", "ridge")]
SETS = [[2], [2, 3], [1, 4], [0, 3, 4]]


@pytest.fixture(scope="module")
def fit_ids(tokenizer):
    return make_windows(tokenizer, "wikitext2", n=3, seq_len=48)


@pytest.mark.parametrize("family,method", CASES)
def test_maps_and_records_equal_fit_repair(tiny, fit_ids, family, method):
    lm = tiny(family, 6, seed=1)
    # same batches as fit_repair (bit-identical activations); the sums are formed in another order
    fits = DenseSpanFits(lm, fit_ids, method=method, batch_size=1)
    for removed in SETS:
        ref = fit_repair(lm, removed, fit_ids, method=method, batch_size=1)
        got = fits.repair(removed)
        assert sorted(got.maps) == sorted(ref.maps)
        for j, T in ref.maps.items():
            err = float((got.maps[j] - T).abs().max())
            assert err <= 1e-8 * float(T.abs().max()), (removed, j, err)
        assert len(got.spans) == len(ref.spans)
        for g, r in zip(got.spans, ref.spans):
            assert {k: v for k, v in g.items() if not isinstance(v, (float, dict))} == \
                   {k: v for k, v in r.items() if not isinstance(v, (float, dict))}
            assert ("ridge" in g) == ("ridge" in r) == (method == "ridge" and "fold_block" in r)
            if "ridge" in r:  # the same strength chosen; the cross-validated residuals up to round-off
                assert g["ridge"]["strength"] == r["ridge"]["strength"] and g["ridge"]["windows"] == r["ridge"]["windows"]
                for k, v in r["ridge"]["held_out"].items():
                    assert math.isclose(g["ridge"]["held_out"][k], v, rel_tol=1e-4), (removed, k)  # s=0: ill-posed
            for k in ("residual_before", "residual_after", "ratio"):
                if k in r:
                    assert math.isclose(g[k], r[k], rel_tol=1e-8, abs_tol=1e-12), (removed, k)
        assert got.note == ref.note and got.calibration["tokens"] == ref.calibration["tokens"]
        # the repaired models: fold of the memoised block == apply_repair of fit_repair's record
        kept = [i for i in range(lm.num_layers) if i not in removed]
        ids = fit_ids[:1, :24]
        with torch.no_grad():
            want = apply_repair(pruned_model(lm, kept), ref)(input_ids=ids).logits
            have = apply_repair(pruned_model(lm, kept), got)(input_ids=ids).logits
        assert torch.allclose(have, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_folded_block_is_memoised_and_shares_the_rest(tiny, fit_ids):
    lm = tiny("llama", 6, seed=1)
    fits = DenseSpanFits(lm, fit_ids)
    blk = fits.folded_block(2, 4)
    assert fits.folded_block(2, 4) is blk and fits.is_folded(blk) and not fits.is_folded(lm.blocks[1])
    assert fits.stats["solves"] == 1
    dense = lm.blocks[1]
    assert blk.mlp.down_proj is not dense.mlp.down_proj and blk.self_attn is dense.self_attn
    assert blk.mlp.up_proj is dense.mlp.up_proj
    T = fits.repair([2, 3]).maps[1]
    want = (T.T @ dense.mlp.down_proj.weight.double()).float()
    assert torch.allclose(blk.mlp.down_proj.weight, want, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(blk.mlp.down_proj.weight, dense.mlp.down_proj.weight, rtol=1e-3)
    with pytest.raises(SimDiffError):
        fits.solve(0, 2)  # no block below block 0


def test_refusals_and_memory_guard(tiny, fit_ids):
    with pytest.raises(RepairRefused):
        DenseSpanFits(tiny("gemma3", 4), fit_ids, method="lstsq")
    with pytest.raises(SimDiffError, match="MB"):
        DenseSpanFits(tiny("llama", 4), fit_ids, max_mb=0.01)
