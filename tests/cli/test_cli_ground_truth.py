"""CLI for the ground truth: damage (--attach, --plans), agreement, report (--figure), and their errors
(in-process ``main``: the ``cli`` fixture)."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from simdiff_core import make_windows
from simdiff_core.evaluation.damage_record import Damage
from simdiff_core.pruning.plan import Plan, make_plan

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def ids(tokenizer):
    return make_windows(tokenizer, "wikitext2", n=3, seq_len=24)


# ------------------------------------------------------------------ report
def _count_graph_divs(html_text: str) -> int:
    return len(re.findall(r'class="plotly-graph-div"', html_text))


@pytest.mark.skipif(CHROMIUM is None, reason="kaleido needs Chromium (apt-get install chromium)")
def test_cli_damage_agreement_report_and_figure(tiny_bundle, ids, tmp_path, cli):
    lm, scores, _ = tiny_bundle
    model_dir = tmp_path / "tiny"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    scores.save(tmp_path / "scores.json")
    make_plan(scores, "cosine", num=2).save(tmp_path / "plan.json")
    r = cli("damage", "--model", model_dir, "--samples", 3, "--seq-len", 24, "--out", tmp_path / "damage.json",
            "--attach", tmp_path / "scores.json", "--plans", tmp_path / "plan.json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["num_layers"] == 6 and res["block_executions"] < res["naive_block_executions"]
    d = Damage.load(tmp_path / "damage.json")
    assert d.meta["sets"][0]["removed"] == Plan.load(tmp_path / "plan.json").removed_layers
    assert "damage_loss" in json.loads((tmp_path / "scores.json").read_text())["layers"][0]

    r = cli("agreement", "--scores", tmp_path / "scores.json", "--ratio", 0.34, "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout.strip().splitlines()[-1])["rows"]
    assert len(rows) == 8 and all(row["k"] == 2 for row in rows)

    r = cli("report", "--scores", tmp_path / "scores.json", "--damage", tmp_path / "damage.json",
            "--plan", tmp_path / "plan.json", "--ppl-before", 20, "--ppl-after", 25,
            "--out", tmp_path / "r.html", "--figure", tmp_path / "fig.png")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["figures"] == 6 and _count_graph_divs((tmp_path / "r.html").read_text()) == 6
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    r = cli("report", "--scores", tmp_path / "scores.json", "--out", tmp_path / "x.html", "--figure", "f.gif")
    assert r.returncode == 2 and r.stderr.strip().startswith("error: ") and not (tmp_path / "x.html").exists()
