"""CLI: ``plan --criterion linear`` from a scores file alone, ``score --no-linear``, and ``spans`` (in-process
``main``: the ``cli`` fixture)."""

from __future__ import annotations

import json

import numpy as np

from simdiff_core import make_windows, score_model


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_plan_linear_from_scores_without_a_model(tmp_path, tiny, tokenizer, cli):
    ids = make_windows(tokenizer, "wikitext2", n=4, seq_len=40)
    sc = score_model(tiny("llama", num_layers=6, seed=5), ids, batch_size=2, linear_bands=True)
    sc.save(tmp_path / "s.json")
    r = cli("plan", "--scores", tmp_path / "s.json", "--criterion", "linear", "--num", 2,
            "--stability", 20, "--out", tmp_path / "p.json")
    assert r.returncode == 0, r.stderr
    plan = json.loads((tmp_path / "p.json").read_text())
    vals = np.array([np.inf] + [l["linear"] for l in sc.layers[1:-1]])    # block 0 / last locked
    assert plan["removed_layers"] == sorted(np.argsort(vals, kind="stable")[:2].tolist())
    assert plan["criterion"] == "linear" and "stability" in plan["details"]

    old = sc.to_dict()
    for l in old["layers"]:
        l.pop("linear")
    (tmp_path / "old.json").write_text(json.dumps(old))
    r = cli("plan", "--scores", tmp_path / "old.json", "--criterion", "linear", "--num", 2,
            "--out", tmp_path / "q.json")
    assert r.returncode == 2 and "no linear-replaceability curve" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "q.json").exists()


def test_score_no_linear_and_spans(tmp_path, embedded_lm, cli):
    r = cli("score", "--model", "default", "--samples", 2, "--seq-len", 32, "--no-linear",
            "--out", tmp_path / "s.json")
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "s.json").read_text())
    assert "linear" not in data["layers"][1] and "lin_num" not in data["windows"]

    r = cli("spans", "--model", "default", "--samples", 2, "--seq-len", 32, "--max-span", 2,
            "--out", tmp_path / "spans.json")
    assert r.returncode == 0, r.stderr
    heat = json.loads((tmp_path / "spans.json").read_text())
    assert _last_json(r.stdout)["max_span"] == 2 and len(heat["values"]) == 30
    row1 = [v for v in heat["values"][0][1:]]
    assert all(0 <= v <= 1 for v in row1) and heat["values"][2][5] is None

    r = cli("spans", "--model", "default", "--max-span", 0, "--out", tmp_path / "x.json")
    assert r.returncode == 2 and "max-span" in r.stderr
