"""Auto α and the α = 1 end of the SimDiff fusion: never worse than cosine on calibration, the cosine
plan on ties."""

from __future__ import annotations

import pytest

from simdiff_core import make_plan, make_windows, perplexity, pruned_model


@pytest.fixture
def ids(tokenizer):
    return make_windows(tokenizer, "wikitext2", n=2, seq_len=32)


def test_auto_alpha_is_never_worse_than_cosine_on_calibration(embedded_lm, embedded_scores, calib_ids):
    from simdiff_core.methods.alpha import AUTO_BETAS, auto_alpha, trials_best

    alpha, trials = auto_alpha(embedded_lm, embedded_scores, calib_ids, ratio=0.2, betas=AUTO_BETAS)
    best = trials_best(trials)
    assert best["alpha"] == alpha and {t["beta"] for t in trials} == set(AUTO_BETAS)
    cos_plan = make_plan(embedded_scores, "cosine", ratio=0.2)
    cos_ppl = perplexity(pruned_model(embedded_lm, cos_plan.kept_layers), calib_ids)["ppl"]
    assert best["ppl"] <= cos_ppl * (1 + 5e-5)  # two float32 evaluations of one plan differ by up to ~3e-5 relative
    chosen = make_plan(embedded_scores, "simdiff", ratio=0.2, alpha=alpha, beta=best["beta"])
    assert chosen.removed_layers == best["removed_layers"]


# ------------------------------------------------------------------ item 6: alpha = 1 is cosine, any norm
def _tie_scores(L=12):
    """Per-block stats where robust z-scores of BI clip: blocks 1, 2 and 7 are far below the median,
    so all three normalise to 0 (a tie); cosine ranks them 7 (most redundant), 2, 1."""
    from simdiff_core.analysis.score import Scores

    bi = [0.5, 0.004, 0.002, 0.30, 0.31, 0.32, 0.29, 0.001, 0.305, 0.295, 0.315, 0.6][:L]
    layers = [{"index": i, "cosine": 1.0 - b, "bi": b, "mssd": 1.0 + ((i * 7) % L), "masd": 1.0 + ((i * 3) % L),
               "mssd_rel": 0.1 + ((i * 7) % L) / 10, "masd_rel": 0.1 + ((i * 3) % L) / 10} for i, b in enumerate(bi)]
    return Scores(model="tiny-llama", num_layers=L, layers=layers)


@pytest.mark.parametrize("norm", ["rank", "robust"])
def test_alpha_one_plan_is_the_cosine_plan_on_ties(norm):
    from simdiff_core.analysis.metrics import normalise
    from simdiff_core.pruning.plan import make_plan

    scores = _tie_scores()
    if norm == "robust":  # the constructed case really ties
        n = normalise([l["bi"] for l in scores.layers], "robust")
        assert n[1] == n[2] == n[7] == 0.0
    for k in range(1, 11):
        cos = make_plan(scores, "cosine", num=k).removed_layers
        assert make_plan(scores, "simdiff", num=k, alpha=1.0, norm=norm).removed_layers == cos, k
    assert make_plan(scores, "cosine", num=1).removed_layers == [7]


@pytest.mark.parametrize("norm", ["rank", "robust"])
def test_alpha_one_plan_is_the_cosine_plan_on_the_embedded_model(embedded_scores, norm):
    from simdiff_core.pruning.plan import make_plan

    for k in range(1, embedded_scores.num_layers - 2):
        cos = make_plan(embedded_scores, "cosine", num=k).removed_layers
        assert make_plan(embedded_scores, "simdiff", num=k, alpha=1.0, norm=norm).removed_layers == cos, k


def test_auto_alpha_never_worse_than_cosine_with_robust_ties(tiny, ids):
    from simdiff_core import perplexity, pruned_model
    from simdiff_core.methods.alpha import auto_alpha, trials_best
    from simdiff_core.pruning.plan import make_plan

    lm = tiny("llama", 12, seed=4)
    scores = _tie_scores()
    alpha, trials = auto_alpha(lm, scores, ids, num=2, norm="robust")
    cos_plan = make_plan(scores, "cosine", num=2)
    assert [t for t in trials if t["alpha"] == 1.0][0]["removed_layers"] == cos_plan.removed_layers
    cos_ppl = perplexity(pruned_model(lm, cos_plan.kept_layers), ids)["ppl"]
    assert trials_best(trials)["ppl"] <= cos_ppl * (1 + 1e-9)
