"""Uncertainty (bootstrap bands, plan stability), calibration sensitivity, run overlays and the block
drill-down: library checks against independent computations on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simdiff_core import SimDiffError, make_windows, score_model
from simdiff_core.analysis.score import Scores
from simdiff_core.analysis.uncertainty import bands, replicate_metrics, resample_weights
from simdiff_core.pruning.stability import plan_stability
from tests.support.builders import constructed_scores as _constructed


@pytest.fixture(scope="module")
def ids32(tokenizer):
    return make_windows(tokenizer, "wikitext2", n=32, seq_len=24)


def test_window_sums_equal_a_direct_per_window_computation(tiny, ids32):
    lm = tiny("llama", 4)
    ids = ids32[:3]
    sc = score_model(lm, ids, batch_size=2)
    with torch.no_grad():
        hs = lm.model(ids, output_hidden_states=True).hidden_states  # entry i+1 = output of block i (not the last)
    for i in range(3):
        x, y = hs[i].double(), hs[i + 1].double()
        cos = torch.nn.functional.cosine_similarity(x, y, dim=-1)  # (N, S)
        rel = ((y - x) ** 2).sum(-1) / (x ** 2).sum(-1)
        for w in range(3):
            n = sc.windows["tokens"][w]
            assert n == ids.shape[1]
            assert sc.windows["cos"][i][w] / n == pytest.approx(cos[w].mean().item(), abs=1e-5)
            assert sc.windows["sq_rel"][i][w] / n == pytest.approx(rel[w].mean().item(), rel=1e-4)


def test_a_bootstrap_replicate_equals_scoring_the_resampled_windows(tiny, ids32):
    """Replicate b is defined as scoring the windows drawn with replacement: check it by doing exactly that."""
    lm = tiny("llama", 4)
    ids = ids32[:5]
    sc = score_model(lm, ids)
    reps = replicate_metrics(sc, n_boot=3, seed=7)
    W = resample_weights(5, 3, seed=7)
    for b in range(3):
        drawn = torch.cat([ids[w:w + 1].repeat(int(W[w, b]), 1) for w in range(5) if W[w, b] > 0])
        direct = score_model(lm, drawn).layers
        for k in ("cosine", "mssd", "masd_rel", "angular"):
            assert reps[k][:, b] == pytest.approx([l[k] for l in direct], rel=1e-4, abs=1e-6)


def test_bands_contain_the_full_value_and_shrink_with_more_windows(tiny, ids32):
    lm = tiny("llama", 6)
    few, many = score_model(lm, ids32[:4]), score_model(lm, ids32)
    bf, bm = bands(few), bands(many)
    for sc, b in ((few, bf), (many, bm)):
        for k in ("cosine", "mssd", "masd", "mssd_rel", "masd_rel"):
            full = np.array([l[k] for l in sc.layers])
            lo, hi = np.array(b[k]["lo"]), np.array(b[k]["hi"])
            assert np.all(lo <= full * (1 + 1e-6) + 1e-9) and np.all(full <= hi * (1 + 1e-6) + 1e-9), k
            assert np.allclose(b[k]["value"], full, rtol=1e-5, atol=1e-7)
        fused = sc.importance("simdiff", alpha=0.5)
        assert np.allclose(b["simdiff"]["value"], fused)
        assert np.all(np.array(b["simdiff"]["lo"]) <= np.array(b["simdiff"]["hi"]))
    for k in ("cosine", "mssd_rel", "masd_rel"):
        width = lambda b: np.mean(np.array(b[k]["hi"]) - np.array(b[k]["lo"]))  # noqa: E731
        assert width(bm) < 0.75 * width(bf), k  # 8x the windows: about 1/sqrt(8) the width
    assert bands(many) == bm  # seeded: the same bands twice


def test_stability_is_one_for_a_block_removed_in_every_resample():
    rng = np.random.default_rng(0)
    cos = [list(0.5 + 0.05 * rng.standard_normal(10)) for _ in range(6)]
    cos[2] = [0.99] * 10           # always the most redundant block
    cos[3] = [0.80, 0.20] * 5      # average 0.5 like the others, but noisy: sometimes picked
    sc = _constructed(cos)
    s = plan_stability(sc, "cosine", num=1, n_boot=100)
    assert s.removed == [2] and s.frequency[2] == 1.0 and s.stable and s.unstable == []
    s2 = plan_stability(sc, "cosine", num=2, n_boot=100)
    # the second block is whichever of the noisy ones wins a resample: never certain
    assert s2.frequency[2] == 1.0 and sum(s2.frequency) == pytest.approx(2.0)
    assert any(0 < f < 1 for f in s2.frequency) and s2.contenders
    assert s2.unstable == [i for i in s2.removed if s2.frequency[i] < 0.75]


def test_scores_json_round_trips_windows_and_old_files_still_load(tiny, ids32, tmp_path):
    sc = score_model(tiny("llama", 4), ids32[:3])
    sc.save(tmp_path / "s.json")
    back = Scores.load(tmp_path / "s.json")
    assert back.windows == sc.windows and bands(back) == bands(sc)
    d = sc.to_dict()
    d.pop("windows")
    old = Scores.from_dict(d)  # a file written before per-window statistics existed
    assert old.windows == {}
    with pytest.raises(SimDiffError, match="per-window"):
        bands(old)
    d["windows"] = dict(sc.windows, cos=[[0.0]])
    with pytest.raises(SimDiffError, match="per-window"):
        Scores.from_dict(d)


def test_cli_plan_stability_reports_membership_frequencies(tmp_path, tiny, ids32):
    import json

    from tests.support.repo import run_cli
    from simdiff_core.pruning.stability import plan_stability

    sc = score_model(tiny("llama", 6), ids32[:6])
    sc.save(tmp_path / "s.json")
    r = run_cli("plan", "--scores", tmp_path / "s.json", "--num", 2, "--stability", 50, "--seed", 3,
                "--out", tmp_path / "p.json", timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    direct = plan_stability(Scores.load(tmp_path / "s.json"), "simdiff", num=2, n_boot=50, seed=3)
    assert out["stability"]["frequency"] == {str(i): round(f, 4) for i, f in enumerate(direct.frequency) if f > 0}
    assert sum(out["stability"]["frequency"].values()) == pytest.approx(2.0, abs=1e-3)
    assert json.loads((tmp_path / "p.json").read_text())["details"]["stability"]["frequency"] == direct.frequency
    d = sc.to_dict()
    d.pop("windows")
    (tmp_path / "old.json").write_text(json.dumps(d))
    r = run_cli("plan", "--scores", tmp_path / "old.json", "--num", 2, "--stability", 50, "--out", tmp_path / "q.json",
                timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: ") and "per-window" in r.stderr
    assert not (tmp_path / "q.json").exists()


@pytest.mark.parametrize("criterion,norm", [("simdiff", "rank"), ("simdiff", "robust"), ("cosine", "rank"),
                                            ("mssd_rel", "rank")])
def test_vectorised_replicates_equal_the_planner_per_replicate(tiny, ids32, criterion, norm):
    from simdiff_core.analysis.metrics import importance
    from simdiff_core.analysis.uncertainty import replicate_importance, replicate_layers
    from simdiff_core.pruning.plan import select_lowest
    from simdiff_core.pruning.stability import select_lowest_cols

    sc = score_model(tiny("llama", 6), ids32[:6])
    reps = replicate_metrics(sc, n_boot=40, seed=1)
    reps["mssd_rel"][:, 5] = 0.5  # all tied in one replicate: ties must average like metrics.normalise
    vec = replicate_importance(reps, criterion, alpha=0.3, beta=0.7, norm=norm)
    sel = select_lowest_cols(vec, 2, keep_first=True, keep_last=False)
    for b in range(40):
        one = importance(replicate_layers(reps, b), criterion, alpha=0.3, beta=0.7, norm=norm)
        assert vec[:, b] == pytest.approx(one, abs=1e-12)
        assert np.flatnonzero(sel[:, b]).tolist() == select_lowest(one, 2, keep_first=True, keep_last=False)


# ------------------------------------------------------------------ calibration sensitivity, overlays
def test_sensitivity_identical_sources_agree_and_different_texts_are_measured(tiny, tokenizer):
    from simdiff_core.data.text import load_text
    from simdiff_core.pruning.sensitivity import sensitivity, spearman

    lm = tiny("llama", 6)
    wiki = score_model(lm, make_windows(tokenizer, "wikitext2", n=3, seq_len=32))
    code = score_model(lm, make_windows(tokenizer, "shipped:code", n=3, seq_len=32))
    dia = score_model(lm, make_windows(tokenizer, load_text("shipped:dialogue"), n=3, seq_len=32))
    same = sensitivity({"a": wiki, "b": wiki}, num=2)
    assert same.rho["a", "b"] == pytest.approx(1.0) and same.flips == {} and same.overlap["a", "b"]["jaccard"] == 1
    rep = sensitivity({"wiki": wiki, "code": code, "dialogue": dia}, num=2)
    import pandas as pd

    for (a, b), rho in rep.rho.items():  # against pandas' Spearman (its own average ranks of ties)
        assert rho == pytest.approx(pd.Series(rep.importance[a]).corr(pd.Series(rep.importance[b]), method="spearman"))
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    every = set(rep.removed["wiki"]) & set(rep.removed["code"]) & set(rep.removed["dialogue"])
    assert set(rep.agreed) == every
    for blk, who in rep.flips.items():
        assert blk not in every and who == [n for n in rep.removed if blk in rep.removed[n]]


def test_relative_depth_overlay_maps_block_counts():
    from simdiff_core.pruning.sensitivity import overlay_frame, relative_depth

    assert relative_depth(5).tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    assert relative_depth(1).tolist() == [0.0]

    def fake(L):
        return Scores(f"m{L}", L, [{"index": i, "cosine": float(i), "mssd": 1.0, "masd": 1.0} for i in range(L)])

    df, rel = overlay_frame({"deep": fake(30), "shallow": fake(16)}, "cosine")
    assert rel
    deep, shallow = df[df.run == "deep"], df[df.run == "shallow"]
    assert len(deep) == 30 and len(shallow) == 16
    assert deep.x.iloc[0] == 0 and deep.x.iloc[-1] == 1 and shallow.x.iloc[-1] == 1
    assert shallow.x.iloc[8] == pytest.approx(8 / 15) and deep.x.iloc[29 // 2] == pytest.approx(14 / 29)
    df2, rel2 = overlay_frame({"a": fake(6), "b": fake(6)}, "cosine")
    assert not rel2 and df2.x.tolist() == list(range(6)) * 2


# ------------------------------------------------------------------ block drill-down
def test_drill_down_tokens_equal_a_direct_computation(tiny, ids32):
    from simdiff_core.analysis.drilldown import drill_down

    lm = tiny("qwen2", 5)
    ids = ids32[:3]
    d = drill_down(lm, ids, block=2, windows=2, top=7)
    with torch.no_grad():
        hs = lm.model(ids[:2], output_hidden_states=True).hidden_states
    x, y = hs[2].double(), hs[3].double()  # input and output of block 2 (not the last block: no final norm)
    r = ((y - x).norm(dim=-1) / x.norm(dim=-1)).numpy()
    assert d.values.shape == (2, ids.shape[1]) and np.allclose(d.values, r, rtol=1e-4)
    want = sorted(((r[w, p], w, p) for w in range(2) for p in range(ids.shape[1])), reverse=True)[:7]
    assert [(t["window"], t["position"]) for t in d.top] == [(w, p) for _, w, p in want]
    assert [t["value"] for t in d.top] == pytest.approx([v for v, _, _ in want], rel=1e-4)
    t0 = d.top[0]
    assert t0["token"] == lm.tokenizer.decode([int(ids[t0["window"], t0["position"]])])
    with pytest.raises(SimDiffError, match="does not exist"):
        drill_down(lm, ids, block=5)


def test_removed_blocks_are_marked_whatever_their_importance():
    from simdiff_core.export import figures as charts

    v = np.array([0.0, 0.5, 0.9, 0.0, 0.3])
    spec = charts.bars_spec(v, [0, 3])
    marks = [t for t in spec["data"] if t.get("name") == "removed"]
    assert len(marks) == 1 and marks[0]["x"] == [0, 3] and all(y > 0 for y in marks[0]["y"])
    assert marks[0]["customdata"] == [0.0, 0.0]  # the hover keeps the true value
    assert charts.outliers([1, 1.1, 0.9, 1.2, 40, 1.0, 0.95, 1.05, 1.1, 1.0]) == [4]
    assert charts.outliers(np.linspace(1, 2, 30)) == []


def test_html_report_carries_bands_stability_and_sensitivity(tiny, ids32):
    from simdiff_core.export.report import build_report_html
    from simdiff_core.pruning.plan import make_plan
    from simdiff_core.pruning.sensitivity import sensitivity

    lm = tiny("llama", 6)
    sc = score_model(lm, ids32[:5])
    plan = make_plan(sc, "simdiff", num=2, alpha=0.5)
    other = score_model(lm, ids32[5:10])
    sens = sensitivity({"first": sc, "second": other}, num=2)
    doc, _ = build_report_html(sc, plan=plan, sensitivity=sens)
    b = bands(sc, fused={"alpha": 0.5})
    st = plan_stability(sc, "simdiff", num=2, alpha=0.5)
    assert "Uncertainty: bootstrap bands" in doc and f"{b['cosine']['lo'][3]:.4g}" in doc
    assert "Plan stability" in doc and ("stable" if st.stable else f"unstable: blocks {st.unstable}") in doc
    assert "Calibration sensitivity" in doc and f"{round(sens.rho['first', 'second'], 4)}" in doc
    old = Scores.from_dict({k: v for k, v in sc.to_dict().items() if k != "windows"})
    doc2, _ = build_report_html(old, plan=plan)
    assert "bootstrap bands" not in doc2 and "Plan stability" not in doc2  # old scores files: no section


def test_cli_sensitivity_overlay_and_drilldown(tmp_path, tiny, ids32):
    import json

    from tests.support.repo import run_cli
    from simdiff_core.analysis.drilldown import drill_down
    from simdiff_core.pruning.sensitivity import overlay_frame

    a = score_model(tiny("llama", 6), ids32[:3])
    b = score_model(tiny("llama", 4), ids32[:3])
    a.save(tmp_path / "a.json")
    b.save(tmp_path / "b.json")
    r = run_cli("overlay", "--scores", tmp_path / "a.json", "--scores", tmp_path / "b.json", "--metric", "masd_rel",
                "--out", tmp_path / "o.csv", timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["relative_depth"] is True
    import pandas as pd

    csv = pd.read_csv(tmp_path / "o.csv")
    ref, _ = overlay_frame({"a": a, "b": b}, "masd_rel")
    assert np.allclose(csv["x"], ref["x"]) and np.allclose(csv["value"], ref["value"])
    r = run_cli("overlay", "--scores", tmp_path / "a.json", "--scores", tmp_path / "nope.json", timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: ")
    r = run_cli("sensitivity", "--model", "default", "--calib", "wikitext2", "--calib", "shipped:dialogue",
                "--samples", 2, "--seq-len", 32, "--num", 4, timeout=600)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    assert rep["sources"] == ["wikitext2", "shipped:dialogue"] and len(rep["pairs"]) == 1
    assert all(len(v) == 4 for v in rep["removed"].values())
    assert set(rep["agreed"]) == set(rep["removed"]["wikitext2"]) & set(rep["removed"]["shipped:dialogue"])
    r = run_cli("drilldown", "--model", "default", "--block", 11, "--windows", 2, "--seq-len", 32, "--top", 3,
                timeout=600)
    assert r.returncode == 0, r.stderr
    top = json.loads(r.stdout.strip().splitlines()[-1])["top"]
    assert len(top) == 3 and top[0]["value"] >= top[1]["value"] >= top[2]["value"]
    r = run_cli("drilldown", "--model", "default", "--block", 99, "--windows", 1, "--seq-len", 16, timeout=600)
    assert r.returncode == 2 and "does not exist" in r.stderr
