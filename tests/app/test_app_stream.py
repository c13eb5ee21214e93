"""The Load page's "stream blocks from disk" option: scores equal the in-memory path, no model is kept."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.support.builders import checkpoint_tensors as _tensors
from tests.support.builders import save_model as _save_model
from tests.support.repo import ROOT


def _streaming_app(d) -> AppTest:
    """The app on Load & calibrate, set to stream local directory ``d`` with 2 x 32 calibration tokens."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    at.selectbox(key="src_kind").set_value("Local model directory").run()
    at.text_input(key="src_text").set_value(str(d)).run()
    at.checkbox(key="stream").check().run()
    at.number_input(key="samples").set_value(2)
    at.number_input(key="seq_len").set_value(32)
    return at


def test_streamed_calibration_in_the_app_equals_in_memory(tmp_path, tokenizer):
    from simdiff_core import load_model, make_windows, score_model

    d = tmp_path / "m"
    _save_model(d, num_layers=6, hidden=64, inter=128, vocab=len(tokenizer), tokenizer=tokenizer)
    at = _streaming_app(d)
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


def test_streamed_model_end_to_end_in_the_app(tmp_path, tokenizer, capsys):
    """A sharded checkpoint streamed in the app: the budget is checked first (one st.error line), the run
    opens in every score-only view, and Export writes the streamed prune (and the ridge repair) into the
    named directory, tensor for tensor what the CLI writes for the same plan and calibration."""
    import json

    import torch

    from simdiff_core.cli import main

    one, d = tmp_path / "one", tmp_path / "sharded"
    # blocks of 3.3 MB float32 (wide MLP): a 1 MB budget is below one block, 8 MB holds two (read-ahead on)
    model = _save_model(one, num_layers=6, hidden=128, inter=2048, vocab=len(tokenizer), tie=True, tokenizer=tokenizer)
    model.save_pretrained(d, max_shard_size="8MB")
    tokenizer.save_pretrained(d)
    assert (d / "model.safetensors.index.json").is_file()

    at = _streaming_app(d)
    at.number_input(key="stream_budget").set_value(1)
    at.button(key="calibrate").click().run()
    # a budget below one block: refused before any work, in one line
    assert not at.exception and len(at.error) == 1, [e.value for e in at.error]
    assert "too small" in at.error[0].value and "\n" not in at.error[0].value
    assert at.session_state["scores"] is None
    at.number_input(key="stream_budget").set_value(8)
    at.button(key="calibrate").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    scores = at.session_state["scores"]
    assert scores.meta["stream"]["budget_mb"] == 8 and scores.meta["stream"]["peak_weights_mb"] <= 8
    assert at.session_state["model_spec"] is None

    for page in ("pages/Layer_curves.py", "pages/Prune_preview.py", "pages/Runs.py", "pages/Compare_runs.py"):
        at.switch_page(page).run()
        assert not at.exception and not at.error, (page, [e.value for e in at.error])
    plan = at.session_state["plan"]
    assert plan.num_removed >= 1
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan.to_json())

    at.switch_page("pages/Export_and_evaluate.py").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.button(key="stream_export_go").click().run()  # no directory named: one line, nothing written
    assert len(at.error) == 1 and "output directory" in at.error[0].value
    for repair in ("none", "ridge"):  # ridge: lstsq refuses 2 x 32 fit tokens at d = 128
        out = tmp_path / f"app-{repair}"
        at.text_input(key="stream_out").set_value(str(out))
        at.selectbox(key="stream_out_dtype").set_value("bfloat16")
        at.selectbox(key="stream_repair").set_value(repair)
        at.button(key="stream_export_go").click().run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        assert any(str(out) in s.value for s in at.success)
        cli_out = tmp_path / f"cli-{repair}"
        argv = ["prune", "--model", str(d), "--plan", str(plan_file), "--out", str(cli_out), "--stream",
                "--out-dtype", "bfloat16", "--memory-budget-mb", "8"]
        if repair != "none":
            argv += ["--repair", repair, "--samples", "2", "--seq-len", "32", "--device", "cpu", "--dtype", "float32"]
        assert main(argv) == 0, capsys.readouterr().err
        capsys.readouterr()
        want, got = _tensors(cli_out), _tensors(out)
        assert sorted(got) == sorted(want) and len(got) > 0
        for k in want:
            assert got[k].dtype == torch.bfloat16 and torch.equal(got[k], want[k]), (repair, k)
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["num_hidden_layers"] == 6 - plan.num_removed
        assert json.loads((out / "simdiff_report.json").read_text())["plan"]["removed_layers"] == plan.removed_layers
        assert (out / "mergekit.yaml").is_file() and (out / "README.md").is_file()
    # "replace" replaces an earlier export, never another directory: one line, the directory untouched
    other = tmp_path / "not-an-export"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    at.text_input(key="stream_out").set_value(str(other))
    at.checkbox(key="stream_force").check()
    at.button(key="stream_export_go").click().run()
    assert len(at.error) == 1 and "not a SimDiff export" in at.error[0].value
    assert [p.name for p in other.iterdir()] == ["keep.txt"]
    at.text_input(key="stream_out").set_value(str(tmp_path / "app-none"))
    at.selectbox(key="stream_repair").set_value("none")
    at.button(key="stream_export_go").click().run()  # an earlier export is replaced
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert _tensors(tmp_path / "app-none").keys() == _tensors(tmp_path / "cli-none").keys()
    # a new calibration clears the written export's result, as it clears every other result
    assert at.session_state["stream_export"] is not None
    at.switch_page("pages/Load_and_calibrate.py").run()
    at.number_input(key="seq_len").set_value(16)
    at.button(key="calibrate").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.session_state["scores"].calibration["seq_len"] == 16  # it did recalibrate
    assert at.session_state["stream_export"] is None
    # the repair changed the folded weights (it is not the plain prune written twice)
    a, b = _tensors(tmp_path / "app-none"), _tensors(tmp_path / "app-ridge")
    assert any(not torch.equal(a[k], b[k]) for k in a)
