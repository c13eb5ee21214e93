"""Layer curves page: the linear-replaceability curve with its band, and the span heatmap on request."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.support.apptest_figures import figures

ROOT = Path(__file__).resolve().parents[2]
T = 300


def _arr(v):
    import base64

    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return a.reshape([int(n) for n in str(v["shape"]).split(",")]).tolist() if "shape" in v else a.tolist()
    return list(v)


def _charts(at) -> list[dict]:
    return figures(at)  # st.plotly_chart and live-component charts alike (Layer curves draws all with the latter)


def _titled(at, prefix: str) -> dict | None:
    return next((c for c in _charts(at) if c["layout"].get("title", {}).get("text", "").startswith(prefix)), None)


@pytest.mark.slow
def test_linear_curve_band_and_span_heatmap():
    from simdiff_core.analysis.uncertainty import bands

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=T)
    at.run()
    at.number_input(key="samples").set_value(4)
    at.number_input(key="seq_len").set_value(64)
    at.button(key="calibrate").click().run()
    at.switch_page("pages/Layer_curves.py").run()
    assert not at.exception and not at.error
    scores = at.session_state["scores"]
    fig = _titled(at, "Linear replaceability:")
    assert fig is not None
    line = next(t for t in fig["data"] if t.get("name") == "linear replaceability")
    y = _arr(line["y"])
    assert np.isnan(y[0]) or y[0] is None
    assert y[1:] == pytest.approx([l["linear"] for l in scores.layers[1:]])
    band = next(t for t in fig["data"] if t.get("name") == "bootstrap band")
    ref = bands(scores, level=0.9)["linear"]
    assert _arr(band["y"])[:29] == pytest.approx(ref["hi"][1:])
    # 4 x 64 tokens < d = 576: the page says the fit is in-sample optimistic
    assert any("optimistic" in c.value for c in at.caption)

    assert _titled(at, "Linear replaceability across") is None       # its own pass: only on request
    at.button(key="linear_spans_btn").click().run()
    assert not at.exception and not at.error
    heat = _titled(at, "Linear replaceability across")
    assert heat is not None
    z = np.array(_arr(heat["data"][0]["z"]), dtype=float)
    assert z.shape == (29, 30)                                        # n = 1..29 (n = 30 would need a = 0)
    np.testing.assert_allclose(z[0, 1:], [l["linear"] for l in scores.layers[1:]], atol=1e-6)
