"""Ground truth for the curves: leave-one-out damage (every family, against remove-and-evaluate) and
criterion agreement (correlations against scipy/pandas). The report built from them:
tests/export/test_report.py; their CLI, page and browser checks: tests/cli/, tests/app/, tests/browser/."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from simdiff_core import Cancelled, SimDiffError, make_windows, perplexity, pruned_model
from simdiff_core.evaluation.agreement import (agreement_table, kendall_tau_b, rankdata, set_damage, spearman,
                                               topk_overlap)
from simdiff_core.analysis.score import Scores
from simdiff_core.evaluation.damage import measure_damage
from simdiff_core.evaluation.damage_cost import block_executions
from simdiff_core.evaluation.damage_record import Damage
from simdiff_core.pruning.plan import make_plan
from tests.support.tiny import FAMILIES


@pytest.fixture(scope="module")
def ids(tokenizer):
    return make_windows(tokenizer, "wikitext2", n=3, seq_len=24)


# ------------------------------------------------------------------ damage
@pytest.mark.parametrize("family", FAMILIES)  # every supported family (gemma2/3: sliding/global layers,
def test_damage_equals_remove_and_evaluate(tiny, ids, family):  # granite: logits_scaling, gpt2: positional args
    lm = tiny(family, num_layers=5)
    seen = []
    dmg = measure_damage(lm, ids, batch_size=2, progress=lambda f, m: seen.append(f))
    dense = perplexity(lm.model, ids, batch_size=2)
    assert math.isclose(dmg.dense_loss, dense["nll"], rel_tol=1e-5)
    for i in range(5):
        ref = perplexity(pruned_model(lm, [j for j in range(5) if j != i]), ids, batch_size=2)
        assert math.isclose(dmg.layers[i]["loss"], ref["nll"], rel_tol=1e-5), i
        assert math.isclose(dmg.layers[i]["ppl"], ref["ppl"], rel_tol=1e-4), i
        assert math.isclose(dmg.layers[i]["delta_loss"], ref["nll"] - dense["nll"], abs_tol=1e-5)
    assert len(set(round(d, 6) for d in dmg.deltas())) == 5  # blocks genuinely differ
    # the cached prefix: 2 batches x (5 dense + 4+3+2+1+0 tails) block calls, vs 2 x 25 naively
    assert dmg.meta["block_executions"] == 2 * 15 == block_executions(5, 2)["cached"]
    assert dmg.meta["naive_block_executions"] == 2 * 25
    assert seen == sorted(seen) and seen[-1] == 1.0


def test_damage_is_independent_of_batch_size(tiny_bundle, ids):
    lm, _, dmg = tiny_bundle
    other = measure_damage(lm, ids, batch_size=3)
    assert np.allclose(other.losses(), dmg.losses(), rtol=1e-5)


def test_damage_cancel_and_bad_input(tiny_bundle, ids):
    lm = tiny_bundle[0]
    with pytest.raises(Cancelled):
        measure_damage(lm, ids, should_stop=lambda: True)
    with pytest.raises(SimDiffError, match="non-empty"):
        measure_damage(lm, ids[0])
    # hooks are gone after a cancel: a plain forward still matches the reference
    from simdiff_core.analysis.hooks import current_passes, user_hooks

    assert all(not user_hooks(b) for b in lm.blocks) and not current_passes()


def test_damage_json_and_scores_round_trip(tiny_bundle, tmp_path):
    _, scores, dmg = tiny_bundle
    dmg.save(tmp_path / "d.json")
    back = Damage.load(tmp_path / "d.json")
    assert back.deltas() == dmg.deltas() and back.dense_ppl == dmg.dense_ppl
    attached = dmg.attach(scores)
    attached.save(tmp_path / "s.json")
    again = Damage.from_scores(Scores.load(tmp_path / "s.json"))
    assert np.allclose(again.deltas(), dmg.deltas()) and again.dense_loss == dmg.dense_loss
    assert Damage.from_scores(scores) is None
    (tmp_path / "bad.json").write_text(json.dumps({"num_layers": 3, "layers": []}))
    with pytest.raises(SimDiffError, match="malformed damage|inconsistent"):
        Damage.load(tmp_path / "bad.json")


# ------------------------------------------------------------------ correlations
VECTORS = [
    ([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5]),
    ([3.0, 1.0, 2.0, 2.0, 5.0, 1.0, 4.0], [0.5, 0.1, 0.3, 0.9, 0.7, 0.1, 0.2]),  # ties in both
    ([1, 1, 1, 2, 2, 3, 3, 3], [8, 7, 7, 5, 6, 1, 2, 2]),                         # heavy ties, anti-correlated
    (list(np.random.default_rng(0).normal(size=30)), list(np.random.default_rng(1).normal(size=30))),
]


@pytest.mark.parametrize("a, b", VECTORS)
def test_correlations_match_scipy_and_pandas(a, b):
    import pandas as pd
    from scipy import stats

    assert np.allclose(rankdata(a), stats.rankdata(a))
    assert math.isclose(spearman(a, b), stats.spearmanr(a, b).statistic, abs_tol=1e-12)
    assert math.isclose(kendall_tau_b(a, b), stats.kendalltau(a, b).statistic, abs_tol=1e-12)
    s = pd.Series(a)
    assert math.isclose(spearman(a, b), s.corr(pd.Series(b), method="spearman"), abs_tol=1e-12)
    assert math.isclose(kendall_tau_b(a, b), s.corr(pd.Series(b), method="kendall"), abs_tol=1e-12)


def test_correlation_edge_cases():
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])) and math.isnan(kendall_tau_b([2, 2], [1, 3]))
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert kendall_tau_b([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    with pytest.raises(SimDiffError):
        spearman([1, 2], [1, 2, 3])
    with pytest.raises(SimDiffError):
        kendall_tau_b([1, float("nan")], [1, 2])


def test_topk_overlap_respects_locks():
    imp = [0.0, 5, 1, 4, 2, 3, -1]      # block 0 and 6 locked by default
    dmg = [9.0, 0.5, 0.2, 0.1, 0.3, 0.4, -5]
    ov = topk_overlap(imp, dmg, 2)
    assert ov["criterion_blocks"] == [2, 4] and ov["damage_blocks"] == [2, 3] and ov["overlap"] == 1
    assert topk_overlap(imp, dmg, 1, keep_first=False, keep_last=False)["common"] == [6]


def test_agreement_table_on_measured_damage(tiny_bundle):
    _, scores, dmg = tiny_bundle
    rows = agreement_table(scores, dmg, alpha=0.5, num=2)
    by = {r["key"]: r for r in rows}
    assert set(by) == {"cosine", "bi", "angular", "mssd", "masd", "mssd_rel", "masd_rel", "simdiff"}
    for r in rows:
        imp = scores.importance(r["key"], alpha=0.5)
        assert r["spearman"] == pytest.approx(spearman(imp, dmg.deltas()))
        assert 0 <= r["topk_overlap"] <= 2 and r["k"] == 2
    assert by["cosine"]["spearman"] == pytest.approx(by["bi"]["spearman"])  # bi = 1 - cosine
    # a "criterion" equal to the damage itself agrees perfectly
    fake = [dict(l, mssd=d) for l, d in zip(scores.layers, dmg.deltas())]
    perfect = agreement_table(Scores(scores.model, 6, fake), dmg, num=2, criteria=("mssd",))[0]
    assert perfect["spearman"] == pytest.approx(1.0) and perfect["kendall"] == pytest.approx(1.0)
    assert perfect["topk_overlap"] == 2
    with pytest.raises(SimDiffError, match="blocks"):
        agreement_table(scores, dmg.deltas()[:4])


def test_set_damage_vs_sum_of_singles(tiny_bundle, ids):
    lm, scores, dmg = tiny_bundle
    plans = {"simdiff": make_plan(scores, "simdiff", num=2).removed_layers, "single": [3], "pair": [1, 4]}
    rows = {r["label"]: r for r in set_damage(lm, ids, plans, dmg)}
    # a one-block set is exactly its single damage: no interaction
    assert rows["single"]["delta_loss"] == pytest.approx(dmg.deltas()[3], abs=1e-5)
    assert rows["single"]["interaction"] == pytest.approx(0.0, abs=1e-5)
    ref = perplexity(pruned_model(lm, [0, 2, 3, 5]), ids)
    assert rows["pair"]["ppl"] == pytest.approx(ref["ppl"], rel=1e-5)
    assert rows["pair"]["additive_delta"] == pytest.approx(dmg.deltas()[1] + dmg.deltas()[4])
    with pytest.raises(SimDiffError, match="must remove"):
        set_damage(lm, ids, {"bad": [7]}, dmg)


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
    # the largest head-module call: the dense pass asks for a few rows (the loss runs the head weight in
    # tiles of rows x 2048 vocabulary entries, outside the module's forward)
    (rows, V), elt = max(((o[0] * o[1] if len(o) == 3 else o[0], o[-1]), e) for o, e in seen["head"])
    assert V == 49152 and all(len(o) == 2 or o[1] < 16 for o, _ in seen["head"])  # never (B, S, V) logits
    (B, S, H), helt = seen["block"][0]
    # the largest call picks the bound's vocabulary subset: every predicting row of the first batch, in
    # chunks whose float32 logits stay under 32 MiB
    assert (B, S) == (2, 16) and rows == min(B * (S - 1), (32 * 2 ** 20) // (4 * V))
    meta = dmg.meta
    assert meta["cache_bytes_per_batch"] == (lm.num_layers + 1) * B * S * H * helt
    # the larger of: those logits plus the tail check's two float32 rows of 8 positions; one loss tile
    # (all B x (S-1) rows here x 2048 entries, plus float32 exponentials)
    check = B * 8 * V * elt + 2 * 8 * V * 4
    tile = B * (S - 1) * 2048 * (elt + 4 + (4 if elt != 4 else 0))
    pick = rows * V * (elt + 4 + (4 if elt != 4 else 0))   # those logits, a float32 copy, their softmax
    assert meta["logits_bytes_per_batch"] == max(check, tile, pick)
    assert meta["memory_bytes_per_batch"] == meta["cache_bytes_per_batch"] + meta["logits_bytes_per_batch"]
    # below the old whole-batch loss: (B, S, V) logits + float32 (B, S-1, V) slice and log-softmax
    assert meta["logits_bytes_per_batch"] < B * S * V * elt + 2 * B * (S - 1) * V * 4
