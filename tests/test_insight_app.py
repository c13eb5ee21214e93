"""AppTest for the insight controls: bootstrap bands and outlier clipping on Layer curves, plan stability on
Prune preview, CSV/PNG buttons under every chart, and the insight pages (embedded model, tiny settings)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
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


def _spec(at, i=0):
    return json.loads(at.get("plotly_chart")[i].proto.spec)


def test_curves_draw_bands_clip_outliers_and_offer_csv_png(calibrated):
    from simdiff_core.uncertainty import bands

    at = calibrated
    at.switch_page("pages/1_Layer_curves.py").run()
    assert not at.exception and not at.error
    scores = at.session_state["scores"]
    ref = bands(scores, level=0.9)
    spec = _spec(at)
    names = [t.get("name") for t in spec["data"]]
    assert names.count("90% bootstrap band") == 3 and names.count("band hi") == 3
    lo = [t for t in spec["data"] if t.get("name") == "90% bootstrap band"][0]
    assert np.allclose(lo["y"], ref["cosine"]["lo"])
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
    from simdiff_core.uncertainty import plan_stability

    at = calibrated
    at.switch_page("pages/2_Prune_preview.py").run()
    assert not at.exception and not at.error
    scores, plan = at.session_state["scores"], at.session_state["plan"]
    ref = plan_stability(scores, plan.criterion, num=plan.num_removed, alpha=plan.alpha, beta=0.5)
    msg = (at.success[0].value if ref.stable else at.warning[0].value)
    assert ("Stable plan" if ref.stable else f"Unstable plan: blocks {ref.unstable}") in msg
    spec = [json.loads(c.proto.spec) for c in at.get("plotly_chart") if "stability" in c.proto.spec][0]
    shown = spec["data"][0]["y"]
    assert all(shown[i] == pytest.approx(max(ref.frequency[i], 0.015 if i in ref.removed else 0)) for i in range(30))
    at.number_input(key="_w_num").set_value(3).run()
    assert not at.exception
    ref3 = plan_stability(scores, plan.criterion, num=3, alpha=plan.alpha, beta=0.5)
    spec = [json.loads(c.proto.spec) for c in at.get("plotly_chart") if "stability" in c.proto.spec][0]
    assert [i for i, c in enumerate(spec["data"][0]["marker"]["color"]) if c == "#e11d48"] == ref3.removed
