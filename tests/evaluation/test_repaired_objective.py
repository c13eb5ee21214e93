"""The ``repaired_ppl`` objective equals repairing each set with ``fit_repair`` and measuring it directly.

Reference per removal set: ``fit_repair`` (its own capture pass and solve), ``apply_repair`` on the
pruned model, then a plain log-softmax loop over the held-out windows — no ``PrefixEvaluator``, no
``DenseSpanFits``. The repair-aware searches pick the same sets through the cached evaluator (with
exact elimination) as through the reference loop (``cached=False``).
"""

from __future__ import annotations

import math

import pytest
import torch

from simdiff_core import make_windows
from simdiff_core.common.errors import SimDiffError
from simdiff_core.evaluation.repaired_objective import RepairedEvaluator, repaired_ppl
from simdiff_core.methods import run_method
from simdiff_core.pruning.prune import pruned_model
from simdiff_core.repair import apply_repair, fit_repair


@pytest.fixture(scope="module")
def windows(tokenizer):
    both = make_windows(tokenizer, "wikitext2", n=5, seq_len=32)
    return both[:3], both[3:]  # fit, held out (the next windows of the same text)


def _direct_ppl(lm, removed, fit, held) -> float:
    kept = [i for i in range(lm.num_layers) if i not in set(removed)]
    rep = fit_repair(lm, list(removed), fit, method="lstsq")
    model = apply_repair(pruned_model(lm, kept), rep) if rep.maps else pruned_model(lm, kept)
    nll, n = 0.0, 0
    with torch.no_grad():
        for row in held:
            logits = model(input_ids=row[None]).logits[0, :-1].double()
            nll -= float(torch.log_softmax(logits, -1).gather(1, row[1:, None]).sum())
            n += row.numel() - 1
    return math.exp(nll / n)


def test_values_equal_fit_repair_then_direct_ppl(tiny, windows):
    fit, held = windows
    lm = tiny("llama", 6, seed=4)
    ev = RepairedEvaluator(lm, fit, held, batch_size=1)
    sets = [(), (3,), (2, 3), (1, 3), (0, 4)]  # (0, 4): the span at block 0 stays unrepaired, [4, 5) is repaired
    got = ev.ppls(sets)
    for s, v in zip(sets, got):
        ref = _direct_ppl(lm, s, fit, held)
        assert math.isclose(v, ref, rel_tol=1e-5), (s, v, ref)
    assert math.isclose(repaired_ppl(lm, (1, 3), fit, held), got[3], rel_tol=1e-5)
    assert len({round(v, 6) for v in got}) == len(sets)
    # the repair did something: the repaired objective is not the plain pruned model's
    kept = [i for i in range(6) if i not in (2, 3)]
    assert not math.isclose(got[2], _unrepaired_ppl(pruned_model(lm, kept), held), rel_tol=1e-3)
    # memoised by set, and exact elimination keeps the argmin
    calls = ev.stats["block_calls"]
    assert ev.ppls(sets) == got and ev.stats["block_calls"] == calls
    cands = [(3,), (2, 3), (1, 3), (2, 4), (1, 4)]
    res = RepairedEvaluator(lm, fit, held, batch_size=1).losses_bounded(cands, keep=1)
    exact = [ev.loss(s) for s in cands]
    best = min(range(len(cands)), key=lambda i: exact[i])
    assert res[best][0] == pytest.approx(exact[best], rel=1e-9)
    for (v, lb), e in zip(res, exact):
        assert (v == pytest.approx(e, rel=1e-9)) if v is not None else (lb > exact[best] and lb <= e + 1e-9)


def _unrepaired_ppl(model, held) -> float:
    from simdiff_core.evaluation.evaluate import perplexity

    return perplexity(model, held)["ppl"]


def test_holdout_must_differ_from_fit(tiny, windows):
    fit, held = windows
    lm = tiny("llama", 4)
    with pytest.raises(SimDiffError, match="held-out"):
        RepairedEvaluator(lm, fit, None)
    with pytest.raises(SimDiffError, match="repeat a calibration"):
        RepairedEvaluator(lm, fit, torch.cat([held, fit[1:2]]))
    with pytest.raises(SimDiffError, match="held-out"):
        run_method("search", lm, fit, num=1, search="greedy", objective="repaired_ppl")


@pytest.mark.parametrize("search,opts", [("greedy", {}), ("beam", {"beam_width": 2}), ("local", {"budget": 6})])
def test_repair_aware_search_equals_the_reference_loop(tiny, windows, search, opts):
    fit, held = windows
    lm = tiny("llama", 6, seed=4)
    fast = run_method("search", lm, fit, num=2, search=search, objective="repaired_ppl", holdout_ids=held, **opts)
    slow = run_method("search", lm, fit, num=2, search=search, objective="repaired_ppl", holdout_ids=held,
                      cached=False, **opts)
    assert fast.removed_layers == slow.removed_layers
    assert fast.details["objective_value"] == pytest.approx(slow.details["objective_value"], rel=1e-5)
    want = _direct_ppl(lm, fast.removed_layers, fit, held)
    assert fast.details["objective_value"] == pytest.approx(want, rel=1e-5)
    d = fast.details["repaired_objective"]
    assert d["holdout_windows"] == [2, 32] and d["fit_windows"] == [3, 32] and d["repair"] == "lstsq"
