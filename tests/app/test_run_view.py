"""The quick view of a stored run (``/view/<run>``, ui/run_view.py): the page a run's link returns outside
any Streamlit session. Its numbers are checked against direct formulas on the original scores, and its
charts against what the explorer's Layer curves page draws for the same link; bad links and missing,
corrupt or deleted runs are one-line 404 pages. The browser side (drawing, sliders) is checked in
tests/browser/test_runs_browser.py.

The run is the embedded SmolLM2's calibration (shared fixture), saved into this file's own $SIMDIFF_HOME.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.support.apptest_figures import figures

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_id(embedded_scores):
    from simdiff_core.runs import RunStore, run_meta

    return RunStore().save(embedded_scores, meta=run_meta(embedded_scores))


def parts(body: bytes) -> tuple[dict, dict]:
    """The payload and the initial state a view page carries."""
    text = body.decode()
    get = lambda name: json.loads(re.search(rf'<script type="application/json" id="{name}">(.*?)</script>',  # noqa: E731
                                            text, re.S).group(1))
    return get("sd-payload"), get("sd-init")


def arr(v) -> list:
    import base64

    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).tolist()
    return list(v)


def canon(x) -> str:
    """JSON with sorted keys and 12 significant digits (key order and float noise are no difference)."""
    def walk(v):
        if isinstance(v, float):
            return float(f"{v:.12g}")
        if isinstance(v, dict):
            return {k: walk(v[k]) for k in sorted(v)}
        return [walk(i) for i in v] if isinstance(v, list) else v
    return json.dumps(walk(x))


def naive_plan(imp, k: int) -> list[int]:
    """The k lowest-importance blocks, the first and the last kept: a plain sort, not the planner."""
    L = len(imp)
    return sorted(sorted(range(1, L - 1), key=lambda i: (imp[i], i))[:k])


def test_the_view_carries_the_runs_curves_and_the_links_plan(run_id, embedded_scores):
    from simdiff_core.analysis.metrics import simdiff_importance
    from ui import live_slider, run_view

    status, body, gz = run_view.render(run_id, {"ratio": "0.2", "alpha": "0.35", "criterion": "simdiff"})
    assert status == 200 and gzip.decompress(gz) == body
    payload, init = parts(body)
    L = embedded_scores.num_layers
    k = round(0.2 * L)
    imp = simdiff_importance(embedded_scores.layers, alpha=0.35, scale_free=True, beta=0.5)   # the direct formula
    assert init["k"] == k and init["a"] == "0.35" and init["problem"] is None
    assert init["dropped"] == naive_plan(imp, k) == live_slider.removed(payload, k, "0.35")
    bars = live_slider.assemble(payload, "simdiff", k, "0.35")
    bar = next(t for t in bars["data"] if t.get("type") == "bar")
    assert np.allclose([c[1] for c in bar["customdata"]], imp, rtol=0, atol=1e-12)   # the hover: the true value
    stub = 0.015 * max(abs(v) for v in imp)   # a near-zero bar is drawn as a 1.5 % stub
    assert np.allclose(arr(bar["y"]), [v if abs(v) >= stub else stub for v in imp], rtol=0, atol=1e-12)
    red = sorted(round((s["x0"] + s["x1"]) / 2) for s in bars["layout"]["shapes"] if s.get("name") == "dropped")
    assert red == init["dropped"]
    curves = live_slider.assemble(payload, "curves", k, "0.35")
    cos = [l["cosine"] for l in embedded_scores.layers]
    assert any(np.allclose(arr(t["y"]), cos, rtol=0, atol=1e-12) for t in curves["data"] if len(arr(t["y"])) == L)
    # the view loads plotly's basic bundle: every trace it can draw must be a type that bundle has
    frames = [f for c in payload["charts"].values() for f in [c["base"], *c["frames"].values()]]
    assert {t.get("type", "scatter") for f in frames for t in f.get("data", [])} <= {"scatter", "bar"}
    text = body.decode()
    assert run_id in text and embedded_scores.model in text and "Open in SimDiff Explorer" in text
    assert f"../Layer_curves?run={run_id}&amp;ratio=0.2&amp;alpha=0.35" in text
    # equal settings are one page (built once), whatever the query spelled; a non-default toggle is in the link
    assert run_view.render(run_id, {})[1] == run_view.render(run_id, {"ratio": "0.25", "bands": "1"})[1]
    logged = run_view.render(run_id, {"log": "1", "criterion": "cosine"})[1].decode()
    assert f"../Layer_curves?run={run_id}&amp;ratio=0.25&amp;criterion=cosine&amp;alpha=0.5&amp;log=1" in logged


def test_the_view_draws_what_the_explorers_layer_curves_page_draws(run_id):
    """The same link in the explorer (a Streamlit session, AppTest) and in the quick view: equal figures."""
    from ui import live_slider, run_view

    query = {"ratio": "0.3", "alpha": "0.6", "log": "1", "level": "0.8"}
    _, body, _ = run_view.render(run_id, query)
    payload, init = parts(body)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    for key, v in {"run": run_id, **query}.items():
        at.query_params[key] = v
    at.run()
    at.switch_page("pages/Layer_curves.py").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    page = figures(at)
    for i, chart in enumerate(("curves", "simdiff")):
        view = live_slider.assemble(payload, chart, init["k"], init["a"])
        assert canon(view["data"]) == canon(page[i]["data"]), chart
        assert canon(view["layout"]) == canon(page[i]["layout"]), chart


def test_bad_links_missing_corrupt_and_deleted_runs_are_one_line_pages(embedded_scores, tmp_path):
    from simdiff_core.runs import RunStore, run_meta
    from ui import live_slider, run_view

    store = RunStore(home=tmp_path / "home")
    rid = store.save(embedded_scores, meta=run_meta(embedded_scores))
    status, body, _ = run_view.render(rid, {"ratio": "7", "criterion": "nope", "alpha": "0.37"}, store)
    assert status == 200   # the page renders with the defaults and says what it ignored
    text = body.decode()
    assert "link parameter ratio=&#x27;7&#x27; ignored: expected a number in [0.01, 1]" in text
    assert "link parameter criterion=&#x27;nope&#x27; ignored" in text
    assert "link parameter alpha=&#x27;0.37&#x27; ignored: expected a multiple of 0.05 in [0, 1]" in text
    _, init = parts(body)
    assert init["k"] == round(0.25 * embedded_scores.num_layers) and init["criterion"] == "simdiff"

    for bad in ("no-such-run", "../../etc"):
        status, body, gz = run_view.render(bad, {}, store)
        assert status == 404 and gz is None
        assert body.decode().count('class="err"') == 1
    assert "no run &#x27;no-such-run&#x27;" in run_view.render("no-such-run", {}, store)[1].decode()

    d = embedded_scores.to_dict()
    d["layers"][3]["cosine"] = 0.123
    store.save(d, key=store.info(rid).key, replace=True)   # recomputed: a new file under the same id
    payload, _ = parts(run_view.render(rid, {}, store)[1])
    assert arr(live_slider.assemble(payload, "curves", 1, "0.50")["data"][2]["y"])[3] == pytest.approx(0.123)

    other = store.save(embedded_scores, key="second-run-key")
    path = store.files / store.info(other).file
    path.write_bytes(path.read_bytes()[:100])   # truncated on disk
    status, body, _ = run_view.render(other, {}, store)
    assert status == 404 and "unreadable" in body.decode()
    assert run_view.render(rid, {}, store)[0] == 200   # every other run still opens

    store.delete(rid)   # a view built (and kept) before the delete is not served after it
    status, body, _ = run_view.render(rid, {}, store)
    assert status == 404 and "no run" in body.decode()


def test_a_read_only_library_serves_the_view(run_id, monkeypatch):
    from simdiff_core.runs import RunStore
    from ui import run_view

    monkeypatch.setenv("SIMDIFF_RUNS_READONLY", "1")
    store = RunStore()
    assert store.readonly
    status, body, _ = run_view.render(run_id, {"ratio": "0.1", "bands": "0"}, store)
    assert status == 200 and "bootstrap band" not in body.decode()


def test_the_pages_offer_the_quick_link_only_where_the_route_is_served(run_id, monkeypatch):
    from ui import run_view

    def runs_page(query=None):
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
        for k, v in {"run": run_id, **(query or {})}.items():
            at.query_params[k] = v
        at.run()
        at.switch_page("pages/Runs.py").run()
        assert not at.exception and not at.error
        return " ".join(m.value for m in at.markdown)

    assert "/view/" not in runs_page()   # streamlit run app.py: no route, no link
    monkeypatch.setitem(run_view._SERVED, "on", True)
    assert f"[Quick view of this run](/view/{run_id}?ratio=0.3&alpha=0.5&log=1)" in runs_page({"ratio": "0.3", "log": "1"})


def test_warming_builds_the_default_view_of_the_recent_runs(run_id, monkeypatch):
    """serve.py's start-up warming: afterwards the default link of the run is served from the kept pages."""
    from ui import run_view

    monkeypatch.setattr(run_view, "_CACHE", run_view.OrderedDict())
    run_view.warm()
    assert [k[1] for k in run_view._CACHE] == [run_id]
    built = run_view._CACHE[next(iter(run_view._CACHE))]
    monkeypatch.setattr(run_view, "build", None)   # a rebuild would fail: the page must come from the cache
    assert run_view.render(run_id, {"ratio": "0.25"})[1:] == built


