"""The repair-aware method ``repairable`` against independent computations.

* The DP against brute force over every k-subset (random span costs, locks, missing spans).
* On a tiny model, the plan against a naive loop: every k-subset of removable blocks is repaired
  with ``fit_repair`` (its own least-squares solve and forward pass), its cost taken from the fitted
  spans' residuals and ``‖h_b‖²`` from ``output_hidden_states``; the method's choice is the argmin.
"""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from simdiff_core import make_windows
from simdiff_core.common.errors import SimDiffError
from simdiff_core.methods import run_method
from simdiff_core.methods.repairable import best_spans
from simdiff_core.repair import fit_repair, removed_spans


def _brute(costs, L, k, allowed):
    best = (math.inf, None)
    for s in itertools.combinations(sorted(allowed), k):
        spans = removed_spans(s, L)
        if any(sp not in costs for sp in spans):
            continue
        v = sum(costs[sp] for sp in spans)
        if v < best[0] - 1e-12:
            best = (v, list(s))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_dp_equals_brute_force(seed):
    rng = random.Random(seed)
    L = rng.randint(5, 10)
    k = rng.randint(1, L - 3)
    allowed = [i for i in range(L) if rng.random() > 0.15 or i in (1, 2)]
    max_span = rng.randint(1, 4)
    costs = {(a, a + n): rng.random() * n for a in range(1, L) for n in range(1, max_span + 1)
             if a + n <= L and rng.random() > 0.1}
    want_v, want = _brute(costs, L, k, allowed)
    if want is None:
        with pytest.raises(SimDiffError):
            best_spans(costs, L, k, allowed)
        return
    got, v = best_spans(costs, L, k, allowed)
    assert math.isclose(v, want_v, rel_tol=1e-12) and got == want


def test_dp_never_merges_touching_spans():
    # [1,2) and [2,3) are cheap alone, but together they are the span [1,3), which costs a lot
    costs = {(1, 2): 0.0, (2, 3): 0.5, (1, 3): 10.0, (4, 5): 1.0, (3, 4): 5.0, (2, 4): 9.0, (3, 5): 9.0}
    got, v = best_spans(costs, 6, 2, range(1, 5))
    assert got == [1, 4] and v == 1.0


def test_plan_is_the_argmin_of_a_naive_fit_repair_loop(tiny, tokenizer):
    lm = tiny("llama", 6, seed=3)
    calib = make_windows(tokenizer, "wikitext2", n=4, seq_len=32)
    k = 2
    plan = run_method("repairable", lm, calib, num=k)  # default: every token, as fit_repair fits
    with torch.no_grad():
        hs = lm.model(input_ids=calib, output_hidden_states=True).hidden_states  # hs[j]: input of block j
    naive = {}
    for s in itertools.combinations(range(1, lm.num_layers - 1), k):
        rep = fit_repair(lm, list(s), calib, method="lstsq")
        cost = 0.0
        for rec in rep.spans:
            b = rec["end"]
            # the last block's output is normalised in hidden_states: never in these plans (keep_last)
            cost += rec["residual_after"] / float(hs[b].double().square().sum())
        naive[s] = cost
    want = min(naive, key=naive.get)
    assert plan.removed_layers == list(want), (plan.details, naive)
    assert math.isclose(plan.details["objective_value"], naive[want], rel_tol=1e-3)
    assert plan.method == "repairable" and plan.details["spans"]


def test_absolute_cost_and_bad_cost(tiny, tokenizer):
    lm = tiny("llama", 6, seed=3)
    calib = make_windows(tokenizer, "wikitext2", n=2, seq_len=16)
    plan = run_method("repairable", lm, calib, num=2, cost="absolute")
    assert len(plan.removed_layers) == 2 and 0 not in plan.removed_layers
    with pytest.raises(SimDiffError, match="unknown repairable cost"):
        run_method("repairable", lm, calib, num=2, cost="nope")


def test_without_position_0_like_a_naive_lstsq_loop(tiny, tokenizer):
    """first_token=False: every sum without position 0; checked against torch.linalg.lstsq on
    hidden states and MLP outputs captured by plain forward hooks, for every k-subset."""
    lm = tiny("qwen2", 6, seed=5)
    calib = make_windows(tokenizer, "wikitext2", n=3, seq_len=24)
    k = 2
    plan = run_method("repairable", lm, calib, num=k, first_token=False)
    assert plan.details["first_token"] is False
    layers = lm.model.model.layers
    mlp_out = {}
    hooks = [layers[i].mlp.register_forward_hook(lambda m, a, o, i=i: mlp_out.__setitem__(i, o))
             for i in range(len(layers))]
    try:
        with torch.no_grad():
            hs = lm.model(input_ids=calib, output_hidden_states=True).hidden_states
    finally:
        for h in hooks:
            h.remove()

    def flat(t):
        return t[:, 1:].reshape(-1, t.shape[-1]).double()

    naive = {}
    for s in itertools.combinations(range(1, lm.num_layers - 1), k):
        cost = 0.0
        for a, b in removed_spans(s, lm.num_layers):
            M, ha, hb = flat(mlp_out[a - 1]), flat(hs[a]), flat(hs[b])
            Y = hb - ha + M                     # h_b - R with R = h_a - M
            T = torch.linalg.lstsq(M, Y).solution
            cost += float((M @ T - Y).square().sum()) / float(hb.square().sum())
        naive[s] = cost
    want = min(naive, key=naive.get)
    assert plan.removed_layers == list(want), (plan.details, naive)
    assert math.isclose(plan.details["objective_value"], naive[want], rel_tol=1e-3, abs_tol=1e-9)


def test_shootout_row_is_the_methods_plan(tiny, tokenizer):
    """compare/the Shootout page (``run_compare``) with ``repairable:absolute``: the row is the library's plan."""
    from simdiff_core.methods.compare import parse_specs, run_compare

    lm = tiny("llama", 6, seed=3)
    calib = make_windows(tokenizer, "wikitext2", n=2, seq_len=16)
    held = make_windows(tokenizer, "wikitext2:test", n=1, seq_len=16)
    res = run_compare(lm, calib, parse_specs("repairable:absolute"), num=2, eval_ids=held)
    want = run_method("repairable", lm, calib, num=2, cost="absolute")
    assert res["rows"][1]["method"] == "repairable" and res["rows"][1]["criterion"] == "repairable_absolute"
    assert res["rows"][1]["removed_layers"] == " ".join(map(str, want.removed_layers))
