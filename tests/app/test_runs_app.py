"""The run library in the app: calibrations saved and reopened, deep links, the Runs page, and opening a
run on every score-only page with no model loaded (numbers checked against the original scores).

Each test has its own $SIMDIFF_HOME. Calibrations are 2 x 32 tokens of the embedded model (the model
load is shared through ``st.cache_resource``).
"""

from __future__ import annotations

import base64
import json

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.support.apptest_figures import figures, html_bodies

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
CURVES, PREVIEW, COMPARE = "pages/Layer_curves.py", "pages/Prune_preview.py", "pages/Compare_runs.py"
RUNS, DRILL = "pages/Runs.py", "pages/Block_drill_down.py"
T = 300


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One library for this module's tests (each calibration costs seconds; tests read it, add to it)."""
    import os

    old = os.environ.get("SIMDIFF_HOME")
    os.environ["SIMDIFF_HOME"] = str(tmp_path_factory.mktemp("runs_home"))
    yield os.environ["SIMDIFF_HOME"]
    os.environ["SIMDIFF_HOME"] = old


def table_with(at, column: str):
    """The page's dataframe that has ``column`` (AppTest does not look dataframes up by key)."""
    for df in at.dataframe:
        v = df.value
        if column in v.columns:
            return v
    raise AssertionError(f"no table with a {column!r} column")


def app(query: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=T)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    return at.run()


def calibrate(at, samples=2, seq_len=32, kind="WikiText-2 (shipped)"):
    at.radio(key="calib_kind").set_value(kind)
    at.number_input(key="samples").set_value(samples)
    at.number_input(key="seq_len").set_value(seq_len)
    at.button(key="calibrate").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at


def library():
    from simdiff_core.runs import RunStore

    return RunStore()


def no_model(at) -> bool:
    """Nothing in this session loaded or pinned a model."""
    return at.session_state["model_spec"] is None and "_lm_pin" not in at.session_state


