"""ppl --stream reads the LM head in vocabulary slices: the sliced log-sum-exp equals the whole-head loss."""

from __future__ import annotations

import math

import pytest
import torch

from tests.support.builders import save_model


def _naive_nll(model, ids) -> float:
    """Summed NLL from the in-memory model's full logits, log-sum-exp in float64 (one vocabulary)."""
    with torch.inference_mode():
        lg = model(input_ids=ids).logits[:, :-1].double()
    return float((torch.logsumexp(lg, -1) - lg.gather(-1, ids[:, 1:, None])[..., 0]).sum())


@pytest.mark.parametrize("tie", [False, True])
def test_sliced_head_equals_unsliced_loss(tmp_path, tie):
    from simdiff_core.evaluation.streaming import stream_perplexity

    model = save_model(tmp_path, num_layers=3, hidden=64, inter=128, vocab=1000, tie=tie)
    ids = torch.randint(0, 1000, (3, 33), generator=torch.Generator().manual_seed(7))
    want = _naive_nll(model, ids) / ids[:, 1:].numel()
    got = {r: stream_perplexity(tmp_path, ids, device="cpu", dtype="float32", head_rows=r)
           for r in (None, 1000, 333, 1)}  # one slice, uneven slices (last one short), one row a slice
    for r, res in got.items():
        assert res["tokens"] == ids[:, 1:].numel()
        assert res["nll"] == pytest.approx(want, rel=1e-9, abs=0), r
        assert res["ppl"] == pytest.approx(math.exp(want), rel=1e-7)  # exp amplifies: d(ppl)/ppl = d(nll)
    assert got[333]["stream"]["head_rows_per_slice"] == 333


def test_sliced_head_bounds_the_peak(tmp_path):
    """The head (vocab 8000 x 64 = 2 MB) is never whole: the peak is one block or one slice, not the head."""
    from simdiff_core.evaluation.streaming import stream_perplexity
    from simdiff_core.models.streaming import StreamedModel

    save_model(tmp_path, num_layers=2, hidden=64, inter=64, vocab=8000)
    sm = StreamedModel(tmp_path, "cpu", "float32")
    head_mb = sm.nbytes(sm.head_names()) / 2**20
    block_mb = sm.nbytes(sm.block_names(0)) / 2**20
    budget = 2 * block_mb + 0.5  # far below the head's 2 MB
    assert head_mb > budget
    ids = torch.randint(0, 8000, (2, 17), generator=torch.Generator().manual_seed(8))
    res = stream_perplexity(tmp_path, ids, memory_budget_mb=budget, device="cpu", dtype="float32")
    assert res["stream"]["peak_weights_mb"] <= round(budget, 3)  # the meta is rounded to 3 decimals
    rows = res["stream"]["head_rows_per_slice"]
    assert 1024 <= rows < 8000  # the slice is what the budget leaves beside the final norm, at least the minimum
    assert rows * sm.head_row_bytes() + sm.nbytes(sm.head_rest_names()) <= budget * 2**20
