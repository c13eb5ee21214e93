"""prune --repair end to end: the export carries the repaired weights, the report and card record the repair.

The held-out perplexity the CLI reports for the repaired model is recomputed here by a direct loop
(log-softmax, mean NLL) on the *reloaded* checkpoint, so the number, the weights and the record agree.
"""

from __future__ import annotations

import json
import math

import torch

from simdiff_core.pruning.plan import Plan


def _save(lm, path, tokenizer):
    lm.model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _direct_ppl(model, ids) -> float:
    nll, n = 0.0, 0
    with torch.no_grad():
        for row in ids:
            logits = model(input_ids=row[None]).logits[0, :-1].double()
            lp = torch.log_softmax(logits, -1).gather(1, row[1:, None]).sum()
            nll, n = nll - float(lp), n + row.numel() - 1
    return math.exp(nll / n)


def test_prune_repair_exports_records_and_guards(tiny, tokenizer, tmp_path, cli):
    from transformers import AutoModelForCausalLM

    from simdiff_core.evaluation.evaluate import eval_windows

    src = _save(tiny("llama", 4, seed=2), tmp_path / "dense", tokenizer)
    plan = tmp_path / "plan.json"
    Plan(model=str(src), num_layers=4, removed_layers=[1, 2]).save(plan)
    out = tmp_path / "rep"
    r = cli("prune", "--model", src, "--plan", plan, "--out", out, "--repair", "lstsq", "--samples", "4",
            "--seq-len", "64", "--eval-windows", "2", "--eval-seq-len", "32")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    rec = json.loads((out / "simdiff_report.json").read_text())["repair"]
    assert rec["method"] == "lstsq" and [(s["start"], s["end"]) for s in rec["spans"]] == [(1, 3)]
    span = rec["spans"][0]
    assert span["residual_after"] <= span["residual_before"] and span["site"].endswith("0.mlp.down_proj")
    assert rec["calibration"]["tokens"] == 4 * 64 and rec["calibration"]["source"] == "wikitext2"
    ev = rec["evaluation"]
    assert ev["improves_held_out"] == (ev["held_out"]["repaired"] < ev["held_out"]["pruned"])
    assert ev["verdict"].startswith("repair lowers" if ev["improves_held_out"] else "NOT an improvement")
    assert res["ppl_repaired"] == ev["held_out"]["repaired"] and res["improves_held_out"] == ev["improves_held_out"]
    # the reloaded checkpoint is the repaired model: its held-out ppl is the recorded one
    back = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = eval_windows(tokenizer, "wikitext2", 32, 2)
    assert math.isclose(_direct_ppl(back, ids), ev["held_out"]["repaired"], rel_tol=1e-4)
    assert not math.isclose(ev["held_out"]["repaired"], ev["held_out"]["pruned"], rel_tol=1e-6)
    # and on a text of another domain (the shipped code sample), dense and repaired from direct loops
    sd = ev["second_domain"]
    code = eval_windows(tokenizer, "shipped:code", 32, 2)
    assert "code" in sd["protocol"] and (sd["windows"], sd["seq_len"]) == (2, 32)
    assert math.isclose(_direct_ppl(back, code), sd["repaired"], rel_tol=1e-4)
    dense = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    assert math.isclose(_direct_ppl(dense, code), sd["dense"], rel_tol=1e-4)
    assert ev["improves_second_domain"] == (sd["repaired"] < sd["pruned"])
    assert ("second-domain text" in ev["verdict"]) == (not ev["improves_second_domain"])
    card = (out / "README.md").read_text()
    assert "## Repair" in card and "unrepaired" in card and "mergekit" in rec["export_note"]
    assert "| second domain: " in card

    # a family where the fold is not exact: one error line, exit 2, nothing written
    g = _save(tiny("gemma3", 4, seed=2), tmp_path / "g", tokenizer)
    Plan(model=str(g), num_layers=4, removed_layers=[1, 2]).save(plan)
    r = cli("prune", "--model", g, "--plan", plan, "--out", tmp_path / "g_out", "--repair", "lstsq",
            "--samples", "2", "--seq-len", "32", "--eval-windows", "1", "--eval-seq-len", "32")
    err = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("error")]
    assert r.returncode == 2 and len(err) == 1 and err[0].startswith("error: repair 'lstsq' does not apply to gemma3")
    assert r.stderr.strip().splitlines()[-1] == err[0]
    assert not (tmp_path / "g_out").exists()

    # lstsq on no more fit tokens than channels (1 x 48 <= d = 64): one line, exit 2, nothing written
    Plan(model=str(src), num_layers=4, removed_layers=[1, 2]).save(plan)
    r = cli("prune", "--model", src, "--plan", plan, "--out", tmp_path / "few", "--repair", "lstsq",
            "--samples", "1", "--seq-len", "48", "--eval-windows", "1", "--eval-seq-len", "32")
    err = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("error")]
    assert r.returncode == 2 and len(err) == 1 and "(48 <= 64)" in err[0] and "'ridge'" in err[0]
    assert not (tmp_path / "few").exists()
    # ridge on the same tokens fits and records the strength it chose
    r = cli("prune", "--model", src, "--plan", plan, "--out", tmp_path / "few", "--repair", "ridge",
            "--samples", "1", "--seq-len", "48", "--eval-windows", "1", "--eval-seq-len", "32")
    assert r.returncode == 0, r.stderr[-2000:]
    text = (tmp_path / "few" / "simdiff_report.json").read_text()
    assert "Infinity" not in text and "NaN" not in text  # plain JSON, whatever strength was chosen
    (span,) = json.loads(text)["repair"]["spans"]
    assert span["ridge"]["note"].startswith("one calibration window")  # one window: no fold to hold out
