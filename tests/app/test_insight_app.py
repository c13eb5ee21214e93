"""AppTest for the insight controls: bootstrap bands and outlier clipping on Layer curves, plan stability on
Prune preview, CSV/PNG buttons under every chart, and the insight pages (embedded model, tiny settings)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]
T = 300


@pytest.fixture(scope="module")
def calibrated():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=T)
    at.run()
    at.number_input(key="samples").set_value(4)
    at.number_input(key="seq_len").set_value(32)
    at.button(key="calibrate").click().run()
    assert not at.exception and not at.error
    return at


def arr(v):
    from simdiff_core.export.figures import plain_array

    return list(np.asarray(plain_array(v)).tolist())


def _spec(at, i=0):
    from tests.support.apptest_figures import figures

    return figures(at)[i]


def test_curves_draw_bands_clip_outliers_and_offer_csv_png(calibrated):
    from simdiff_core.analysis.uncertainty import bands

    at = calibrated
    at.switch_page("pages/Layer_curves.py").run()
    assert not at.exception and not at.error
    scores = at.session_state["scores"]
    ref = bands(scores, level=0.9)
    spec = _spec(at)
    names = [t.get("name") for t in spec["data"]]
    assert names.count("90% bootstrap band") == 3 and names.count("band hi") == 3
    lo = [t for t in spec["data"] if t.get("name") == "90% bootstrap band"][0]
    assert np.allclose(arr(lo["y"]), ref["cosine"]["lo"])
    # clipped MSSD axis: the outlier blocks (SmolLM2: 0 and 11) are written at the top, the rest fill the axis
    mssd = [l["mssd_rel"] for l in scores.layers]
    notes = [a["text"] for a in spec["layout"]["annotations"] if a["text"].startswith("▲")]
    assert f"▲ {max(mssd):.3g}" in notes
    top = spec["layout"]["yaxis2"]["range"][1]
    assert top < max(mssd) and sorted(mssd)[-3] < top
    labels = [b.label for b in at.get("download_button")]
    assert labels.count("CSV") == labels.count("PNG") >= 3  # curves, fused bars, heatmaps: every chart
    at.select_slider(key="band_level").set_value(0.8).run()
    assert "80% bootstrap band" in [t.get("name") for t in _spec(at)["data"]]
    at.toggle(key="show_bands").set_value(False).run()
    assert not any(t.get("legendgroup") == "band" for t in _spec(at)["data"])
    at.toggle(key="clip_outliers").set_value(False).run()
    assert "range" not in _spec(at)["layout"]["yaxis2"]
    at.toggle(key="log_mssd").set_value(True).run()
    lay = _spec(at)["layout"]
    assert lay["yaxis2"]["type"] == "log" and lay["yaxis3"]["type"] == "log" and not at.exception


def test_preview_shows_plan_stability_matching_the_library(calibrated):
    from tests.support.apptest_figures import figures
    from simdiff_core.pruning.stability import plan_stability

    at = calibrated
    at.switch_page("pages/Prune_preview.py").run()
    assert not at.exception and not at.error
    scores, plan = at.session_state["scores"], at.session_state["plan"]
    ref = plan_stability(scores, plan.criterion, num=plan.num_removed, alpha=plan.alpha, beta=0.5)
    msg = (at.success[0].value if ref.stable else at.warning[0].value)
    assert ("Stable plan" if ref.stable else f"Unstable plan: blocks {ref.unstable}") in msg
    spec = [f for f in figures(at) if "stability" in json.dumps(f)][0]
    shown = spec["data"][0]["y"]
    assert all(shown[i] == pytest.approx(max(ref.frequency[i], 0.015 if i in ref.removed else 0)) for i in range(30))
    at.number_input(key="_w_num").set_value(3).run()
    assert not at.exception
    ref3 = plan_stability(scores, plan.criterion, num=3, alpha=plan.alpha, beta=0.5)
    spec = [f for f in figures(at) if "stability" in json.dumps(f)][0]
    assert [i for i, c in enumerate(spec["data"][0]["marker"]["color"]) if c == "#e11d48"] == ref3.removed


def test_sensitivity_page_scores_two_sources_and_reports_the_library_numbers(calibrated):
    from simdiff_core.pruning.sensitivity import sensitivity

    at = calibrated
    at.switch_page("pages/Calibration_sensitivity.py").run()
    assert not at.exception and at.info  # nothing scored yet
    at.multiselect(key="sens_sources").set_value(["WikiText-2 (shipped)", "Dialogue sample (shipped, CC0)"])
    at.number_input(key="sens_samples").set_value(3)
    at.number_input(key="sens_seq_len").set_value(32)
    at.button(key="sens_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    runs = at.session_state["sens_runs"]["runs"]
    assert list(runs) == ["WikiText-2 (shipped)", "Dialogue sample (shipped, CC0)"]
    assert all(r.calibration["samples"] == 3 and r.calibration["seq_len"] == 32 for r in runs.values())
    assert "dialogue" in runs["Dialogue sample (shipped, CC0)"].calibration["source"]
    num = max(1, round(at.session_state["ratio"] * 30))  # the Prune preview's current count
    rep = sensitivity(runs, "simdiff", num=num, alpha=at.session_state["alpha"], beta=0.5)
    assert at.metric[1].value == f"{len(rep.agreed)} of {num}"
    assert at.metric[0].value == f"{min(rep.rho.values()):.3f}"
    assert at.metric[2].value == str(len(rep.flips))
    text = (at.warning[0].value if rep.flips else at.success[0].value)
    assert all(f"block {b}" in text for b in rep.flips)
    at.selectbox(key="sens_metric").set_value("cosine").run()
    spec = _spec(at)
    lines = [t for t in spec["data"] if t.get("mode") == "lines+markers"]
    assert [t["name"] for t in lines] == list(runs)
    assert np.allclose(arr(lines[1]["y"]), [l["cosine"] for l in runs["Dialogue sample (shipped, CC0)"].layers])
    at.multiselect(key="sens_sources").set_value(["WikiText-2 (shipped)"])
    at.button(key="sens_run").click().run()
    assert [e.value for e in at.error] == ["choose at least two calibration sources"]


def test_drill_down_page_lists_the_library_top_tokens(calibrated):
    from simdiff_core.analysis.drilldown import drill_down

    at = calibrated
    at.switch_page("pages/Block_drill_down.py").run()
    assert not at.exception
    scores = at.session_state["scores"]
    assert at.selectbox(key="dd_block").value == int(np.argmax([l["mssd_rel"] for l in scores.layers]))
    at.selectbox(key="dd_block").set_value(3)
    at.number_input(key="dd_windows").set_value(2)
    at.number_input(key="dd_top").set_value(5)
    at.button(key="dd_run").click().run()
    assert not at.exception and not at.error
    d = at.session_state["drill"]["result"]
    lm = at.session_state["_lm_pin"][1]
    ref = drill_down(lm, at.session_state["calib_ids"], 3, windows=2, top=5)
    assert [(t["window"], t["position"]) for t in d.top] == [(t["window"], t["position"]) for t in ref.top]
    table = "".join(h.proto.body for h in at.get("html") if "sd-drill" in h.proto.body)
    assert table.count("<mark>") == 5 and f"{ref.top[0]['value']:.4g}" in table


def test_compare_runs_pins_imports_validates_and_shares_the_colour_scale(calibrated, tmp_path):
    at = calibrated
    at.switch_page("pages/Compare_runs.py").run()
    assert not at.exception
    at.text_input(key="pin_name").set_value("base")
    at.button(key="pin_btn").click().run()
    assert not at.exception and list(at.session_state["pinned_runs"]) == ["base"]
    # files from elsewhere come in through the Runs page's import (validated, one error line each)
    at.switch_page("pages/Runs.py").run()
    for name, data in (("bad.json", b"{not json"), ("plan.json", b'{"removed_layers": [1]}')):
        at.file_uploader(key="runs_import").set_value((name, data, "application/json")).run()
        at.button(key="runs_import_btn").click().run()
        assert len(at.error) == 1 and "\n" not in at.error[0].value and not at.exception, [e.value for e in at.error]
    # a saved scores.json of a 6-block model: overlaid on relative depth
    from simdiff_core.analysis.score import Scores

    sc = at.session_state["scores"]
    small = Scores("six", 6, [dict(l, index=i) for i, l in enumerate(sc.layers[:6])], matrices={
        "output_cosine": [[1.0 if i == j else -0.5 for j in range(6)] for i in range(6)]})
    at.file_uploader(key="runs_import").set_value(("s.json", json.dumps(small.to_dict()).encode(),
                                                   "application/json")).run()
    at.button(key="runs_import_btn").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.switch_page("pages/Compare_runs.py").run()
    six = [o for o in at.selectbox(key="run_b").options if o.startswith("run: six · ")]
    assert len(six) == 1
    at.selectbox(key="run_b").set_value(six[0]).run()
    assert at.toggle(key="runs_relative").value is True
    spec = _spec(at)
    xs = [arr(t["x"]) for t in spec["data"] if t.get("mode") == "lines+markers"]
    assert xs[0][-1] == 1 and xs[1][-1] == 1 and len(xs[0]) == 30 and len(xs[1]) == 6
    at.radio(key="runs_matrix").set_value("output_cosine").run()
    heat = [json.loads(c.proto.spec)["data"][0] for c in at.get("plotly_chart")[1:3]]
    assert heat[0]["zmin"] == heat[1]["zmin"] == -0.5 and heat[0]["zmax"] == heat[1]["zmax"]


def test_load_page_calibrates_on_a_shipped_sample():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=T)
    at.run()
    at.radio(key="calib_kind").set_value("Dialogue sample (shipped, CC0)")
    at.number_input(key="samples").set_value(2)
    at.number_input(key="seq_len").set_value(32)
    at.button(key="calibrate").click().run()
    assert not at.exception and not at.error
    assert "dialogue" in at.session_state["scores"].calibration["source"]
    assert len(at.session_state["scores"].windows["tokens"]) == 2


def test_compare_runs_scores_the_pruned_view_without_touching_the_model(calibrated):
    at = calibrated
    at.switch_page("pages/Compare_runs.py").run()
    lm = at.session_state["_lm_pin"][1]
    at.button(key="pin_pruned").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    plan = at.session_state["plan"]
    name = [n for n in at.session_state["pinned_runs"] if n.startswith("pruned")][0]
    pr = at.session_state["pinned_runs"][name]
    assert pr.num_layers == 30 - plan.num_removed and len(lm.blocks) == 30  # the shared model is unchanged
    # kept block j of the view sees the same input as original block kept[j] only before the first removal
    first_gone = plan.removed_layers[0]
    base = at.session_state["scores"].layers
    assert [l["cosine"] for l in pr.layers[:first_gone]] == pytest.approx([l["cosine"] for l in base[:first_gone]],
                                                                          rel=1e-5)


def test_sensitivity_and_pinned_runs_follow_the_sessions_position_0_choice():
    """Calibrated with position 0 excluded, the extra runs must exclude it too (they used to include it)."""
    from simdiff_core import make_windows, score_model
    from simdiff_core.data.text import load_text

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=T)
    at.run()
    at.checkbox(key="first_token").uncheck()
    at.number_input(key="samples").set_value(2)
    at.number_input(key="seq_len").set_value(32)
    at.button(key="calibrate").click().run()
    assert at.session_state["scores"].calibration["first_token"] == "excluded"
    at.switch_page("pages/Calibration_sensitivity.py").run()
    at.multiselect(key="sens_sources").set_value(["WikiText-2 (shipped)", "Code sample (shipped, CC0)"])
    at.number_input(key="sens_samples").set_value(2)
    at.number_input(key="sens_seq_len").set_value(32)
    at.button(key="sens_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    runs = at.session_state["sens_runs"]["runs"]
    assert {r.calibration["first_token"] for r in runs.values()} == {"excluded"}
    lm = at.session_state["_lm_pin"][1]
    ids = make_windows(lm.tokenizer, load_text("shipped:code", purpose="calib"), 2, 32)
    solo = score_model(lm, ids, first_token=False)
    assert [l["cosine"] for l in runs["Code sample (shipped, CC0)"].layers] == \
        pytest.approx([l["cosine"] for l in solo.layers], rel=1e-6, abs=1e-7)
    at.switch_page("pages/Compare_runs.py").run()
    at.button(key="pin_pruned").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    pinned = [r for n, r in at.session_state["pinned_runs"].items() if n.startswith("pruned")]
    assert pinned and pinned[0].calibration["first_token"] == "excluded"
