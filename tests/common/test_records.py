"""Typed records at the boundaries: one export report shape for the app and the CLI, plan recipes
that old plan files still load into, and one JSON load/save path for Scores, Damage and Plan."""

from __future__ import annotations

import json
import re

import pytest

from pathlib import Path

ROOT_APP = str(Path(__file__).resolve().parents[2] / "app.py")
EXPORT = "pages/Export_and_evaluate.py"


def _card_ppl(card: str) -> tuple[float, float]:
    dense = re.search(r"\| original \(\d+ blocks\) \| ([0-9.]+) \|", card)
    pruned = re.search(r"\| pruned \(\d+ blocks\) \| ([0-9.]+) \|", card)
    assert dense and pruned, "model card has no measured perplexity table"
    return float(dense.group(1)), float(pruned.group(1))


@pytest.mark.slow
def test_app_and_cli_exports_of_one_plan_write_equal_reports_and_cards(tmp_path, monkeypatch, cli):
    """The same plan exported from the Export page and by ``simdiff prune`` gives equal reports and
    model cards, and both cards show the perplexity that was measured (not "Not measured")."""
    from streamlit.testing.v1 import AppTest

    from simdiff_core import eval_windows, load_model, perplexity, pruned_model

    monkeypatch.setenv("SIMDIFF_EXPORT_DIR", str(tmp_path / "app"))
    at = AppTest.from_file(ROOT_APP, default_timeout=300)
    at.run()
    at.number_input(key="samples").set_value(2)
    at.number_input(key="seq_len").set_value(32)
    at.button(key="calibrate").click().run()
    at.switch_page(EXPORT).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.number_input(key="eval_windows").set_value(2)
    at.number_input(key="eval_seq_len").set_value(32)
    at.checkbox(key="do_gen").uncheck()
    at.checkbox(key="do_lat").uncheck()
    at.button(key="evaluate").click().run()
    at.text_input(key="export_name").set_value("same")
    at.selectbox(key="export_dtype").set_value("float32")
    at.button(key="export").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    plan, scores = at.session_state["plan"], at.session_state["scores"]
    app_out = tmp_path / "app" / "same"

    plan_file, scores_file, cli_out = tmp_path / "plan.json", tmp_path / "scores.json", tmp_path / "cli" / "same"
    plan.save(plan_file)
    scores.save(scores_file)
    r = cli("prune", "--model", "default", "--plan", plan_file, "--scores", scores_file, "--out", cli_out,
            "--eval-windows", 2, "--eval-seq-len", 32, "--out-dtype", "float32")
    assert r.returncode == 0, r.stderr

    app_rep = json.loads((app_out / "simdiff_report.json").read_text())
    cli_rep = json.loads((cli_out / "simdiff_report.json").read_text())
    for rep in (app_rep, cli_rep):
        rep.pop("created")
    assert app_rep == cli_rep
    app_card, cli_card = (app_out / "README.md").read_text(), (cli_out / "README.md").read_text()
    assert app_card == cli_card and "Not measured" not in app_card

    # the card's numbers are the perplexities of the dense and pruned model, measured here directly
    lm = load_model("default", device="cpu", dtype="float32")
    ids = eval_windows(lm.tokenizer, "wikitext2", 32, 2)
    dense = perplexity(lm.model, ids)["ppl"]
    pruned = perplexity(pruned_model(lm, plan.kept_layers), ids)["ppl"]
    assert _card_ppl(app_card) == (pytest.approx(dense, abs=6e-4), pytest.approx(pruned, abs=6e-4))
    assert app_rep["evaluation"]["ppl_dense"] == pytest.approx(dense, rel=1e-5)


