"""Ground truth for the curves: leave-one-out damage, criterion agreement, the HTML report."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess

import numpy as np
import pytest

from tests.support.repo import ROOT, run_cli
from simdiff_core import Cancelled, SimDiffError, make_windows, perplexity, pruned_model, score_model
from simdiff_core.evaluation.agreement import (agreement_table, kendall_tau_b, rankdata, set_damage, spearman,
                                               topk_overlap)
from simdiff_core.analysis.score import Scores
from simdiff_core.evaluation.damage import Damage, block_executions, measure_damage
from simdiff_core.export.report import build_report_html, write_report
from simdiff_core.pruning.plan import Plan, make_plan
from tests.support.tiny import FAMILIES

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def ids(tokenizer):
    return make_windows(tokenizer, "wikitext2", n=3, seq_len=24)


@pytest.fixture(scope="module")
def tiny_bundle(tokenizer, ids):
    """A 6-block tiny llama with its scores and damage (shared by the agreement/report tests)."""
    from tests.support.tiny import tiny_lm

    lm = tiny_lm("llama", tokenizer, 6, seed=1)
    scores = score_model(lm, ids, calibration={"source": "wikitext2"})
    dmg = measure_damage(lm, ids, batch_size=2, calibration={"source": "wikitext2"})
    return lm, scores, dmg


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


# ------------------------------------------------------------------ report
def _count_graph_divs(html_text: str) -> int:
    return len(re.findall(r'class="plotly-graph-div"', html_text))


def test_report_html_is_self_contained(tiny_bundle, tmp_path):
    _, scores, dmg = tiny_bundle
    plan = make_plan(scores, "simdiff", num=2)
    doc, n = build_report_html(scores, damage=dmg, plan=plan, ppl={"before": 10.0, "after": 12.5, "protocol": "p"})
    # curves + 3 heatmaps + agreement grid
    assert n == 5 and _count_graph_divs(doc) == 5
    assert "<script src=" not in doc and doc.count("plotly.js v") >= 1  # plotly.js inline, nothing fetched
    assert len(doc) > 3_000_000
    assert doc.count("Plotly.newPlot") == 5
    for text in ("Spearman", "Kendall", "passthrough", str(plan.removed_layers), "12.5"):
        assert text in doc
    # without damage/plan the report still renders, with fewer figures and a hint
    doc2, n2 = build_report_html(scores)
    assert n2 == 4 and "python -m simdiff_core damage" in doc2
    with pytest.raises(SimDiffError, match="blocks"):
        build_report_html(scores, plan=Plan(model="x", num_layers=4, removed_layers=[1]))


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_report_renders_every_figure_in_headless_chromium(tiny_bundle, ids, tmp_path):
    lm, scores, dmg = tiny_bundle
    plan = make_plan(scores, "simdiff", num=2)
    sets = set_damage(lm, ids, {"simdiff": plan.removed_layers}, dmg)
    out = tmp_path / "report.html"
    res = write_report(out, scores, damage=dmg, plan=plan, sets=sets)
    assert res["figures"] == 6
    # --virtual-time-budget lets plotly finish drawing before the DOM is dumped; no network is used
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--virtual-time-budget=10000", "--dump-dom", out.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    drawn = re.findall(r'class="[^"]*js-plotly-plot[^"]*"', dom)
    assert len(drawn) == 6, f"{len(drawn)} of 6 figures drawn"
    assert dom.count('class="main-svg"') >= 6


@pytest.mark.skipif(CHROMIUM is None, reason="kaleido needs Chromium (apt-get install chromium)")
def test_cli_damage_agreement_report_and_figure(tiny_bundle, ids, tmp_path):
    lm, scores, _ = tiny_bundle
    model_dir = tmp_path / "tiny"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    scores.save(tmp_path / "scores.json")
    make_plan(scores, "cosine", num=2).save(tmp_path / "plan.json")
    r = run_cli("damage", "--model", model_dir, "--samples", 3, "--seq-len", 24, "--out", tmp_path / "damage.json",
                "--attach", tmp_path / "scores.json", "--plans", tmp_path / "plan.json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["num_layers"] == 6 and res["block_executions"] < res["naive_block_executions"]
    d = Damage.load(tmp_path / "damage.json")
    assert d.meta["sets"][0]["removed"] == Plan.load(tmp_path / "plan.json").removed_layers
    assert "damage_loss" in json.loads((tmp_path / "scores.json").read_text())["layers"][0]

    r = run_cli("agreement", "--scores", tmp_path / "scores.json", "--ratio", 0.34, "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout.strip().splitlines()[-1])["rows"]
    assert len(rows) == 8 and all(row["k"] == 2 for row in rows)

    r = run_cli("report", "--scores", tmp_path / "scores.json", "--damage", tmp_path / "damage.json",
                "--plan", tmp_path / "plan.json", "--ppl-before", 20, "--ppl-after", 25,
                "--out", tmp_path / "r.html", "--figure", tmp_path / "fig.png")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["figures"] == 6 and _count_graph_divs((tmp_path / "r.html").read_text()) == 6
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    r = run_cli("report", "--scores", tmp_path / "scores.json", "--out", tmp_path / "x.html", "--figure", "f.gif")
    assert r.returncode == 2 and r.stderr.strip().startswith("error: ") and not (tmp_path / "x.html").exists()


# ------------------------------------------------------------------ app page
def test_ground_truth_page_measures_damage_and_offers_the_report():
    from streamlit.testing.v1 import AppTest

    page = "pages/6_Ground_truth_and_report.py"
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    at.switch_page(page).run()
    assert not at.exception and at.info and not at.get("plotly_chart")  # empty state: guard, no charts
    at.switch_page("pages/0_Load_and_calibrate.py").run()
    at.number_input(key="samples").set_value(2)
    at.number_input(key="seq_len").set_value(32)
    at.button(key="calibrate").click().run()
    assert not at.exception and not at.error
    at.switch_page(page).run()
    at.number_input(key="dmg_windows").set_value(2)
    at.number_input(key="dmg_seq_len").set_value(16)
    at.button(key="measure_damage").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    damage = at.session_state["damage"]
    assert len(damage) == 30 and damage[0] == max(damage)  # block 0 of SmolLM2 is the most damaging
    table = at.dataframe[0].value
    assert len(table) == 8 and table["Spearman ρ"].between(-1, 1).all()
    assert len(at.get("plotly_chart")) == 2  # curves with damage + scatter
    assert at.get("download_button")
    at.button(key="measure_sets").click().run()
    assert not at.exception and not at.error
    assert len(at.session_state["set_damage"]) == 5 and len(at.get("plotly_chart")) == 3
