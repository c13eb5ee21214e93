"""The cheap per-move figures (plain dicts over a once-validated layout) against their inputs.

``curves_spec``, ``bars_spec`` and ``overlap_spec`` skip plotly's validation on every slider move, so
here plotly validates what they produce, and what they draw is checked against the values, the dropped
blocks and their runs computed directly. No model needed.
"""

from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go
import plotly.io
import pytest

from simdiff_core.export import figures


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
    return figures.plain_array(v).tolist() if isinstance(v, dict) else list(v)


def _shapes(fig: dict) -> list[str]:
    return sorted(json.dumps(s, sort_keys=True) for s in fig["layout"].get("shapes", []))


def _trace_key(t: dict) -> tuple:
    return (t.get("name"), t.get("xaxis", "x"))


def _runs(drop) -> list[tuple[int, int]]:
    """Runs of consecutive blocks, the naive way: start a run wherever the previous block is not dropped."""
    d = set(drop)
    return [(i, next(j for j in range(i, max(d) + 2) if j + 1 not in d)) for i in sorted(d) if i - 1 not in d]


@pytest.mark.parametrize("L,dropped,scale_free,log_mssd,damage", [
    (30, [3, 4, 5, 17], True, False, None),
    (80, [0, 1, 40, 41, 42, 79], False, True, None),
    (12, [], True, False, None),
    (12, [2, 7], True, False, [0.1 * i for i in range(12)]),
])
def test_curves_spec_draws_each_metric_and_the_dropped_blocks(L, dropped, scale_free, log_mssd, damage):
    layers = _layers(L)
    base = figures.curves_base(layers, scale_free=scale_free, log_mssd=log_mssd, damage=damage)
    fast = _norm(figures.curves_spec(base, dropped))   # plotly accepts it
    sfx = "_rel" if scale_free else ""
    keys = ["cosine", "mssd" + sfx, "masd" + sfx] + (["damage"] if damage is not None else [])
    values = {k: ([l[k] for l in layers] if k != "damage" else damage) for k in keys}
    axes = ["x"] + [f"x{c}" for c in range(2, len(keys) + 1)]
    lines = [t for t in fast["data"] if t.get("mode") == "lines+markers"]
    assert [t.get("xaxis", "x") for t in lines] == axes
    for t, k in zip(lines, keys):
        assert _arr(t["x"]) == list(range(L)) and np.allclose(np.asarray(_arr(t["y"]), float), values[k]), k
    custom = [[l["cosine"], l["mssd" + sfx], l["masd" + sfx]] for l in layers]
    marks = [t for t in fast["data"] if t.get("name") == "dropped"]
    assert len(marks) == (len(keys) if dropped else 0)
    for t, k in zip(marks, keys):
        assert _arr(t["x"]) == sorted(dropped) and t["marker"]["symbol"] == "x"
        assert np.allclose(np.asarray(_arr(t["y"]), float), [values[k][i] for i in sorted(dropped)])
        assert np.allclose(np.asarray(_arr(t["customdata"]), float).reshape(-1, 3), [custom[i] for i in sorted(dropped)])
    # one shaded band per run of dropped blocks on every panel
    want = sorted((ax, a - 0.5, b + 0.5) for ax in axes for a, b in (_runs(dropped) if dropped else []))
    assert sorted((s["xref"], s["x0"], s["x1"]) for s in fast["layout"].get("shapes", [])) == want
    assert all(s["yref"].endswith(" domain") and s["y0"] == 0 and s["y1"] == 1 for s in fast["layout"].get("shapes", []))
    if log_mssd:
        assert fast["layout"]["yaxis2"]["type"] == fast["layout"]["yaxis3"]["type"] == "log"
    # layer_curves is the same chart as a plotly Figure
    assert _norm(figures.layer_curves(layers, dropped=dropped, scale_free=scale_free, log_mssd=log_mssd,
                                     damage=damage)) == fast
    # the base is never modified by a move
    n = len(base["data"])
    figures.curves_spec(base, [1, 2])
    assert len(base["data"]) == n and base["layout"].get("shapes") in (None, [], ())


@pytest.mark.parametrize("values,dropped", [(np.linspace(-1, 2, 30), [0, 5, 6]), (np.zeros(7), []),
                                            (np.array([1e-9, 0.4, 0.9, 0.1]), [0])])
