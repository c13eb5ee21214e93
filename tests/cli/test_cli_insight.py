"""CLI for the insight features: plan --stability, sensitivity, overlay and drill-down (in-process ``main``:
the ``cli`` fixture)."""

from __future__ import annotations

import numpy as np
import pytest

from simdiff_core import score_model
from simdiff_core.analysis.score import Scores


def test_cli_plan_stability_reports_membership_frequencies(tmp_path, tiny, ids32, cli):
    import json

    from simdiff_core.pruning.stability import plan_stability

    sc = score_model(tiny("llama", 6), ids32[:6])
    sc.save(tmp_path / "s.json")
    r = cli("plan", "--scores", tmp_path / "s.json", "--num", 2, "--stability", 50, "--seed", 3,
            "--out", tmp_path / "p.json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    direct = plan_stability(Scores.load(tmp_path / "s.json"), "simdiff", num=2, n_boot=50, seed=3)
    assert out["stability"]["frequency"] == {str(i): round(f, 4) for i, f in enumerate(direct.frequency) if f > 0}
    assert sum(out["stability"]["frequency"].values()) == pytest.approx(2.0, abs=1e-3)
    assert json.loads((tmp_path / "p.json").read_text())["details"]["stability"]["frequency"] == direct.frequency
    d = sc.to_dict()
    d.pop("windows")
    (tmp_path / "old.json").write_text(json.dumps(d))
    r = cli("plan", "--scores", tmp_path / "old.json", "--num", 2, "--stability", 50, "--out", tmp_path / "q.json")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: ") and "per-window" in r.stderr
    assert not (tmp_path / "q.json").exists()


def test_cli_sensitivity_overlay_and_drilldown(tmp_path, tiny, ids32, cli):
    import json

    from simdiff_core.analysis.drilldown import drill_down
    from simdiff_core.pruning.sensitivity import overlay_frame

    a = score_model(tiny("llama", 6), ids32[:3])
    b = score_model(tiny("llama", 4), ids32[:3])
    a.save(tmp_path / "a.json")
    b.save(tmp_path / "b.json")
    r = cli("overlay", "--scores", tmp_path / "a.json", "--scores", tmp_path / "b.json", "--metric", "masd_rel",
            "--out", tmp_path / "o.csv")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["relative_depth"] is True
    import pandas as pd

    csv = pd.read_csv(tmp_path / "o.csv")
    ref, _ = overlay_frame({"a": a, "b": b}, "masd_rel")
    assert np.allclose(csv["x"], ref["x"]) and np.allclose(csv["value"], ref["value"])
    r = cli("overlay", "--scores", tmp_path / "a.json", "--scores", tmp_path / "nope.json")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: ")
    r = cli("sensitivity", "--model", "default", "--calib", "wikitext2", "--calib", "shipped:dialogue",
            "--samples", 2, "--seq-len", 32, "--num", 4)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    assert rep["sources"] == ["wikitext2", "shipped:dialogue"] and len(rep["pairs"]) == 1
    assert all(len(v) == 4 for v in rep["removed"].values())
    assert set(rep["agreed"]) == set(rep["removed"]["wikitext2"]) & set(rep["removed"]["shipped:dialogue"])
    r = cli("drilldown", "--model", "default", "--block", 11, "--windows", 2, "--seq-len", 32, "--top", 3)
    assert r.returncode == 0, r.stderr
    top = json.loads(r.stdout.strip().splitlines()[-1])["top"]
    assert len(top) == 3 and top[0]["value"] >= top[1]["value"] >= top[2]["value"]
    r = cli("drilldown", "--model", "default", "--block", 99, "--windows", 1, "--seq-len", 16)
    assert r.returncode == 2 and "does not exist" in r.stderr
