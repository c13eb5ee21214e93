"""The Load page's "stream blocks from disk" option: scores equal the in-memory path, no model is kept."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.support.repo import ROOT
from tests.support.builders import save_model as _save_model


def test_streamed_calibration_in_the_app_equals_in_memory(tmp_path, tokenizer):
    from simdiff_core import load_model, make_windows, score_model

    d = tmp_path / "m"
    _save_model(d, num_layers=6, hidden=64, inter=128, vocab=len(tokenizer), tokenizer=tokenizer)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    at.selectbox(key="src_kind").set_value("Local model directory").run()
    at.text_input(key="src_text").set_value(str(d)).run()
    at.checkbox(key="stream").check().run()
    at.number_input(key="samples").set_value(2)
    at.number_input(key="seq_len").set_value(32)
    at.button(key="calibrate").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.session_state["model_spec"] is None  # nothing held in memory
    streamed = at.session_state["scores"]
    assert streamed.meta["stream"]["peak_weights_mb"] < streamed.meta["stream"]["model_mb"]
    assert any("streamed from disk" in h.value for h in at.subheader)

    lm = load_model(str(d), device="cpu", dtype="float32")
    ref = score_model(lm, make_windows(lm.tokenizer, "wikitext2", 2, 32))
    for a, b in zip(streamed.layers, ref.layers):
        assert a["cosine"] == pytest.approx(b["cosine"], rel=1e-5)
        assert a["mssd"] == pytest.approx(b["mssd"], rel=1e-5)

    at.switch_page("pages/Prune_preview.py").run()  # the preview works from the scores alone
    assert not at.exception and not at.error
    assert at.session_state["plan"].num_removed >= 1