def test_visitors_asking_at_once_get_one_build_and_the_same_page(run_id, monkeypatch):
    import threading
    import time

    from ui import run_view

    monkeypatch.setattr(run_view, "_CACHE", run_view.OrderedDict())
    calls, real = [], run_view.build

    def slow_build(scores, s):
        calls.append(threading.get_ident())
        time.sleep(0.3)   # keep the build in flight while the other visitors arrive
        return real(scores, s)

    monkeypatch.setattr(run_view, "build", slow_build)
    got = [None] * 4
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, run_view.render(run_id, {"alpha": "0.7"})))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and not run_view._BUILDING
    monkeypatch.setattr(run_view, "_CACHE", run_view.OrderedDict())
    monkeypatch.setattr(run_view, "build", real)
    solo = run_view.render(run_id, {"alpha": "0.7"})   # built alone, from scratch
    def same(body: bytes) -> bytes:   # a payload's id is a fresh uuid per build (ui/live_slider.py)
        return body.replace(parts(body)[0]["id"].encode(), b"ID")

    assert len({g[1] for g in got}) == 1 and all(g[0] == 200 and same(g[1]) == same(solo[1]) for g in got)


def test_a_partial_run_says_so_and_a_run_that_cannot_be_drawn_is_one_line(embedded_scores, tmp_path, monkeypatch):
    from simdiff_core.runs import RunStore
    from ui import run_view

    store = RunStore(home=tmp_path / "home")
    d = embedded_scores.to_dict()
    d["meta"] = dict(d["meta"], partial={"windows": 1, "of": 2})
    rid = store.save(d)
    status, body, _ = run_view.render(rid, {}, store)
    assert status == 200 and "Partial scores: calibration was cancelled after 1 of 2 windows." in body.decode()

    def broken(scores, s):
        raise KeyError("mssd")   # what a chart would raise on a run lacking a metric

    monkeypatch.setattr(run_view, "build", broken)
    monkeypatch.setattr(run_view, "_CACHE", run_view.OrderedDict())
    status, body, gz = run_view.render(rid, {}, store)
    text = body.decode()
    assert status == 500 and gz is None and text.count('class="err"') == 1 and "Traceback" not in text
    assert f"cannot draw run {rid}: unexpected KeyError" in text
