"""AppTest for the Method shoot-out page on the embedded model."""

from __future__ import annotations

import json
from pathlib import Path


# ------------------------------------------------------------------ app page
def test_shootout_page_runs(embedded_lm):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "app.py"), default_timeout=300)
    at.run()
    at.number_input(key="samples").set_value(2)
    at.number_input(key="seq_len").set_value(64)
    at.button(key="calibrate").click().run()
    at.switch_page("pages/Shootout.py").run()
    assert not at.exception, at.exception
    at.multiselect(key="so_methods").set_value(["oneshot:cosine", "block"])
    at.number_input(key="so_eval_windows").set_value(1)
    at.number_input(key="so_eval_seq_len").set_value(64)
    at.button(key="run_shootout").click().run()
    assert not at.exception, at.exception
    assert not [e.value for e in at.error]
    charts = at.get("plotly_chart")
    assert len(charts) == 2
    bars = json.loads(charts[0].proto.spec)["data"][0]
    assert list(bars["x"]) == ["dense", "oneshot:cosine", "block:angular_window"]
    res = at.session_state["shootout"]
    assert [r["method"] for r in res["rows"]] == ["dense", "oneshot", "block"] and res["k"] == 8
