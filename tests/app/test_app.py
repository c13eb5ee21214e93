"""AppTest tests for every page of the Streamlit app, driving the real widgets on the embedded model.

The model load is shared across tests through ``st.cache_resource`` (process-wide), so only the
first test pays for it. Calibration uses 4 x 64 tokens to stay fast on 2 CPU cores.
"""

from __future__ import annotations

import base64
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.support.apptest_figures import figures, html_bodies

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
CURVES, PREVIEW, EXPORT = "pages/Layer_curves.py", "pages/Prune_preview.py", "pages/Export_and_evaluate.py"
T = 300  # seconds per run: model work on a shared 2-core box


def fresh(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=T)
    at.run()
    if page:
        at.switch_page(page).run()
    return at


def errors(at) -> list[str]:
    return [e.value for e in at.error]


def calibrate(at, samples=4, seq_len=64):
    at.number_input(key="samples").set_value(samples)
    at.number_input(key="seq_len").set_value(seq_len)
    at.button(key="calibrate").click().run()
    return at


@pytest.fixture(scope="module")
def calibrated():
    at = calibrate(fresh())
    assert not at.exception, at.exception
    assert not errors(at), errors(at)
    return at


def figure(at, i: int) -> dict:
    return figures(at)[i]


def arr(v) -> list:
    """A trace array from figure JSON: plotly 6+ writes numpy arrays as base64 typed arrays."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        if "shape" in v:
            a = a.reshape([int(n) for n in str(v["shape"]).split(",")])
        return a.tolist()
    return list(v)


@pytest.mark.parametrize("page", [None, CURVES, PREVIEW, EXPORT])
def test_every_page_has_an_empty_state_with_a_link(page):
    at = fresh(page)
    assert not at.exception
    assert at.info, "an empty state should explain what to do"
    if page:  # the guard links back to the load page and stops before any chart
        assert any(p.proto.label == "Go to Load & calibrate" for p in at.get("page_link"))
        assert not figures(at)


def test_bad_inputs_show_one_line_errors_and_the_app_keeps_working(calibrated):
    at = fresh()
    at.selectbox(key="src_kind").set_value("Local model directory").run()
    at.text_input(key="src_text").set_value("./no/such/model-dir").run()
    at.button(key="calibrate").click().run()
    assert not at.exception
    assert any("no such model directory" in e for e in errors(at)), errors(at)

    at.selectbox(key="src_kind").set_value("Embedded SmolLM2-135M (default, offline)").run()
    at.radio(key="calib_kind").set_value("Paste text").run()
    at.text_area(key="calib_text").set_value("   ").run()
    at.button(key="calibrate").click().run()
    assert any("text is empty" in e for e in errors(at)), errors(at)

    at.text_area(key="calib_text").set_value("Just a few words of text.").run()
    calibrate(at, samples=4, seq_len=64)
    assert any("window(s)" in e and "fit" in e for e in errors(at)), errors(at)
    assert at.session_state["scores"] is None  # nothing half-computed was stored
    # a failing run leaves the app usable: the real calibration still works afterwards
    at.radio(key="calib_kind").set_value("WikiText-2 (shipped)").run()
    calibrate(at)
    assert not errors(at) and at.session_state["scores"] is not None
    for e in errors(at):
        assert "\n" not in e and "Traceback" not in e


def test_load_and_calibrate_shows_the_model_and_stores_scores(calibrated):
    at = calibrated
    scores = at.session_state["scores"]
    assert scores.num_layers == 30
    assert tuple(at.session_state["calib_ids"].shape) == (4, 64)
    assert [m.value for m in at.metric][:1] == ["30"]
    assert any("Calibrated on 4 × 64" in s.value for s in at.success)
    # every per-block metric is a finite number
    assert all(0 < l["mssd"] < float("inf") and -1 <= l["cosine"] <= 1 for l in scores.layers)


def test_layer_curves_follow_the_controls_without_recomputing(calibrated):
    at = calibrated
    at.switch_page(CURVES).run()
    assert not at.exception and not errors(at)
    scores = at.session_state["scores"]
    # linear replaceability + the heatmaps: a slider move does not change them
    # every chart of the page is a live-component chart (one plotly.js in the browser), none an st.plotly_chart
    assert len(at.get("plotly_chart")) == 0
    assert len(figures(at)) == 6  # curves, fused score (updated in place: ui/live_chart.py), linear, 3 heatmaps
    curves = figure(at, 0)
    names = {t.get("xaxis", "x") for t in curves["data"]}
    assert names == {"x", "x2", "x3"}, "cosine, MSSD and MASD side by side"
    plan = at.session_state["plan"]
    # the dropped blocks: shaded columns on each panel (shapes, so a move restyles no trace)
    assert not [t for t in curves["data"] if t.get("name") == "dropped"]
    for ax in ("x", "x2", "x3"):
        runs = [s for s in curves["layout"]["shapes"] if s.get("name") == "dropped" and s["xref"] == ax]
        covered = sorted(i for s in runs for i in range(round(s["x0"] + 0.5), round(s["x1"] - 0.5) + 1))
        assert covered == plan.removed_layers, ax
    bars = figure(at, 1)  # the removed blocks' bars are painted red by shapes of the bars' own heights
    red = [s for s in bars["layout"]["shapes"] if s.get("name") == "dropped"]
    assert sorted(round((s["x0"] + s["x1"]) / 2) for s in red) == plan.removed_layers
    assert all(s["y1"] == pytest.approx(arr(bars["data"][0]["y"])[round((s["x0"] + s["x1"]) / 2)]) for s in red)
    assert len(plan.removed_layers) == round(0.25 * 30)
    # cosine panel shows the measured cosines
    cos_trace = next(t for t in curves["data"] if t.get("name") == "cos(x, y)")  # after its bootstrap band
    assert arr(cos_trace["y"]) == pytest.approx([l["cosine"] for l in scores.layers])

    at.toggle(key="log_mssd").set_value(True).run()
    assert figure(at, 0)["layout"]["xaxis2"] and figure(at, 0)["layout"]["yaxis2"]["type"] == "log"

    before = arr(figure(at, 1)["data"][0]["y"])
    at.slider(key="_w_alpha").set_value(1.0).run()
    after = arr(figure(at, 1)["data"][0]["y"])
    assert after != before
    # alpha = 1 is the cosine-only (BI) ranking
    bi = [l["bi"] for l in scores.layers]
    assert sorted(range(30), key=lambda i: after[i]) == sorted(range(30), key=lambda i: bi[i])
    assert at.session_state["scores"] is scores, "sliders must not recompute scores"

    at.toggle(key="_w_scale_free").set_value(False).run()
    raw = figure(at, 0)["data"]
    mssd_trace = next(t for t in raw if t.get("xaxis") == "x2" and t.get("name") != "dropped"
                      and t.get("legendgroup") != "band")
    assert arr(mssd_trace["y"]) == pytest.approx([l["mssd"] for l in scores.layers])
    at.toggle(key="_w_scale_free").set_value(True).run()
    at.slider(key="_w_alpha").set_value(0.5).run()
    assert not at.exception


def test_measured_damage_appears_as_a_fourth_curve(calibrated):
    at = calibrated
    at.session_state["damage"] = [0.01 * i for i in range(30)]
    at.switch_page(CURVES).run()
    # a value without the current calibration's tag is never drawn (ui/state.py: result())
    assert {t.get("xaxis", "x") for t in figure(at, 0)["data"]} == {"x", "x2", "x3"}
    at.session_state["_tags"] = {**at.session_state["_tags"], "damage": at.session_state["calib_tag"]}
    at.run()
    assert not at.exception and not errors(at)
    curves = figure(at, 0)
    assert {t.get("xaxis", "x") for t in curves["data"]} == {"x", "x2", "x3", "x4"}
    dmg = next(t for t in curves["data"] if t.get("xaxis") == "x4" and t.get("name") != "dropped")
    assert arr(dmg["y"]) == pytest.approx([0.01 * i for i in range(30)])
    at.session_state["damage"] = None
    at.run()
    assert {t.get("xaxis", "x") for t in figure(at, 0)["data"]} == {"x", "x2", "x3"}


def test_prune_preview_updates_instantly_and_reports_impossible_plans(calibrated):
    at = calibrated
    at.switch_page(PREVIEW).run()
    assert not at.exception and not errors(at)
    at.slider(key="_w_ratio").set_value(0.2).run()
    plan = at.session_state["plan"]
    assert plan.num_removed == 6 and at.number_input(key="_w_num").value == 6
    assert 0 not in plan.removed_layers and 29 not in plan.removed_layers
    table = at.dataframe[0].value
    assert sorted(table.index.tolist()) == plan.removed_layers
    html = html_bodies(at)
    assert html.count("sd-block sd-gone") == 6 and html.count('class="sd-block"') == 24
    speed = next(m for m in at.metric if m.label == "Est. speedup")
    assert 1.0 < float(speed.value.rstrip("×")) < 30 / 24 + 1e-6

    at.number_input(key="_w_num").set_value(9).run()
    assert at.session_state["plan"].num_removed == 9
    assert at.slider(key="_w_ratio").value == pytest.approx(0.3)

    at.selectbox(key="_w_criterion").set_value("cosine").run()
    cos_plan = at.session_state["plan"]
    assert cos_plan.criterion == "cosine"
    overlap = next(f for f in figures(at) if "criterion removes" in json.dumps(f))
    assert overlap["data"][0]["y"][0] == "cosine"
    z = arr(overlap["data"][0]["z"])
    assert [i for i, v in enumerate(z[0]) if v] == cos_plan.removed_layers

    at.number_input(key="_w_num").set_value(30).run()
    assert not at.exception
    assert any("would leave none" in e for e in errors(at)), errors(at)
    at.number_input(key="_w_num").set_value(7).run()
    at.selectbox(key="_w_criterion").set_value("simdiff").run()
    assert not errors(at)


def test_auto_alpha_picks_a_calibration_best_fusion_never_worse_than_cosine(calibrated):
    from simdiff_core import make_plan, perplexity, pruned_model

    at = calibrated
    at.switch_page(PREVIEW).run()
    at.selectbox(key="_w_criterion").set_value("simdiff").run()
    at.number_input(key="_w_num").set_value(4).run()
    at.button(key="auto_alpha_btn").click().run()
    assert not at.exception and not errors(at), errors(at)
    auto = at.session_state["auto_alpha"]
    assert auto["k"] == 4 and at.session_state["alpha"] == auto["alpha"]
    assert at.slider(key="_w_alpha").value == pytest.approx(auto["alpha"])
    assert any("Auto α chose" in c.value for c in at.caption)
    # the chosen plan is what the preview now shows, and it is no worse than cosine on calibration
    plan = at.session_state["plan"]
    scores, ids, lm = at.session_state["scores"], at.session_state["calib_ids"], at.session_state["_lm_pin"][1]
    cos = make_plan(scores, "cosine", num=4)
    cos_ppl = perplexity(pruned_model(lm, cos.kept_layers), ids)["ppl"]
    chosen_ppl = perplexity(pruned_model(lm, plan.kept_layers), ids)["ppl"]
    # Two float32 evaluations of one plan (the evaluator's vocabulary-sliced head summed in float64,
    # the model's full logits here) differ by up to ~3e-5 relative; near-tied plans need that slack.
    tol = 5e-5
    assert auto["ppl"] == pytest.approx(chosen_ppl, rel=tol)
    assert chosen_ppl <= cos_ppl * (1 + tol)
    assert auto["ppl"] <= cos_ppl * (1 + tol)


def test_export_page_evaluates_and_exports_a_loadable_checkpoint(calibrated, tmp_path, monkeypatch):
    monkeypatch.setenv("SIMDIFF_EXPORT_DIR", str(tmp_path))
    at = calibrated
    at.switch_page(EXPORT).run()
    assert not at.exception and not errors(at)
    plan = at.session_state["plan"]
    k = plan.num_removed
    at.number_input(key="eval_windows").set_value(2)
    at.number_input(key="eval_seq_len").set_value(64)
    at.checkbox(key="do_lat").uncheck()
    at.button(key="evaluate").click().run()
    assert not at.exception and not errors(at), errors(at)
    m = {x.label: x.value for x in at.metric}
    dense, pruned = float(m["Perplexity, dense"]), float(m["Perplexity, pruned"])
    assert 1 < dense < pruned  # removing 7 blocks hurts
    assert any("WikiText-2" in c.value and "2 non-overlapping windows x 64" in c.value for c in at.caption)
    assert len(at.info) >= 2  # the two generation samples, side by side

    at.text_input(key="export_name").set_value("app-test-export")
    at.button(key="export").click().run()
    assert not at.exception and not errors(at), errors(at)
    out = tmp_path / "app-test-export"
    assert (out / "config.json").is_file() and out.with_suffix(".zip").is_file()
    report = json.loads((out / "simdiff_report.json").read_text())
    assert report["evaluation"]["ppl_pruned"] == pytest.approx(pruned, rel=1e-3)  # one shape: see tests/common/test_records.py
    assert report["plan"]["removed_layers"] == plan.removed_layers
    with zipfile.ZipFile(out.with_suffix(".zip")) as z:
        assert "app-test-export/model.safetensors" in z.namelist()
    assert at.session_state["exports"][-1]["removed"] == k

    from transformers import AutoModelForCausalLM

    m2 = AutoModelForCausalLM.from_pretrained(out)
    assert m2.config.num_hidden_layers == 30 - k

    # exporting again under the same name is refused with one line, nothing overwritten
    at.button(key="export").click().run()
    assert any("already exists" in e for e in errors(at))


def _live(at) -> list[dict]:
    """The data of the live elements (ui/live_chart.py) the page sent in its last run, in page order."""
    return [d for d in (json.loads(e.proto.json) for e in at.get("bidi_component")) if "live" in d]


def test_live_slider_elements_carry_the_plan_and_send_each_payload_once(calibrated):
    from ui import live_slider

    at = calibrated
    at.switch_page(PREVIEW).run()
    at.selectbox(key="_w_criterion").set_value("simdiff").run()
    at.number_input(key="_w_num").set_value(5).run()
    first = _live(at)
    plan = at.session_state["plan"]
    # the block stack, the stability chart and the overlap chart, all bound to one payload and this plan
    assert len(first) == 3 and len({d["live"]["id"] for d in first}) == 1
    assert all(d["live"]["state"] == {"k": 5, "a": ""} for d in first)
    assert first[0]["live"]["removed"] == plan.removed_layers
    at.number_input(key="_w_num").set_value(6).run()
    again = _live(at)
    assert {d["live"]["id"] for d in again} == {first[0]["live"]["id"]}  # same settings: same payload...
    assert not any("payload" in d for d in again)                      # ...not sent again on a move
    assert all(d["live"]["state"]["k"] == 6 for d in again)
    at.toggle(key="_w_keep_last").set_value(False).run()  # settings not seen before in this session
    moved = _live(at)
    sent = [d["payload"] for d in moved if "payload" in d]
    assert len(sent) == 1 and moved[0]["live"]["id"] != first[0]["live"]["id"]  # new settings: sent once
    payload = json.loads(sent[0])
    assert not any(k.startswith("_") for k in payload) and payload["id"] == moved[0]["live"]["id"]
    assert live_slider.removed(payload, 6) == at.session_state["plan"].removed_layers

    at.switch_page(CURVES).run()
    curves = _live(at)
    assert [d["live"]["chart"] for d in curves] == ["curves", "simdiff"]
    assert all(d["live"]["state"] == {"k": 6, "a": f"{at.session_state['alpha']:.2f}"} for d in curves)
    at.switch_page(PREVIEW).run()
    at.toggle(key="_w_keep_last").set_value(True).run()
    assert not at.exception and not errors(at)