def arr(v) -> list:
    """A trace array from figure JSON (plotly 6+ writes numpy arrays as base64 typed arrays)."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return a.tolist()
    return list(v)


def test_a_calibration_is_saved_and_an_identical_one_reopens_it(stored):
    original, run_id = stored
    assert run_id in [i.id for i in library().list()]
    again = calibrate(app())  # another session, identical settings on the same weights
    assert again.session_state["run_id"] == run_id
    text = " ".join(s.value for s in again.success)
    assert "from the run library, computed" in text, text
    reopened = again.session_state["scores"]
    # not recomputed: the stored forward-pass time comes back unchanged (a new pass measures its own)
    assert reopened.meta["seconds"] == original.meta["seconds"]
    assert [l["cosine"] for l in reopened.layers] == [l["cosine"] for l in original.layers]
    assert tuple(again.session_state["calib_ids"].shape) == (2, 32)
    # Recompute: a real pass (its own timing), same numbers within float noise
    again.button(key="recompute").click().run()
    assert not again.exception and not again.error
    assert not again.session_state["run_from_library"]
    fresh = again.session_state["scores"]
    assert fresh is not reopened
    assert [l["cosine"] for l in fresh.layers] == pytest.approx([l["cosine"] for l in original.layers], abs=1e-6)
    # another text is another run
    other = calibrate(app(), kind="Code sample (shipped, CC0)")
    assert other.session_state["run_id"] != run_id and not other.session_state["run_from_library"]


@pytest.fixture(scope="module")
def stored(home):
    """One calibrated session (its scores are the reference) and its run id."""
    at = calibrate(app())
    assert at.query_params["run"] == at.session_state["run_id"]  # the URL names the run
    return at.session_state["scores"], at.session_state["run_id"]


def test_a_link_opens_the_curves_with_the_same_numbers_and_no_model(stored):
    scores, run_id = stored
    at = app({"run": run_id, "ratio": "0.2", "alpha": "0.35", "criterion": "simdiff", "log": "1"})
    assert not at.exception and not at.error
    at.switch_page(CURVES).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert no_model(at)
    assert at.session_state["alpha"] == 0.35 and at.session_state["ratio"] == 0.2
    assert at.toggle(key="log_mssd").value is True
    figs = figures(at)
    curves = figs[0]
    got = [t for t in curves["data"] if t.get("yaxis") in (None, "y") and t.get("mode")]
    assert got, "no cosine curve"
    ys = [arr(t["y"]) for t in curves["data"] if len(arr(t.get("y", []))) == scores.num_layers]
    want = [l["cosine"] for l in scores.layers]
    assert any(np.allclose(y, want, rtol=0, atol=1e-12) for y in ys), "the cosine curve is not the run's"
    # the fused importance at the link's α, recomputed by the direct formula from the original scores
    from simdiff_core.analysis.metrics import simdiff_importance

    imp = simdiff_importance(scores.layers, alpha=0.35, scale_free=True, beta=0.5)
    bars = [arr(t["y"]) for t in figs[1]["data"] if t.get("type") == "bar"]
    assert any(np.allclose(b, imp, atol=1e-12) for b in bars)
    k = round(0.2 * scores.num_layers)
    assert any(f"the **{k}** blocks" in m.value for m in at.markdown)
    assert at.query_params["alpha"] == "0.35" and at.query_params["run"] == run_id


def test_the_preview_from_a_run_needs_no_model_and_matches_the_plan(stored):
    from simdiff_core.pruning.plan import make_plan

    scores, run_id = stored
    at = app({"run": run_id, "ratio": "0.3", "criterion": "cosine", "keep_first": "0"})
    at.switch_page(PREVIEW).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert no_model(at)
    plan = make_plan(scores, "cosine", num=round(0.3 * scores.num_layers), keep_first=False, keep_last=True)
    assert at.session_state["plan"].removed_layers == plan.removed_layers
    assert any(f"`{plan.removed_layers}`" in m.value for m in at.markdown)
    # the removed blocks' table shows the original numbers
    table = table_with(at, "importance")
    assert list(table.index) == sorted(plan.removed_layers)
    for i in table.index:
        assert table.loc[i, "cosine"] == scores.layers[i]["cosine"]
    assert "sd-gone" in html_bodies(at)


def test_compare_runs_takes_two_library_runs_without_a_model(stored):
    sa, run_a = stored
    b = calibrate(app(), kind="Dialogue sample (shipped, CC0)")
    sb = b.session_state["scores"]
    at = app()
    at.switch_page(RUNS).run()
    at.selectbox(key="runs_cmp_a").set_value(run_a)
    at.selectbox(key="runs_cmp_b").set_value(b.session_state["run_id"])
    at.button(key="runs_compare").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert no_model(at)
    spec = figures(at)[0]
    ys = [arr(t["y"]) for t in spec["data"] if t.get("mode") == "lines+markers"]
    assert np.allclose(ys[0], [l["cosine"] for l in sa.layers], atol=1e-12)
    assert np.allclose(ys[1], [l["cosine"] for l in sb.layers], atol=1e-12)


def test_runs_page_imports_renames_pins_deletes_and_opens(stored, tmp_path):
    from simdiff_core.analysis.score import Scores

    scores, run_id = stored
    at = app()
    at.switch_page(RUNS).run()
    assert not at.exception and not at.error
    table = table_with(at, "tokens")
    before = len(library().list())
    assert run_id in table.index and len(table) == before and int(table.loc[run_id, "blocks"]) == 30
    assert table.loc[run_id, "tokens"] == "2 × 32" and not table.loc[run_id, "partial"]
    # a bad file: one error line, nothing stored
    at.file_uploader(key="runs_import").set_value(("bad.json", b"{not json", "application/json")).run()
    at.button(key="runs_import_btn").click().run()
    assert len(at.error) == 1 and "\n" not in at.error[0].value and not at.exception
    assert len(library().list()) == before
    # a CLI scores.json of a 6-block model: imported, then opened with no model
    small = Scores("six-block", 6, [dict(l, index=i) for i, l in enumerate(scores.layers[:6])])
    at.file_uploader(key="runs_import").set_value(("s.json", json.dumps(small.to_dict()).encode(),
                                                   "application/json")).run()
    at.button(key="runs_import_btn").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    new = [i.id for i in library().list() if i.model == "six-block"]
    assert len(new) == 1 and len(library().list()) == before + 1
    assert at.selectbox(key="runs_pick").value == new[0]  # the picker shows the import
    at.text_input(key="runs_name").set_value("from the GPU box")
    at.button(key="runs_rename").click().run()
    at.button(key="runs_pin").click().run()
    info = {i.id: i for i in library().list()}[new[0]]
    assert info.name == "from the GPU box" and info.pinned
    at.button(key="runs_open").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.session_state["run_id"] == new[0] and at.session_state["scores"].num_layers == 6 and no_model(at)
    at.switch_page(CURVES).run()
    assert not at.exception and not at.error and no_model(at)
    # delete the imported run (the session's open run: it keeps its scores, the URL forgets the id)
    at.switch_page(RUNS).run()
    at.selectbox(key="runs_pick").set_value(new[0]).run()
    at.button(key="runs_delete").click().run()
    assert not at.exception and not at.error
    ids = [i.id for i in library().list()]
    assert new[0] not in ids and run_id in ids and at.session_state["run_id"] is None


def test_readonly_library_hides_and_refuses_writes(stored, monkeypatch):
    scores, run_id = stored
    monkeypatch.setenv("SIMDIFF_RUNS_READONLY", "1")
    at = app()
    at.switch_page(RUNS).run()
    assert not at.exception and not at.error
    keys = {getattr(w, "key", None) for w in at.button} | {getattr(w, "key", None) for w in at.get("file_uploader")}
    assert not keys & {"runs_import", "runs_import_btn", "runs_delete", "runs_pin", "runs_rename"}
    assert "runs_open" in keys
    # the library itself refuses, too
    from simdiff_core import SimDiffError

    with pytest.raises(SimDiffError):
        library().delete(run_id)
    # a calibration still works; it is just not saved
    at2 = calibrate(app(), seq_len=48)
    assert at2.session_state["run_id"] is None
    assert not [i for i in library().list() if i.seq_len == 48]


def test_a_model_page_loads_the_runs_model_on_demand_and_says_so(stored):
    scores, run_id = stored
    at = app({"run": run_id})
    at.switch_page(DRILL).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.session_state["model_spec"]["spec"] == "default"
    assert any("Loaded" in c.value and "for the open run" in c.value for c in at.caption)
    # the windows were rebuilt from the run's text: the same tokens the calibration used
    from simdiff_core import make_windows

    lm = at.session_state["_lm_pin"][1]
    assert at.session_state["calib_ids"].tolist() == make_windows(lm.tokenizer, "wikitext2", 2, 32).tolist()


def test_bad_links_are_one_line_errors_and_the_page_still_renders():
    at = app({"run": "no-such-run", "alpha": "abc", "criterion": "nonsense"})
    assert not at.exception
    errs = [e.value for e in at.error]
    assert len(errs) == 3 and all("\n" not in e for e in errs), errs
    assert any("cannot open the linked run" in e for e in errs)
    assert at.session_state["alpha"] == 0.5 and at.info  # the empty state


def test_a_link_with_an_alpha_off_the_sliders_grid_is_one_line_and_the_curves_still_draw(stored):
    """No widget sets α off the 0.05 grid the slider payloads hold; a hand-edited link did, and Layer curves
    stopped with a KeyError. Now the value is refused in one line and the default is drawn."""
    _, run_id = stored
    at = app({"run": run_id, "alpha": "0.37"})   # the link is read on the session's first run
    errs = [e.value for e in at.error]
    assert errs == ["link parameter alpha='0.37' ignored: expected a multiple of 0.05 in [0, 1]"], errs
    at.switch_page(CURVES).run()
    assert not at.exception and not at.error
    assert at.session_state["alpha"] == 0.5 and len(figures(at)) >= 2
    assert app({"run": run_id, "alpha": "0.35"}).session_state["alpha"] == 0.35


def _copy_run(run_id: str, label: str, **meta_changes) -> str:
    """A copy of a stored run under a new key with some metadata changed (what another machine or an
    edited library could hold): its id."""
    import hashlib

    run = library().open(run_id)
    meta = dict(run.info.meta, **meta_changes)
    meta["key"] = hashlib.sha256(label.encode()).hexdigest()
    return library().save(run.scores, meta=meta, key=meta["key"])


def test_figures_shared_across_sessions_equal_a_fresh_build_and_sessions_stay_independent(stored):
    """A stored run's bands, figure bases, payloads and heatmaps are built once per server (ui/state.py):
    each value equals a fresh build from a fresh read of the run, and no session can change another's."""
    from simdiff_core.analysis import derived, uncertainty
    from simdiff_core.export import figures as F
    from simdiff_core.export import figures_repair
    from ui import live_slider

    _, run_id = stored
    link = {"run": run_id, "ratio": "0.2", "alpha": "0.35"}
    a = app(link)
    a.switch_page(CURVES).run()
    assert not a.exception and not a.error, [e.value for e in a.error]
    memo_a = a.session_state["_per_scores"][1]
    b = app(link)
    b.switch_page(CURVES).run()
    assert not b.exception and not b.error
    memo_b = b.session_state["_per_scores"][1]
    pay_a = next(iter(memo_a[("_recent", "live_curves")].values()))
    pay_b = next(iter(memo_b[("_recent", "live_curves")].values()))
    # built once: the payload's id is a fresh uuid per build, and the second session got the first's
    assert pay_a["id"] == pay_b["id"]
    # ... as its own copy: nothing of one session's values is the other's object
    # (the first session's payload build filled the fused band of every α; the second got the payload whole)
    assert set(memo_b) <= set(memo_a) and ("heatmaps" in memo_b and ("bands", 0.9) in memo_b)
    for k in memo_b:
        if k != ("_recent", "live_curves"):
            assert memo_a[k] is not memo_b[k] and _same(memo_a[k], memo_b[k]), k
    assert pay_a is not pay_b

    fresh = library().open(run_id).scores  # read again from disk: no cached object involved
    assert fresh is not a.session_state["scores"]
    fusion = {"scale_free": True, "beta": 0.5}
    bands = uncertainty.bands(fresh, level=0.9)
    assert _same(memo_a[("bands", 0.9)], bands)
    base_key = next(k for k in memo_a if isinstance(k, tuple) and k[0] == "curves")
    base = F.curves_base(fresh.layers, scale_free=True, log_mssd=False, damage=None, bands=bands, clip=True)
    assert _same(memo_a[base_key], base)
    for k, v in memo_a.items():
        if isinstance(k, tuple) and k[0] == "fused_band":
            _, level, alpha, beta, sf = k
            assert _same(v, uncertainty.fused_band(fresh, alpha=alpha, level=level, beta=beta, scale_free=sf)), k
    want = live_slider.curves_payload(fresh, "simdiff", True, True, fusion, base,
                                      lambda x: uncertainty.fused_band(fresh, alpha=x, level=0.9, **fusion))
    assert _same({k: v for k, v in pay_a.items() if k != "id"}, {k: v for k, v in want.items() if k != "id"})
    m = fresh.matrices
    D, x, y = derived.nblock_angular(m["angular_boundaries"])
    heat = {name: _matrix(spec["data"][0]["z"]) for _, name, spec, _ in memo_a["heatmaps"]}
    assert set(heat) == {"output_cosine", "angular", "cka"}
    assert np.array_equal(heat["angular"], np.asarray(D, dtype=float), equal_nan=True)
    assert np.array_equal(heat["output_cosine"], np.asarray(m["output_cosine"], dtype=float), equal_nan=True)
    assert np.array_equal(heat["cka"], np.asarray(m["cka"], dtype=float), equal_nan=True)
    lin = next(v for k, v in memo_a.items() if isinstance(k, tuple) and k[0] == "linear_curve")
    assert _same(lin, figures_repair.linear_curve(fresh.layers, bands.get("linear")).to_dict())

    # a session that edits its values in place changes nothing for the next visitor
    memo_a[("bands", 0.9)]["cosine"]["lo"][0] = 123.0
    pay_a["orders"]["0.35"].reverse()
    c = app(link)
    c.switch_page(CURVES).run()
    memo_c = c.session_state["_per_scores"][1]
    assert _same(memo_c[("bands", 0.9)], bands)
    assert next(iter(memo_c[("_recent", "live_curves")].values()))["orders"] == want["orders"]
    # and the settings of one session are not another's
    c.slider(key="_w_alpha").set_value(0.8).run()
    assert c.session_state["alpha"] == 0.8 and b.session_state["alpha"] == 0.35


