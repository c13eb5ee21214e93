"""AppTest for the Ground truth & report page on the embedded model: empty state, damage, agreement, set damage."""

from __future__ import annotations

from tests.support.repo import ROOT


# ------------------------------------------------------------------ app page
def test_ground_truth_page_measures_damage_and_offers_the_report():
    from streamlit.testing.v1 import AppTest

    page = "pages/Ground_truth_and_report.py"
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    at.switch_page(page).run()
    assert not at.exception and at.info and not at.get("plotly_chart")  # empty state: guard, no charts
    at.switch_page("pages/Load_and_calibrate.py").run()
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