def test_old_flat_report_and_nested_report_read_the_same(tiny):
    from simdiff_core.common.records import Evaluation, ExportReport, read_report
    from simdiff_core.export.modelcard import model_card
    from simdiff_core.pruning.plan import Plan

    lm = tiny("llama", 4)
    plan = Plan(model="t", num_layers=4, removed_layers=[2])
    ev = Evaluation(ppl_dense=10.0, ppl_pruned=12.5, tokens=100, protocol="p")
    nested = ExportReport.build(lm, plan, evaluation=ev).to_dict()
    assert nested["evaluation"] == {"ppl_dense": 10.0, "ppl_pruned": 12.5, "tokens": 100, "protocol": "p"}
    flat = {k: v for k, v in nested.items() if k != "evaluation"}
    flat.update(ppl_dense=10.0, ppl_pruned=12.5, ppl_protocol="p", tokens=100)  # what the app wrote before
    assert read_report(flat).evaluation == read_report(nested).evaluation == ev
    assert read_report(flat).to_dict() == nested
    card = model_card(plan, flat, lm)
    assert card == model_card(plan, nested, lm) and "| pruned (3 blocks) | 12.500 |" in card
    assert "Not measured" in model_card(plan, None, lm)


def test_html_report_reads_the_same_evaluation(embedded_scores):
    from simdiff_core.common.records import Evaluation
    from simdiff_core.export.report import build_report_html
    from simdiff_core.pruning.plan import make_plan

    plan = make_plan(embedded_scores, "cosine", num=3)
    old, _ = build_report_html(embedded_scores, plan=plan, ppl={"before": 10.0, "after": 12.5, "protocol": "p"})
    new, _ = build_report_html(embedded_scores, plan=plan, ppl=Evaluation(ppl_dense=10.0, ppl_pruned=12.5, protocol="p"))
    section = [re.search(r"<h2>Perplexity before / after</h2>(.*?)<h2>", doc, re.S).group(1) for doc in (old, new)]
    assert "<td>12.5</td>" in section[1] and "<td>1.25</td>" in section[1]  # pruned ppl and the ratio 12.5 / 10
    assert section[0] == section[1]


def test_honest_recovery_numbers_reach_report_card_and_html(tiny, embedded_scores):
    """A recovery Evaluation with the dense + same-LoRA reference, a second-domain text and its verdict: the
    report JSON round-trips it, and the model card and the HTML report print every number and flag."""
    from simdiff_core.common.records import Evaluation, ExportReport, read_report
    from simdiff_core.evaluation.honest import verdict
    from simdiff_core.export.modelcard import model_card
    from simdiff_core.export.report import build_report_html
    from simdiff_core.pruning.plan import Plan, make_plan

    sd = {"text": "shipped:code", "protocol": "code p", "ppl_dense": 9.5, "ppl_pruned": 30.25, "ppl_recovered": 12.75,
          "ppl_dense_lora": 9.25}
    h = verdict({"dense": 25.1, "pruned": 75.0, "treated": 24.0, "dense_treated": 16.0},
                {"dense": 9.5, "pruned": 30.25, "treated": 12.75, "dense_treated": 9.25}, train_text="wikitext2")
    ev = Evaluation(ppl_dense=25.1, ppl_pruned=75.0, ppl_recovered=24.0, protocol="p", ppl_dense_lora=16.0,
                    second_domain=sd, honesty=h)
    lm = tiny("llama", 4)
    plan = Plan(model="t", num_layers=4, removed_layers=[2])
    d = json.loads(ExportReport.build(lm, plan, evaluation=ev).to_json())
    assert read_report(d).evaluation == ev
    card = model_card(plan, d, lm)
    assert "| original (4 blocks) | 25.100 | 9.500 |" in card
    assert "| pruned + LoRA recovery (3 blocks) | 24.000 | 12.750 |" in card
    assert "| original + the same LoRA (4 blocks, reference) | 16.000 | 9.250 |" in card
    assert "Second domain: code p." in card and h["headline"] in card
    for code in ("same_corpus", "below_dense_untrained_only", "below_dense_only_in_domain"):
        assert f"**{code}**" in card
    doc, _ = build_report_html(embedded_scores, plan=make_plan(embedded_scores, "cosine", num=3), ppl=ev)
    section = re.search(r"<h2>Recovery: honest comparison</h2>(.*?)<h2>", doc, re.S).group(1)
    assert "<td>dense + same LoRA (reference)</td><td>16</td><td>9.25</td>" in section
    assert "below_dense_only_in_domain" in section and "code p" in section


