"""Live curves: ``score_model(on_batch=...)`` hands out partial scores after every batch.

The partial scores after batch b must be exactly what scoring only the windows of batches 1..b gives
(an independent pass over those windows), and after the last batch exactly the final scores.
"""

from __future__ import annotations

import pytest
import torch

from simdiff_core import score_model
from simdiff_core.models.load import wrap_model

METRICS = ("cosine", "bi", "mssd", "masd", "mssd_rel", "masd_rel", "max_abs_diff", "input_rms", "simdiff")


@pytest.fixture(scope="module")
def lm():
    from tests.support.tiny import tiny_model

    return wrap_model(tiny_model("llama", num_layers=5, vocab_size=512), None, source="tiny-llama")


def _same(a: list[dict], b: list[dict], rel=1e-6):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for k in METRICS:
            assert x[k] == pytest.approx(y[k], rel=rel, abs=1e-9), (x["index"], k)


def test_partial_scores_after_each_batch_equal_scoring_those_windows(lm):
    torch.manual_seed(0)
    ids = torch.randint(0, 512, (5, 16))
    partials = []
    final = score_model(lm, ids, batch_size=2, on_batch=partials.append)
    assert [p.meta["partial"] for p in partials] == [{"windows": 2, "of": 5}, {"windows": 4, "of": 5},
                                                     {"windows": 5, "of": 5}]
    # after the last batch: the final per-block metrics, exactly. The linear-replaceability curve is
    # solved once at the end of the pass (one d x d solve per block), so partial scores do not carry it.
    assert all("linear" not in l for p in partials for l in p.layers)
    assert all("linear" in l for l in final.layers)
    assert partials[-1].layers == [{k: v for k, v in l.items() if k != "linear"} for l in final.layers]
    # after batch 1 (and 2): what a separate pass over only those windows measures
    _same(partials[0].layers, score_model(lm, ids[:2], batch_size=2).layers)
    _same(partials[1].layers, score_model(lm, ids[:4], batch_size=2).layers)
    assert partials[0].calibration["samples"] == 2 and partials[0].calibration["tokens"] == 2 * 16
    # the curves really move between batches (a partial is not the final copied early)
    assert partials[0].layers != final.layers


def test_a_cancelled_pass_leaves_usable_partial_scores(lm):
    from simdiff_core import make_plan
    from simdiff_core.common.errors import Cancelled

    torch.manual_seed(1)
    ids = torch.randint(0, 512, (6, 16))
    partials = []
    calls = {"n": 0}

    def stop_in_batch_two():
        calls["n"] += 1
        return len(partials) == 1 and calls["n"] > 5 + 2  # a few blocks into the second batch

    with pytest.raises(Cancelled):
        score_model(lm, ids, batch_size=2, on_batch=partials.append, should_stop=stop_in_batch_two)
    assert len(partials) == 1 and partials[0].meta["partial"] == {"windows": 2, "of": 6}
    _same(partials[0].layers, score_model(lm, ids[:2], batch_size=2).layers)
    plan = make_plan(partials[0], "simdiff", num=2)  # the partial scores plan like any scores
    assert len(plan.removed_layers) == 2
