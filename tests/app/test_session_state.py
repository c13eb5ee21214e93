"""Session state never shows a stale result (issue 18): every calibration or model change resets
every result, results carry the tag of the calibration they came from, and each page is checked.

Every result is produced for real by its page (auto α, evaluation, shoot-out, recovery, accuracy,
damage, set damage) on tiny saved models, so the test sees exactly what a user would.
"""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from tests.support.apptest_figures import figures
from tests.support.repo import ROOT

APP = str(ROOT / "app.py")
CURVES, PREVIEW, EXPORT = "pages/Layer_curves.py", "pages/Prune_preview.py", "pages/Export_and_evaluate.py"
SHOOTOUT, RECOVERY, TRUTH = "pages/Shootout.py", "pages/Recovery_and_accuracy.py", "pages/Ground_truth_and_report.py"
LOAD = "pages/Load_and_calibrate.py"
SENS, DRILL = "pages/Calibration_sensitivity.py", "pages/Block_drill_down.py"
TEXT = "The river rose in the spring and the town moved its market to the hill above the old bridge. " * 40


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
    from tests.support.tiny import tiny_model

    d = tmp_path_factory.mktemp("statemodels")
    for name, family, n, seed in (("a", "llama", 5, 0), ("b", "qwen2", 6, 1)):
        tiny_model(family, n, seed).save_pretrained(d / name)
        tokenizer.save_pretrained(d / name)
    return {"a": str(d / "a"), "b": str(d / "b")}


def ok(at):
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def calibrate(at, path, text=TEXT):
    at.switch_page(LOAD).run()
    at.selectbox(key="src_kind").set_value("Local model directory").run()
    at.text_input(key="src_text").set_value(path).run()
    at.radio(key="calib_kind").set_value("Paste text").run()
    at.text_area(key="calib_text").set_value(text).run()
    at.number_input(key="samples").set_value(2)
    at.number_input(key="seq_len").set_value(32)
    at.button(key="calibrate").click().run()
    return ok(at)


def fill_every_result(at):
    """Run every page's computation once, through its widgets."""
    from ui.state import DEFAULTS, RESULT_KEYS

    at.switch_page(PREVIEW).run()
    at.selectbox(key="_w_criterion").set_value("simdiff").run()
    ok(at.button(key="auto_alpha_btn").click().run())
    ok(at.button(key="estimate_repair").click().run())
    at.switch_page(EXPORT).run()
    at.number_input(key="eval_windows").set_value(1)
    at.number_input(key="eval_seq_len").set_value(32)
    at.checkbox(key="do_gen").uncheck()
    at.checkbox(key="do_lat").uncheck()
    ok(at.button(key="evaluate").click().run())
    at.switch_page(SHOOTOUT).run()
    at.multiselect(key="so_methods").set_value(["oneshot:cosine"])
    at.number_input(key="so_eval_windows").set_value(1)
    at.number_input(key="so_eval_seq_len").set_value(32)
    ok(at.button(key="run_shootout").click().run())
    at.switch_page(RECOVERY).run()
    at.number_input(key="rec_steps").set_value(1)
    at.number_input(key="rec_windows").set_value(2)
    at.number_input(key="rec_seq_len").set_value(32)
    at.number_input(key="rec_eval_windows").set_value(1)
    at.number_input(key="rec_eval_seq_len").set_value(32)
    at.text_input(key="rec_text").set_value("text:" + TEXT)
    ok(at.button(key="run_recovery").click().run())
    at.multiselect(key="acc_tasks").set_value(["arc_easy"])
    at.number_input(key="acc_limit").set_value(1)
    ok(at.button(key="run_accuracy").click().run())
    at.switch_page(TRUTH).run()
    at.number_input(key="dmg_windows").set_value(1)
    at.number_input(key="dmg_seq_len").set_value(16)
    ok(at.button(key="measure_damage").click().run())
    ok(at.button(key="measure_sets").click().run())
    at.switch_page(SENS).run()
    at.multiselect(key="sens_sources").set_value(["WikiText-2 (shipped)", "Dialogue sample (shipped, CC0)"])
    at.number_input(key="sens_samples").set_value(2)
    at.number_input(key="sens_seq_len").set_value(32)
    ok(at.button(key="sens_run").click().run())
    at.switch_page(CURVES).run()
    ok(at.button(key="linear_spans_btn").click().run())
    at.switch_page(DRILL).run()
    at.selectbox(key="dd_block").set_value(1)
    at.number_input(key="dd_windows").set_value(1)
    at.number_input(key="dd_top").set_value(5)
    ok(at.button(key="dd_run").click().run())
    for k in RESULT_KEYS:  # every result exists, so the reset below has something to clear
        if k == "stream_export":  # only a streamed model has it: its reset is checked in tests/app/test_app_stream.py
            continue
        assert at.session_state[k] is not None and at.session_state[k] != DEFAULTS[k], k


