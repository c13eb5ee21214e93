"""CLI for evaluation and recovery: evaluate (perplexity, accuracy) and recover (LoRA, merged) on a tiny export
(in-process ``main``: the ``cli`` fixture)."""

from __future__ import annotations

import json

import pytest


def test_evaluate_and_recover_cli(tiny, tmp_path, cli):
    """evaluate prints the required JSON offline; recover exports a merged checkpoint with its report."""
    from transformers import AutoModelForCausalLM

    from simdiff_core.export.checkpoint import export_pruned
    from simdiff_core.pruning.plan import Plan

    lm = tiny("llama", 3)
    src = export_pruned(lm, Plan(model="tiny", num_layers=3, removed_layers=[1]), tmp_path / "pruned")
    text = tmp_path / "calib.txt"
    text.write_text("The cat sat on the mat. The dog sat on the log. " * 60)

    r = cli("evaluate", "--model", src, "--tasks", "arc_easy,hellaswag,boolq", "--limit", "3", "--json",
            env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["source"] == "offline"
    assert set(out["tasks"]) == {"mc_science", "mc_completion"}
    assert out["stand_ins"]["boolq"] is None
    assert all(0.0 <= a <= 1.0 for a in out["tasks"].values())
    assert out["average"] == pytest.approx(sum(out["tasks"].values()) / 2)

    r = cli("evaluate", "--model", src, "--tasks", "mmlu", "--json")
    assert r.returncode == 2 and r.stderr.strip().startswith("error: unknown task")

    dst = tmp_path / "recovered"
    r = cli("recover", "--model", src, "--calib", text, "--samples", "4", "--seq-len", "32", "--steps", "4",
            "--rank", "2", "--lr", "5e-3", "--eval-windows", "0", "--out", dst)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["num_layers"] == 2 and res["train_loss_after"] < res["train_loss_before"]
    report = json.loads((dst / "simdiff_report.json").read_text())
    assert len(report["recovery"]["loss_curve"]) == 4
    assert report["plan"]["details"]["source_plan"]["removed_layers"] == [1]
    m = AutoModelForCausalLM.from_pretrained(dst)
    assert m.config.num_hidden_layers == 2

    # with --plan: the dense model gets the same LoRA run, every ppl is also measured on the shipped code
    # sample, and the report and card carry both (numbers checked against the reloaded checkpoint)
    plan = tmp_path / "plan.json"
    Plan(model=str(src), num_layers=2, removed_layers=[1]).save(plan)
    dst = tmp_path / "recovered2"
    r = cli("recover", "--model", src, "--plan", plan, "--calib", text, "--samples", "4", "--seq-len", "32",
            "--steps", "2", "--rank", "2", "--lr", "5e-3", "--eval-windows", "1", "--eval-seq-len", "32",
            "--out", dst)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    ev = json.loads((dst / "simdiff_report.json").read_text())["evaluation"]
    assert res["ppl_dense_lora"] == ev["ppl_dense_lora"] and res["flags"] == ev["honesty"]["flags"]
    sd = ev["second_domain"]
    assert sd["text"] == "shipped:code" and set(sd) >= {"ppl_dense", "ppl_pruned", "ppl_recovered", "ppl_dense_lora"}
    import torch

    from simdiff_core.evaluation.evaluate import eval_windows, perplexity

    tok = lm.tokenizer
    reloaded = AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32).eval()
    assert sd["ppl_recovered"] == pytest.approx(perplexity(reloaded, eval_windows(tok, "shipped:code", 32, 1), 1)["ppl"],
                                                rel=1e-4)
    dense = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    assert sd["ppl_dense"] == pytest.approx(perplexity(dense, eval_windows(tok, "shipped:code", 32, 1), 1)["ppl"],
                                            rel=1e-4)
    card = (dst / "README.md").read_text()
    assert "| model | perplexity | second domain |" in card and "original + the same LoRA" in card
    assert "Honest comparison" in card

    r = cli("recover", "--model", src, "--calib", text, "--steps", "0", "--out", tmp_path / "x")
    assert r.returncode == 2 and "steps" in r.stderr and not (tmp_path / "x").exists()
