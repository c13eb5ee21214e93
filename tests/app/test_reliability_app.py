"""Reliability of the Streamlit app (issue 7): failures show one st.error and the app keeps working;
concurrent sessions never see each other's state; the shared cached model is never mutated or
pulled from under a session that uses it.

Several ``AppTest`` instances in one process are several browser sessions of one server: they share
``st.cache_resource`` (the model cache) and each has its own session state. Tiny saved models
(4 blocks, the embedded tokenizer) keep every run to a second or two.
"""

from __future__ import annotations

import json
import os

import pytest
from streamlit.testing.v1 import AppTest

from tests.support.repo import ROOT

from simdiff_core.pruning.prune import weights_fingerprint

APP = str(ROOT / "app.py")
PREVIEW, EXPORT = "pages/Prune_preview.py", "pages/Export_and_evaluate.py"
T = 240
LONG_TEXT = "The river rose in the spring and the town moved its market to the hill above the old bridge. " * 40


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
    """Saved tiny models (three distinct specs) and broken model folders."""
    from tests.support.tiny import tiny_model

    d = tmp_path_factory.mktemp("appmodels")
    out = {}
    for name, family, seed in (("a", "llama", 0), ("b", "qwen2", 1), ("c", "mistral", 2)):
        tiny_model(family, 4, seed).save_pretrained(d / name)
        tokenizer.save_pretrained(d / name)
        out[name] = str(d / name)
    (d / "noconf").mkdir()
    out["noconf"] = str(d / "noconf")
    (d / "t5").mkdir()
    (d / "t5" / "config.json").write_text(json.dumps({"model_type": "t5"}))
    out["t5"] = str(d / "t5")
    custom = d / "custom"
    custom.mkdir()
    for f in (d / "a").iterdir():
        (custom / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((d / "a" / "config.json").read_text())
    # an unknown model_type whose classes live in the folder's own .py: loading needs its code
    cfg.update(model_type="simdiff_custom", auto_map={"AutoConfig": "custom_model.CustomConfig",
                                                      "AutoModelForCausalLM": "custom_model.CustomForCausalLM"})
    (custom / "config.json").write_text(json.dumps(cfg))
    (custom / "custom_model.py").write_text(
        f"open({str(d / 'MARKER')!r}, 'w').write('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'simdiff_custom'\n"
        "class CustomForCausalLM(LlamaForCausalLM):\n    config_class = CustomConfig\n")
    out["custom"], out["marker"] = str(custom), d / "MARKER"
    trunc = d / "trunc"
    trunc.mkdir()
    for f in (d / "a").iterdir():
        blob = f.read_bytes()
        (trunc / f.name).write_bytes(blob[: len(blob) // 3] if f.suffix == ".safetensors" else blob)
    out["trunc"] = str(trunc)
    (d / "bad.gguf").write_bytes(b"PK\x03\x04 definitely not gguf" * 10)
    out["bad_gguf"] = str(d / "bad.gguf")
    return out


def session() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=T)
    at.run()
    return at


def errors(at) -> list[str]:
    return [e.value for e in at.error]


def load(at, path: str, kind: str = "Local model directory", samples=2, seq_len=32, text=LONG_TEXT):
    at.selectbox(key="src_kind").set_value(kind).run()
    at.text_input(key="src_text").set_value(path).run()
    at.radio(key="calib_kind").set_value("Paste text").run()
    at.text_area(key="calib_text").set_value(text).run()
    at.number_input(key="samples").set_value(samples)
    at.number_input(key="seq_len").set_value(seq_len)
    at.button(key="calibrate").click().run()
    return at


def assert_one_error(at, fragment: str) -> None:
    assert not at.exception, at.exception
    errs = errors(at)
    assert len(errs) == 1 and fragment in errs[0], errs
    assert "\n" not in errs[0] and "Traceback" not in errs[0]


def test_model_failures_show_one_error_and_app_recovers(models, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "secret-xyz")
    at = session()
    for kind, spec, fragment in [
        ("Hugging Face hub id", "nosuch-org/nosuch-model-simdiff", "not reachable on the Hugging Face hub"),
        ("Local model directory", models["noconf"], "has no config.json"),
        ("Local model directory", models["t5"], "unsupported architecture"),
        ("Local model directory", models["custom"], "contains custom code"),
        ("Local model directory", models["trunc"], "truncated or corrupt"),
        ("GGUF file", models["bad_gguf"], "not a GGUF file"),
        ("GGUF file", models["noconf"] + "/missing.gguf", "no such GGUF file"),
    ]:
        load(at, spec, kind)
        assert_one_error(at, fragment)
        assert "secret-xyz" not in errors(at)[0]
        assert at.session_state["scores"] is None
    assert not models["marker"].exists(), "custom model code ran without 'Trust remote code'"
    load(at, models["a"])  # the same session still works
    assert not at.exception and not errors(at) and at.session_state["scores"].num_layers == 4


def test_text_failures_show_one_error(models):
    at = session()
    for text, fragment in [("   \n\t ", "text is empty"), ("Only a few words here.", "window(s) of 32 fit")]:
        load(at, models["a"], text=text)
        assert_one_error(at, fragment)
    at.radio(key="calib_kind").set_value("Upload a .txt file").run()
    for name, blob, fragment in [("latin1.txt", "Café crème brûlée à Noël. ".encode("latin-1") * 50, "not UTF-8"),
                                 ("zeros.txt", b"\x00" * 4000, "not UTF-8"),
                                 ("empty.txt", b"", "text is empty")]:
        up = at.file_uploader(key="calib_upload")
        up.clear()
        up.upload(name, blob, "text/plain").run()
        at.button(key="calibrate").click().run()
        assert_one_error(at, fragment)
    at.radio(key="calib_kind").set_value("Hugging Face dataset").run()
    at.text_input(key="calib_hf").set_value("nosuch-org/nosuch-dataset-simdiff/train").run()
    at.button(key="calibrate").click().run()
    assert_one_error(at, "could not load dataset")
    assert at.session_state["scores"] is None
    load(at, models["a"])
    assert not errors(at) and at.session_state["scores"] is not None


def test_upload_limit_comes_from_config():
    import tomllib

    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert 0 < cfg["server"]["maxUploadSize"] <= 200  # MB; the library's own limit is SIMDIFF_MAX_TEXT_MB


def test_impossible_ratio_shows_error_and_recovers(models):
    at = load(session(), models["a"])
    at.switch_page(PREVIEW).run()
    assert not at.exception and not errors(at)
    at.slider(key="_w_ratio").set_value(1.0).run()
    assert_one_error(at, "would leave none")
    at.slider(key="_w_ratio").set_value(0.75).run()  # 3 of 4 with first and last locked
    assert_one_error(at, "cannot remove 3 blocks with the first and last block locked")
    at.slider(key="_w_ratio").set_value(0.25).run()
    assert not at.exception and not errors(at)
    assert at.session_state["plan"].num_removed == 1


def test_two_sessions_keep_their_own_state_and_never_mutate_the_model(models, tmp_path, monkeypatch):
    from ui.models import cached_model

    monkeypatch.setenv("SIMDIFF_EXPORT_DIR", str(tmp_path / "exports"))
    a = load(session(), models["a"], samples=2)
    b = load(session(), models["a"], samples=3)
    lm = cached_model(models["a"], "auto", "auto", False)
    fp = weights_fingerprint(lm.model)
    assert a.session_state["calib_ids"].shape[0] == 2 and b.session_state["calib_ids"].shape[0] == 3

    a.switch_page(PREVIEW).run()
    a.slider(key="_w_ratio").set_value(0.25).run()
    b.switch_page(PREVIEW).run()
    b.selectbox(key="_w_criterion").set_value("cosine").run()
    b.toggle(key="_w_keep_first").set_value(False).run()
    b.slider(key="_w_ratio").set_value(0.75).run()
    assert not a.exception and not b.exception and not errors(a) and not errors(b)
    plan_a = a.session_state["plan"]
    a.run()  # a rerun of session A after B changed everything
    assert a.session_state["plan"].removed_layers == plan_a.removed_layers
    assert a.session_state["plan"].scores == plan_a.scores
    assert (a.session_state["criterion"], a.session_state["ratio"]) == ("simdiff", 0.25)
    assert (b.session_state["criterion"], b.session_state["ratio"]) == ("cosine", 0.75)
    assert len(a.session_state["plan"].removed_layers) == 1 and len(b.session_state["plan"].removed_layers) == 3

    for at, name in ((a, "../../outside-a"), (b, "b/../../x")):
        at.switch_page(EXPORT).run()
        at.text_input(key="export_name").set_value(name).run()
        at.button(key="export").click().run()
        assert not at.exception and not errors(at), errors(at)
    made = sorted(p.name for p in (tmp_path / "exports").iterdir())
    assert sorted(os.listdir(tmp_path)) == ["exports"], "an export escaped the export folder"
    assert len([m for m in made if not m.endswith(".zip")]) == 2
    assert [e["removed"] for e in a.session_state["exports"]] == [1]
    assert [e["removed"] for e in b.session_state["exports"]] == [3]
    # the shared cached model: same object, same weights, still all 4 blocks
    assert cached_model(models["a"], "auto", "auto", False) is lm
    assert weights_fingerprint(lm.model) == fp and lm.num_layers == 4


def test_loading_other_models_does_not_pull_one_from_a_session(models):
    """Session A calibrates model a; sessions B and C then load two other models, more than the
    cache's max_entries. Session A keeps the very same model object (no reload, no second copy)."""
    from ui.models import cached_model

    a = load(session(), models["a"])
    lm_a = cached_model(models["a"], "auto", "auto", False)
    for name in ("b", "c"):
        other = load(session(), models[name])
        assert not errors(other) and other.session_state["scores"].num_layers == 4
    a.switch_page(PREVIEW).run()
    assert not a.exception and not errors(a)
    pin = a.session_state["_lm_pin"] if "_lm_pin" in a.session_state else None
    assert pin is not None and pin[1] is lm_a, "session A lost its model to another session's load"
    # the scenario really happened: the shared cache had dropped model a (a lookup now builds a new one)
    assert cached_model(models["a"], "auto", "auto", False) is not lm_a