def test_old_plan_files_load_into_the_typed_recipe(embedded_scores, tmp_path):
    from simdiff_core.pruning.plan import Plan, Recipe, make_plan

    plan = make_plan(embedded_scores, "simdiff", num=5, alpha=0.3, beta=0.0, scale_free=False, keep_last=False)
    assert plan.recipe == Recipe(method="oneshot", criterion="simdiff", ratio=5 / 30, num=5, alpha=0.3, beta=0.0,
                                 keep_first=True, keep_last=False, options={"scale_free": False})
    assert "fusion" not in plan.details
    # the same plan as an older version wrote it: beta and the options inside details["fusion"]
    old = plan.to_dict()
    for k in ("beta", "num", "options", "num_removed"):
        old.pop(k)
    old["details"] = {"fusion": {"beta": 0.0, "scale_free": False}, "seconds": 1.5}
    (tmp_path / "old.json").write_text(json.dumps(old))
    back = Plan.load(tmp_path / "old.json")
    assert back.beta == 0.0 and back.options == {"scale_free": False} and back.details == {"seconds": 1.5}
    # replaying the recipe on the scores gives the same blocks
    again = make_plan(embedded_scores, back.criterion, num=back.num_removed, alpha=back.alpha,
                      keep_first=back.keep_first, keep_last=back.keep_last, **back.recipe.fusion())
    assert again.removed_layers == plan.removed_layers
    plan.save(tmp_path / "new.json")
    assert Plan.load(tmp_path / "new.json") == plan


@pytest.mark.parametrize("kind", ["scores", "damage", "plan"])
def test_one_json_record_path_for_scores_damage_and_plan(kind, embedded_scores, tmp_path):
    from simdiff_core.common.errors import SimDiffError
    from simdiff_core.common.records import JsonRecord
    from simdiff_core.evaluation.damage_record import Damage
    from simdiff_core.pruning.plan import Plan, make_plan

    cls = {"scores": type(embedded_scores), "damage": Damage, "plan": Plan}[kind]
    assert issubclass(cls, JsonRecord) and cls.KIND == kind
    for method in ("save", "load", "to_json"):  # inherited, not re-implemented
        assert getattr(cls, method).__qualname__.startswith("JsonRecord.")
    if kind == "scores":
        rec = embedded_scores
    elif kind == "plan":
        rec = make_plan(embedded_scores, "cosine", num=2)
    else:
        rec = Damage("m", 2, 1.0, 2.718, [{"index": i, "loss": 1.5, "ppl": 4.48, "delta_loss": 0.5,
                                           "delta_ppl": 1.76} for i in range(2)])
    rec.save(tmp_path / "r.json")
    assert cls.load(tmp_path / "r.json").to_dict() == rec.to_dict()
    (tmp_path / "bad.json").write_text("{nope")
    (tmp_path / "list.json").write_text("[1]")
    for path, msg in ((tmp_path / "missing.json", f"no such {kind} file"), (tmp_path / "bad.json", "is not valid JSON"),
                      (tmp_path / "list.json", f"malformed {kind}: expected a JSON object")):
        with pytest.raises(SimDiffError, match=msg):
            cls.load(path)


def test_iterative_plans_record_simdiff_settings_in_the_recipe(tiny, calib_ids):
    from simdiff_core.methods import run_method
    from simdiff_core.pruning.plan import Plan

    lm = tiny("llama", 5, seed=1)
    it = run_method("iterative", lm, calib_ids[:2, :32], num=1, criterion="simdiff", alpha=0.3, beta=0.0,
                    scale_free=False)
    r = it.recipe
    assert (r.method, r.alpha, r.beta, r.options) == ("iterative", 0.3, 0.0, {"norm": "rank", "scale_free": False})
    assert "fusion" not in it.details and Plan.from_dict(it.to_dict()).recipe == r