def _matrix(v) -> np.ndarray:
    """A heatmap's z (plotly 6+ writes numpy arrays as base64 typed arrays with a shape)."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).astype(float)
        return a.reshape([int(n) for n in str(v["shape"]).split(",")]) if "shape" in v else a
    return np.asarray(v, dtype=float)


def _same(a, b) -> bool:
    """Equal values, numpy arrays compared element-wise (exactly: a cached value is the same computation)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if hasattr(a, "equals") and hasattr(b, "equals"):  # pandas frames behind the charts
        return a.equals(b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return a == b


def test_a_run_whose_weights_differ_from_the_loaded_model_is_refused_in_one_line(stored):
    _, run_id = stored
    other = _copy_run(run_id, "other weights", weights_fingerprint="0" * 64)
    at = app({"run": other})
    at.switch_page(DRILL).run()
    assert not at.exception
    errs = [e.value for e in at.error]
    assert len(errs) == 1 and "\n" not in errs[0] and "not the model this run was scored on" in errs[0], errs
    assert at.session_state["model_spec"] is None  # nothing of the other model is used for this run


def test_the_span_heatmap_of_an_opened_run_uses_only_windows_that_hash_to_the_runs(stored):
    """An opened run has no windows in the session: the span heatmap's button loads the model (checked) and
    cuts the windows again from the run's text, using them only where they hash to the run's tokens_hash
    (the matching case, rebuilt windows equal to the calibration's, is test_a_model_page_loads_...)."""
    _, run_id = stored
    bad = _copy_run(run_id, "other tokens", tokens_hash="0" * 64)
    at = app({"run": bad})
    at.switch_page(CURVES).run()
    assert no_model(at) and at.session_state["calib_ids"] is None
    at.button(key="linear_spans_btn").click().run()
    assert not at.exception
    errs = [e.value for e in at.error]
    assert len(errs) == 1 and "token hash mismatch" in errs[0] and "\n" not in errs[0], errs
    assert at.session_state["model_spec"]["spec"] == "default"  # the weights matched: the model was loaded
    assert at.session_state["calib_ids"] is None and at.session_state["linear_spans"] is None
