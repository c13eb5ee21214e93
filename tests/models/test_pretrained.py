"""A local checkpoint whose config names its own code: one line saying so, and the code never runs.

With an unknown ``model_type`` and an ``auto_map`` without ``AutoConfig``, transformers itself reports
an unsupported architecture (a 400-character line that never mentions the custom code); the check
reads config.json first."""

from __future__ import annotations

import json

import pytest

from simdiff_core.common.errors import SimDiffError
from simdiff_core.models.load import load_model

CODE = "import os, pathlib\npathlib.Path(os.environ['SIMDIFF_MARKER']).write_text('custom code ran')\n"


@pytest.mark.parametrize("auto_map", [{"AutoModelForCausalLM": "modeling_x.XForCausalLM"},
                                      {"AutoConfig": "modeling_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM"}])
@pytest.mark.parametrize("deep", [False, True])
def test_custom_code_gets_one_short_line_and_does_not_run(tmp_path, monkeypatch, auto_map, deep):
    d = tmp_path / ("p" * 200 if deep else "m") / ("q" * 200 if deep else "model")
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"model_type": "no_such_family", "architectures": ["XForCausalLM"],
                                               "auto_map": auto_map, "hidden_size": 8}))
    (d / "modeling_x.py").write_text(CODE)
    marker = tmp_path / "ran"
    monkeypatch.setenv("SIMDIFF_MARKER", str(marker))
    with pytest.raises(SimDiffError) as e:
        load_model(str(d), device="cpu")
    line = f"error: {e.value}"
    assert "\n" not in line and len(line) <= 300, (len(line), line)
    assert "contains custom code" in line and "--trust-remote-code" in line
    assert not marker.exists()


@pytest.mark.parametrize("deep", [False, True])
def test_streaming_a_custom_code_checkpoint_gets_one_line_and_runs_nothing(tmp_path, monkeypatch, deep):
    """--stream never runs a checkpoint's own code: StreamedModel and the CLI's resolve_stream_dir refuse a
    config with ``auto_map`` in one line before transformers reads it (it could prompt on stdin)."""
    from tests.support.tiny import tiny_model

    from simdiff_core import cli
    from simdiff_core.models.streaming import StreamedModel, resolve_stream_dir

    d = tmp_path / ("p" * 200 if deep else "m") / ("q" * 200 if deep else "model")
    tiny_model("llama", 2).save_pretrained(d)  # real safetensors shards: only the config names custom code
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="no_such_family", auto_map={"AutoConfig": "modeling_x.XConfig",
                                                       "AutoModelForCausalLM": "modeling_x.XForCausalLM"})
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "modeling_x.py").write_text(CODE)
    marker = tmp_path / "ran"
    monkeypatch.setenv("SIMDIFF_MARKER", str(marker))
    lines = []
    for build in (lambda: StreamedModel(d, "cpu", "float32"), lambda: resolve_stream_dir(str(d))):
        with pytest.raises(SimDiffError) as e:
            build()
        lines.append(f"error: {e.value}")
    assert cli.main(["score", "--stream", "--model", str(d), "--out", str(tmp_path / "s.json")]) == 2
    for line in lines:
        assert "\n" not in line and len(line) <= 300, (len(line), line)
        assert "contains custom code" in line and "--trust-remote-code" in line and "--stream" in line
    assert not marker.exists()
