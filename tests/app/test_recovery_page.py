"""AppTest for the Recovery page: trains LoRA on the pruned model and compares the models."""

from __future__ import annotations

import json

import pytest

from tests.support.repo import ROOT


def test_recovery_page_trains_and_compares_models():
    """The page: recovery with a live loss curve, then accuracy for dense / pruned / recovered."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.run()
    at.number_input(key="samples").set_value(4)
    at.number_input(key="seq_len").set_value(64)
    at.button(key="calibrate").click().run()
    at.switch_page("pages/5_Recovery_and_accuracy.py").run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    at.number_input(key="rec_steps").set_value(3)
    at.number_input(key="rec_windows").set_value(4)
    at.number_input(key="rec_seq_len").set_value(32)
    at.number_input(key="rec_eval_windows").set_value(1)
    at.number_input(key="rec_eval_seq_len").set_value(64)
    at.button(key="run_recovery").click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    labels = [m.label for m in at.metric]
    assert "Perplexity, recovered" in labels
    curve = json.loads(at.get("plotly_chart")[-1].proto.spec)
    assert len(curve["data"][0]["x"]) == 3 or "bdata" in curve["data"][0]["x"]
    at.multiselect(key="acc_tasks").set_value(["arc_easy"])
    at.number_input(key="acc_limit").set_value(2)
    at.button(key="run_accuracy").click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    table = at.dataframe[0].value
    assert list(table.index) == ["dense", "pruned", "recovered"]
    assert {"mc_science", "average", "% retained", "ppl"} <= set(table.columns)
    assert table.loc["dense", "% retained"] == pytest.approx(100.0)
    assert (table["source"] == "offline").all()
