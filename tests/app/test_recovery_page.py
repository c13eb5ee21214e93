"""AppTest for the Recovery page: trains LoRA on the pruned model and compares the models."""

from __future__ import annotations

import json

import pytest

from tests.support.repo import ROOT


def test_recovery_page_trains_and_compares_models(embedded_lm):
    """The page: recovery with a live loss curve and its honest references (dense + same LoRA, second-domain
    perplexity; numbers equal to an independent library computation), then accuracy for dense / pruned /
    recovered."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.run()
    at.number_input(key="samples").set_value(4)
    at.number_input(key="seq_len").set_value(64)
    at.button(key="calibrate").click().run()
    at.switch_page("pages/Recovery_and_accuracy.py").run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    at.number_input(key="rec_steps").set_value(3)
    at.number_input(key="rec_windows").set_value(4)
    at.number_input(key="rec_seq_len").set_value(32)
    at.number_input(key="rec_eval_windows").set_value(1)
    at.number_input(key="rec_eval_seq_len").set_value(64)
    at.button(key="run_recovery").click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    labels = [m.label for m in at.metric]
    assert "Perplexity, recovered" in labels and "Dense + same LoRA" in labels
    curve = json.loads(at.get("plotly_chart")[-1].proto.spec)
    assert [t["name"] for t in curve["data"]] == ["pruned + LoRA", "dense + same LoRA"]
    assert len(curve["data"][0]["x"]) == 3 or "bdata" in curve["data"][0]["x"]
    _check_honest_numbers(at, embedded_lm)
    at.multiselect(key="acc_tasks").set_value(["arc_easy"])
    at.number_input(key="acc_limit").set_value(2)
    at.button(key="run_accuracy").click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    (table,) = [d.value for d in at.dataframe if "recovered" in list(d.value.index)]
    assert list(table.index) == ["dense", "pruned", "recovered"]
    assert {"mc_science", "average", "% retained", "ppl"} <= set(table.columns)
    assert table.loc["dense", "% retained"] == pytest.approx(100.0)
    assert (table["source"] == "offline").all()


def _check_honest_numbers(at, lm):
    """The page's table against an independent computation: perplexity of the dense and pruned models on the
    shipped code sample directly, and the library's LoRA run on a deep copy of the dense model (same settings
    and seed) for the reference."""
    import copy

    from simdiff_core import make_windows
    from simdiff_core.evaluation.evaluate import eval_windows, perplexity
    from simdiff_core.evaluation.recover import RecoveryConfig, recover
    from simdiff_core.pruning.prune import pruned_model

    (table,) = [d.value for d in at.dataframe if "dense + same LoRA" in list(d.value.index)]
    assert list(table.index) == ["dense", "pruned", "pruned + LoRA", "dense + same LoRA"]
    assert list(table.columns) == ["ppl, WikiText-2 test", "ppl, shipped code sample"]
    code = eval_windows(lm.tokenizer, "shipped:code", 64, 1)
    held = eval_windows(lm.tokenizer, "wikitext2", 64, 1)
    plan = at.session_state["plan"]
    pruned = pruned_model(lm, plan.kept_layers)
    code_col, held_col = table["ppl, shipped code sample"], table["ppl, WikiText-2 test"]
    assert code_col["dense"] == pytest.approx(perplexity(lm.model, code, 1)["ppl"], rel=1e-4)
    assert code_col["pruned"] == pytest.approx(perplexity(pruned, code, 1)["ppl"], rel=1e-4)
    assert held_col["pruned"] == pytest.approx(perplexity(pruned, held, 1)["ppl"], rel=1e-4)
    train = make_windows(lm.tokenizer, "wikitext2", 4, 32)
    solo = recover(copy.deepcopy(lm.model), None, train, RecoveryConfig(steps=3, rank=8, lr=1e-3),
                   eval_ids=held, second_ids=code)
    assert held_col["dense + same LoRA"] == pytest.approx(solo.report["ppl_recovered"], rel=1e-4)
    assert code_col["dense + same LoRA"] == pytest.approx(solo.report["second_domain"]["ppl_recovered"], rel=1e-4)
    # trained and evaluated on two splits of WikiText-2: the page says so
    assert any("same corpus" in w.value for w in at.warning)