def shown_results(at) -> list[str]:
    """Which pages show a computed result right now (visits every page)."""
    shown = []
    ok(at.switch_page(CURVES).run())
    if not any("Add the measured ground truth" in c.value for c in at.caption):
        shown.append("curves: damage curve")
    if any("Linear replaceability across" in json.dumps(f) for f in figures(at)):
        shown.append("curves: linear span heatmap")
    ok(at.switch_page(PREVIEW).run())
    if any(c.value.startswith("Auto α chose") for c in at.caption):
        shown.append("preview: auto α")
    if any(m.label == "Calibration ppl, pruned" for m in at.metric):
        shown.append("preview: repaired-perplexity estimate")
    at.switch_page(EXPORT).run()
    at.number_input(key="eval_windows").set_value(1)  # the windows it was evaluated on
    ok(at.number_input(key="eval_seq_len").set_value(32).run())
    if any(m.label == "Perplexity, dense" for m in at.metric):
        shown.append("export: perplexity")
    ok(at.switch_page(SHOOTOUT).run())
    if len(at.dataframe) or not any("Run shoot-out" in i.value for i in at.info):
        shown.append("shootout: table")
    ok(at.switch_page(RECOVERY).run())
    if any(m.label == "Perplexity, recovered" for m in at.metric):
        shown.append("recovery: perplexities")
    table = at.dataframe[-1].value  # the page's last table (the honest-comparison table comes first when a recovery ran)
    if "average" in table.columns or table["ppl"].notna().any():
        shown.append("recovery: accuracy/ppl table")
    ok(at.switch_page(TRUTH).run())
    if not any("No damage measured yet" in i.value for i in at.info):
        shown.append("ground truth: damage")
    ok(at.switch_page(SENS).run())
    if not any("Pick two or more sources" in i.value for i in at.info):
        shown.append("sensitivity: runs")
    ok(at.switch_page(DRILL).run())
    at.selectbox(key="dd_block").set_value(1)
    at.number_input(key="dd_windows").set_value(1)
    ok(at.number_input(key="dd_top").set_value(5).run())
    if not any("Pick a block and press" in i.value for i in at.info):
        shown.append("drill-down: result")
    return shown


def assert_all_reset(at):
    from ui.state import DEFAULTS, RESULT_KEYS

    for k in RESULT_KEYS:
        if k != "plan":  # the preview plan is re-derived from the new scores on every page run
            assert at.session_state[k] == DEFAULTS[k], k
    assert shown_results(at) == []


@pytest.mark.slow
def test_recalibration_and_model_switch_clear_every_result_on_every_page(models):
    at = AppTest.from_file(APP, default_timeout=240)
    at.run()
    calibrate(at, models["a"])
    fill_every_result(at)
    assert len(shown_results(at)) == 11  # the check below can see each result

    calibrate(at, models["a"], text=TEXT.upper())  # same model, new calibration
    assert_all_reset(at)

    fill_every_result(at)
    calibrate(at, models["b"])  # another model
    assert_all_reset(at)
    assert at.session_state["scores"].num_layers == 6


def test_shootout_never_shows_a_table_from_another_calibration(models):
    at = AppTest.from_file(APP, default_timeout=240)
    at.run()
    calibrate(at, models["a"])
    at.switch_page(SHOOTOUT).run()
    at.multiselect(key="so_methods").set_value(["oneshot:cosine"])
    at.number_input(key="so_eval_windows").set_value(1)
    at.number_input(key="so_eval_seq_len").set_value(32)
    ok(at.button(key="run_shootout").click().run())
    old = at.session_state["shootout"]
    old_tag = (at.session_state["_tags"] if "_tags" in at.session_state else {}).get("shootout")
    assert old["num_layers"] == 5 and len(at.dataframe)

    calibrate(at, models["b"])
    ok(at.switch_page(SHOOTOUT).run())
    assert not len(at.dataframe) and any("Run shoot-out" in i.value for i in at.info)
    assert not any("5 blocks" in c.value for c in at.caption)

    # a result written late under the old calibration's tag (a run that began before the switch)
    # is not shown either: the tag, not the key, decides
    at.session_state["shootout"] = old
    at.session_state["_tags"] = {"shootout": old_tag}
    ok(at.run())
    assert not len(at.dataframe) and any("Run shoot-out" in i.value for i in at.info)
