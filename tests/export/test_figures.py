"""The cheap per-move figures (plain dicts over a once-validated base) against the plotly-built ones.

``curves_spec``, ``bars_spec`` and ``overlap_spec`` skip plotly's validation on every slider move, so
here plotly validates what they produce, and each trace equals the one the figure builders make
(the reference path: ``layer_curves``, ``importance_bars``, ``overlap_matrix``). No model needed.
"""

from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go
import plotly.io
import pytest

from simdiff_core.export import figures as charts


def _layers(L: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [dict(index=i, cosine=float(rng.uniform(0.8, 1)), mssd=float(rng.uniform(0, 9)),
                 masd=float(rng.uniform(0, 3)), mssd_rel=float(rng.uniform(0, 1)), masd_rel=float(rng.uniform(0, 1)))
            for i in range(L)]


def _norm(fig) -> dict:
    """A figure as plain JSON (plotly validates a dict on the way)."""
    fig = go.Figure(fig) if isinstance(fig, dict) else fig
    return json.loads(plotly.io.to_json(fig, validate=True, engine="json"))


def _arr(v):
    return charts._plain(v).tolist() if isinstance(v, dict) else list(v)


def _shapes(fig: dict) -> list[str]:
    return sorted(json.dumps(s, sort_keys=True) for s in fig["layout"].get("shapes", []))


def _trace_key(t: dict) -> tuple:
    return (t.get("name"), t.get("xaxis", "x"))


@pytest.mark.parametrize("L,dropped,scale_free,log_mssd,damage", [
    (30, [3, 4, 5, 17], True, False, None),
    (80, [0, 1, 40, 41, 42, 79], False, True, None),
    (12, [], True, False, None),
    (12, [2, 7], True, False, [0.1 * i for i in range(12)]),
])
def test_curves_spec_equals_the_plotly_built_figure(L, dropped, scale_free, log_mssd, damage):
    layers = _layers(L)
    ref = _norm(charts.layer_curves(layers, dropped=dropped, scale_free=scale_free, log_mssd=log_mssd, damage=damage))
    base = charts.curves_base(layers, scale_free=scale_free, log_mssd=log_mssd, damage=damage)
    fast = _norm(charts.curves_spec(base, dropped))   # plotly accepts it
    assert len(fast["data"]) == len(ref["data"])
    want = {_trace_key(t): t for t in ref["data"]}
    for t in fast["data"]:
        r = want[_trace_key(t)]
        for field in ("x", "y", "customdata"):
            assert np.allclose(np.asarray(_arr(t[field]), float), np.asarray(_arr(r[field]), float)), field
        assert t["mode"] == r["mode"] and t.get("marker") == r.get("marker")
    assert _shapes(fast) == _shapes(ref)
    assert {k: v for k, v in fast["layout"].items() if k != "shapes"} == \
        {k: v for k, v in ref["layout"].items() if k != "shapes"}
    dropped_traces = [t for t in fast["data"] if t.get("name") == "dropped"]
    assert all(_arr(t["x"]) == sorted(dropped) for t in dropped_traces)
    # the base is never modified by a move
    n = len(base["data"])
    charts.curves_spec(base, [1, 2])
    assert len(base["data"]) == n and base["layout"].get("shapes") in (None, [], ())


@pytest.mark.parametrize("values,dropped", [(np.linspace(-1, 2, 30), [0, 5, 6]), (np.zeros(7), []),
                                            (np.array([1e-9, 0.4, 0.9, 0.1]), [0])])
def test_bars_spec_equals_importance_bars(values, dropped):
    ref = _norm(charts.importance_bars(values, dropped, title="t"))
    fast = _norm(charts.bars_spec(values, dropped, title="t"))
    assert fast["layout"] == ref["layout"]
    a, b = fast["data"][0], ref["data"][0]
    assert np.allclose(_arr(a["y"]), _arr(b["y"])) and a["marker"] == b["marker"]
    assert a["customdata"] == b["customdata"] and _arr(a["x"]) == _arr(b["x"])


def test_overlap_spec_equals_overlap_matrix():
    sets = {"simdiff": [3, 4, 9], "cosine": [4, 9, 10], "angular": [0, 1, 2]}
    ref = _norm(charts.overlap_matrix(sets, 12))
    fast = _norm(charts.overlap_spec(sets, 12))
    assert fast["layout"] == ref["layout"]
    a, b = fast["data"][0], ref["data"][0]
    assert np.array_equal(np.asarray(_arr(a["z"])), np.asarray(_arr(b["z"])))
    assert np.array_equal(np.asarray(_arr(a["customdata"])), np.asarray(_arr(b["customdata"])))
    assert a["y"] == b["y"] == list(sets)
    # rows are the sets: row r has ones exactly at the blocks that criterion removes
    z = np.asarray(_arr(a["z"]))
    assert [list(np.flatnonzero(row)) for row in z] == list(sets.values())


def test_spec_goes_through_streamlit_plotly_chart_unchanged():
    import plotly.tools

    spec = charts.bars_spec(np.arange(5.0), [2])
    out = plotly.tools.return_figure_from_figure_or_data(charts.Spec(spec), validate_figure=True)
    assert out is spec


def test_bars_spec_with_shapes_paints_exactly_the_dropped_bars_and_keeps_the_traces():
    v = np.array([0.5, 0.0, 2.0, -0.3, 1.0])
    spec = charts.bars_spec(v, [1, 3], title="t", shapes=True)
    plain = charts.bars_spec(v, [], title="t")
    assert len(spec["data"]) == 1 and spec["data"][0]["y"] == plain["data"][0]["y"]  # no per-set trace
    assert "kept" not in spec["data"][0]["hovertemplate"] and "dropped" not in spec["data"][0]["hovertemplate"]
    red = [s for s in spec["layout"]["shapes"] if s["name"] == "dropped"]
    assert [(s["x0"] + s["x1"]) / 2 for s in red] == [1, 3]
    # each rectangle covers its whole bar: zero importance -> the 1.5% stub, negative -> down to the value
    assert [s["y1"] for s in red] == [0.015 * 2.0, -0.3] and all(s["y0"] == 0 for s in red)
    assert all(s["x1"] - s["x0"] == pytest.approx(0.85) for s in red)  # the bar width (bargap 0.15)
    curves = charts.curves_spec(charts.curves_base(_layers(6)), [2, 3, 5], markers=False)
    assert not [t for t in curves["data"] if t.get("name") == "dropped"]
    shaded = {(s["xref"], s["x0"], s["x1"]) for s in curves["layout"]["shapes"] if s.get("name") == "dropped"}
    assert {(x0, x1) for _, x0, x1 in shaded} == {(1.5, 3.5), (4.5, 5.5)}


def test_removed_blocks_are_marked_whatever_their_importance():
    from simdiff_core.export import figures as charts

    v = np.array([0.0, 0.5, 0.9, 0.0, 0.3])
    spec = charts.bars_spec(v, [0, 3])
    marks = [t for t in spec["data"] if t.get("name") == "removed"]
    assert len(marks) == 1 and marks[0]["x"] == [0, 3] and all(y > 0 for y in marks[0]["y"])
    assert marks[0]["customdata"] == [0.0, 0.0]  # the hover keeps the true value
    assert charts.outliers([1, 1.1, 0.9, 1.2, 40, 1.0, 0.95, 1.05, 1.1, 1.0]) == [4]
    assert charts.outliers(np.linspace(1, 2, 30)) == []