def test_bars_spec_draws_every_value_and_colours_the_dropped_bars(values, dropped):
    from simdiff_core.export.figures.theme import DROP, KEEP

    fast = _norm(figures.bars_spec(values, dropped, title="t"))
    bars = fast["data"][0]
    stub = 0.015 * (np.abs(values).max() or 1.0)
    assert _arr(bars["x"]) == list(range(len(values)))
    assert np.allclose(_arr(bars["y"]), [stub if abs(v) < stub else v for v in values])
    assert bars["marker"]["color"] == [DROP if i in dropped else KEEP for i in range(len(values))]
    assert bars["customdata"] == [["dropped" if i in dropped else "kept", float(v)] for i, v in enumerate(values)]
    assert fast["layout"]["title"]["text"] == "t" and fast["layout"]["xaxis"]["title"]["text"] == "block"


def test_overlap_spec_rows_are_the_sets():
    sets = {"simdiff": [3, 4, 9], "cosine": [4, 9, 10], "angular": [0, 1, 2]}
    fast = _norm(figures.overlap_spec(sets, 12))
    a = fast["data"][0]
    assert a["y"] == list(sets)
    # rows are the sets: row r has ones exactly at the blocks that criterion removes
    z = np.asarray(_arr(a["z"]))
    assert z.shape == (3, 12) and [list(np.flatnonzero(row)) for row in z] == list(sets.values())
    counts = [sum(b in s for s in sets.values()) for b in range(12)]
    assert np.array_equal(np.asarray(_arr(a["customdata"])), np.tile(counts, (3, 1)))
    assert fast["layout"]["title"]["text"] == "Blocks each criterion removes"
    assert fast["layout"]["yaxis"]["autorange"] == "reversed"


def test_spec_goes_through_streamlit_plotly_chart_unchanged():
    import plotly.tools

    spec = figures.bars_spec(np.arange(5.0), [2])
    out = plotly.tools.return_figure_from_figure_or_data(figures.Spec(spec), validate_figure=True)
    assert out is spec


def test_bars_spec_with_shapes_paints_exactly_the_dropped_bars_and_keeps_the_traces():
    v = np.array([0.5, 0.0, 2.0, -0.3, 1.0])
    spec = figures.bars_spec(v, [1, 3], title="t", shapes=True)
    plain = figures.bars_spec(v, [], title="t")
    assert len(spec["data"]) == 1 and spec["data"][0]["y"] == plain["data"][0]["y"]  # no per-set trace
    assert "kept" not in spec["data"][0]["hovertemplate"] and "dropped" not in spec["data"][0]["hovertemplate"]
    red = [s for s in spec["layout"]["shapes"] if s["name"] == "dropped"]
    assert [(s["x0"] + s["x1"]) / 2 for s in red] == [1, 3]
    # each rectangle covers its whole bar: zero importance -> the 1.5% stub, negative -> down to the value
    assert [s["y1"] for s in red] == [0.015 * 2.0, -0.3] and all(s["y0"] == 0 for s in red)
    assert all(s["x1"] - s["x0"] == pytest.approx(0.85) for s in red)  # the bar width (bargap 0.15)
    curves = figures.curves_spec(figures.curves_base(_layers(6)), [2, 3, 5], markers=False)
    assert not [t for t in curves["data"] if t.get("name") == "dropped"]
    shaded = {(s["xref"], s["x0"], s["x1"]) for s in curves["layout"]["shapes"] if s.get("name") == "dropped"}
    assert {(x0, x1) for _, x0, x1 in shaded} == {(1.5, 3.5), (4.5, 5.5)}


def test_removed_blocks_are_marked_whatever_their_importance():
    from simdiff_core.export import figures

    v = np.array([0.0, 0.5, 0.9, 0.0, 0.3])
    spec = figures.bars_spec(v, [0, 3])
    marks = [t for t in spec["data"] if t.get("name") == "removed"]
    assert len(marks) == 1 and marks[0]["x"] == [0, 3] and all(y > 0 for y in marks[0]["y"])
    assert marks[0]["customdata"] == [0.0, 0.0]  # the hover keeps the true value
