"""CLI for the pruning methods: plan --method, prune (merge plans) and compare, end to end on a tiny model
(in-process ``main``: the ``cli`` fixture)."""

from __future__ import annotations

import csv
import json


# ------------------------------------------------------------------ CLI
def test_cli_plan_method_prune_and_compare(tiny, tmp_path, cli):
    from transformers import AutoModelForCausalLM

    lm = tiny("llama", 6, seed=0)
    src = tmp_path / "src"
    lm.model.save_pretrained(src)
    lm.tokenizer.save_pretrained(src)
    small = ["--samples", 2, "--seq-len", 32, "--device", "cpu"]
    r = cli("plan", "--model", src, "--method", "slm", "--num", 2, *small, "--out", tmp_path / "p.json")
    assert r.returncode == 0, r.stderr
    p = json.loads((tmp_path / "p.json").read_text())
    assert p["method"] == "slm" and p["merged_groups"] and len(p["removed_layers"]) == 2
    r = cli("prune", "--model", src, "--plan", tmp_path / "p.json", "--out", tmp_path / "out",
            "--eval-windows", 0, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").config.num_hidden_layers == 4

    out = tmp_path / "results.csv"
    r = cli("compare", "--model", src, "--num", 2, "--methods", "oneshot:cosine,oneshot:simdiff,greedy",
            *small, "--eval-windows", 2, "--eval-seq-len", 32, "--out", out)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out.open()))
    assert [x["method"] for x in rows] == ["dense", "oneshot", "oneshot", "greedy"]
    assert {"method", "criterion", "removed_layers", "ppl"} <= set(rows[0])
    assert all(len(x["removed_layers"].split()) == 2 for x in rows[1:]) and float(rows[3]["ppl"]) > 1
    assert out.with_suffix(".md").read_text().startswith("| method")

    r = cli("compare", "--model", src, "--num", 2, "--methods", "oneshot:nope", "--out", tmp_path / "x.csv")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: unknown criterion")
    r = cli("plan", "--method", "greedy", "--num", 2, "--out", tmp_path / "y.json")
    assert r.returncode == 2 and "--model" in r.stderr


def test_cli_plan_and_compare_repairable(tiny, tmp_path, cli):
    """The repair-aware method through the CLI gives the library's plan on the same windows."""
    from simdiff_core import make_windows
    from simdiff_core.methods import run_method

    lm = tiny("llama", 6, seed=3)
    src = tmp_path / "src"
    lm.model.save_pretrained(src)
    lm.tokenizer.save_pretrained(src)
    small = ["--calib", "wikitext2", "--samples", 2, "--seq-len", 32, "--device", "cpu"]
    r = cli("plan", "--model", src, "--method", "repairable", "--cost", "absolute", "--num", 2, *small,
            "--out", tmp_path / "p.json")
    assert r.returncode == 0, r.stderr
    p = json.loads((tmp_path / "p.json").read_text())
    want = run_method("repairable", lm, make_windows(lm.tokenizer, "wikitext2", n=2, seq_len=32), num=2,
                      cost="absolute")
    assert p["method"] == "repairable" and p["removed_layers"] == want.removed_layers
    assert p["details"]["cost"] == "absolute"
    out = tmp_path / "r.csv"
    r = cli("compare", "--model", src, "--num", 2, "--methods", "repairable:nope", "--out", out)
    assert r.returncode == 2 and "unknown repairable cost" in r.stderr.strip().splitlines()[-1]


def test_cli_plan_search_repaired_objective(tiny, tmp_path, cli):
    """--objective repaired_ppl: fit windows = --samples, held-out = the next --holdout-samples windows;
    the CLI's plan is the library's on those windows."""
    from simdiff_core import make_windows
    from simdiff_core.methods import run_method

    lm = tiny("llama", 6, seed=3)
    src = tmp_path / "src"
    lm.model.save_pretrained(src)
    lm.tokenizer.save_pretrained(src)
    small = ["--calib", "wikitext2", "--samples", 2, "--seq-len", 32, "--device", "cpu"]
    # 2 x 32 = 64 fit tokens = d: lstsq (the default) refuses in one line, ridge fits
    r = cli("plan", "--model", src, "--method", "search", "--search", "greedy", "--objective", "repaired_ppl",
            "--holdout-samples", 2, "--num", 2, *small, "--out", tmp_path / "p.json")
    assert r.returncode == 2 and "(64 <= 64)" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "p.json").exists()
    r = cli("plan", "--model", src, "--method", "search", "--search", "greedy", "--objective", "repaired_ppl",
            "--objective-repair", "ridge", "--holdout-samples", 2, "--num", 2, *small, "--out", tmp_path / "p.json")
    assert r.returncode == 0, r.stderr
    p = json.loads((tmp_path / "p.json").read_text())
    both = make_windows(lm.tokenizer, "wikitext2", n=4, seq_len=32)
    want = run_method("search", lm, both[:2], num=2, search="greedy", objective="repaired_ppl", holdout_ids=both[2:],
                      repair_method="ridge")
    assert p["removed_layers"] == want.removed_layers and p["criterion"] == "repaired_ppl"
    d = p["details"]["repaired_objective"]
    assert d["fit_windows"] == [2, 32] and d["holdout_windows"] == [2, 32] and d["repair"] == "ridge"
    assert p["calibration"]["holdout"]["windows"] == "2..3"
    r = cli("plan", "--model", src, "--method", "greedy", "--objective", "repaired_ppl", "--holdout-samples", 0,
            "--num", 2, *small, "--out", tmp_path / "q.json")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: --holdout-samples")
    assert not (tmp_path / "q.json").exists()
