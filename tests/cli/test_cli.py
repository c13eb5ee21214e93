"""The CLI contract end to end on the embedded default model, and its one-line errors.

The bad-input test runs real ``python -m simdiff_core`` processes (exit status, nothing but the error
line on stderr); the others call the same ``main(argv)`` in this process (the ``cli`` fixture), which
saves an interpreter start with torch and transformers imports per command."""

from __future__ import annotations

import json

import pytest

from tests.support.repo import run_cli


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_score_plan_prune_ppl_end_to_end(tmp_path, embedded_lm, cli):
    scores, plan, out = tmp_path / "scores.json", tmp_path / "plan.json", tmp_path / "pruned"
    # --recompute: computed here, never reopened from the run library
    r = cli("score", "--model", "default", "--samples", 4, "--seq-len", 64, "--out", scores, "--recompute")
    assert r.returncode == 0, r.stderr
    data = json.loads(scores.read_text())
    assert data["num_layers"] == 30 and len(data["layers"]) == 30
    assert {"cosine", "bi", "angular", "mssd", "masd", "simdiff"} <= set(data["layers"][0])
    assert {"output_cosine", "cka", "angular_boundaries"} <= set(data["matrices"])
    assert "[score]" in r.stderr  # progress on stderr

    r = cli("plan", "--scores", scores, "--criterion", "simdiff", "--ratio", 0.25, "--out", plan)
    assert r.returncode == 0, r.stderr
    p = json.loads(plan.read_text())
    assert len(p["removed_layers"]) == 8 and len(p["kept_layers"]) == 22

    r = cli("prune", "--model", "default", "--plan", plan, "--out", out, "--zip",
            "--eval-windows", 1, "--eval-seq-len", 64)
    assert r.returncode == 0, r.stderr
    res = _last_json(r.stdout)
    assert res["num_layers"] == 22 and res["ppl_pruned"] > 0 and (tmp_path / "pruned.zip").is_file()
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 22

    r = cli("ppl", "--model", out, "--windows", 2, "--seq-len", 64, "--json")
    assert r.returncode == 0, r.stderr
    res = _last_json(r.stdout)
    assert res["ppl"] > 1 and res["tokens"] == 2 * 63

    r = cli("prune", "--model", "default", "--plan", plan, "--out", out, "--eval-windows", 0)
    assert r.returncode == 2 and "already exists" in r.stderr


@pytest.mark.parametrize("args, message", [
    (["ppl", "--model", "./no/such/dir", "--json"], "no such model"),
    (["ppl", "--model", "/tmp/definitely-missing.gguf"], "no such GGUF file"),
    (["plan", "--scores", "missing.json", "--ratio", "0.2", "--out", "x.json"], "no such scores file"),
])
def test_bad_input_gives_one_line_error(args, message):
    r = run_cli(*args, timeout=120)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ")


def test_bad_ratio_is_refused(tmp_path, embedded_scores, cli):
    embedded_scores.save(tmp_path / "s.json")
    for ratio in ("1.5", "0", "nan", "-0.2"):
        r = cli("plan", "--scores", tmp_path / "s.json", "--ratio", ratio, "--out", tmp_path / "p.json")
        assert r.returncode == 2 and "ratio must be between 0 and 1" in r.stderr, r.stderr
    assert not (tmp_path / "p.json").exists()
