"""The self-contained HTML report: its figures, and the numbers it prints against the library's."""

from __future__ import annotations

import re

import pytest

from simdiff_core import SimDiffError, make_windows, score_model
from simdiff_core.analysis.score import Scores
from simdiff_core.analysis.uncertainty import bands
from simdiff_core.export.report import build_report_html
from simdiff_core.pruning.plan import Plan, make_plan
from simdiff_core.pruning.stability import plan_stability


@pytest.fixture(scope="module")
def ids(tokenizer):
    return make_windows(tokenizer, "wikitext2", n=3, seq_len=24)


def test_html_report_carries_bands_stability_and_sensitivity(tiny, ids32):
    from simdiff_core.export.report import build_report_html
    from simdiff_core.pruning.plan import make_plan
    from simdiff_core.pruning.sensitivity import sensitivity

    lm = tiny("llama", 6)
    sc = score_model(lm, ids32[:5])
    plan = make_plan(sc, "simdiff", num=2, alpha=0.5)
    other = score_model(lm, ids32[5:10])
    sens = sensitivity({"first": sc, "second": other}, num=2)
    doc, _ = build_report_html(sc, plan=plan, sensitivity=sens)
    b = bands(sc, fused={"alpha": 0.5})
    st = plan_stability(sc, "simdiff", num=2, alpha=0.5)
    assert "Uncertainty: bootstrap bands" in doc and f"{b['cosine']['lo'][3]:.4g}" in doc
    assert "Plan stability" in doc and ("stable" if st.stable else f"unstable: blocks {st.unstable}") in doc
    assert "Calibration sensitivity" in doc and f"{round(sens.rho['first', 'second'], 4)}" in doc
    old = Scores.from_dict({k: v for k, v in sc.to_dict().items() if k != "windows"})
    doc2, _ = build_report_html(old, plan=plan)
    assert "bootstrap bands" not in doc2 and "Plan stability" not in doc2  # old scores files: no section


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
