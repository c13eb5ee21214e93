"""The figures of the app's pages. A slider move must repaint in milliseconds, and building a plotly figure
(plus the validation ``st.plotly_chart`` runs on it) costs 25-120 ms, so what a move changes is built as
plain dicts on top of a layout validated once: ``curves_base`` + ``curves_spec`` (Layer curves and its
dropped blocks), ``bars_spec`` (importance bars), ``overlap_spec`` (criteria overlap), ``stability_spec``;
``Spec`` hands such a dict to ``st.plotly_chart`` without a second validation. Each chart has this one
builder (``layer_curves`` is ``curves_spec`` as a Figure). Every x axis is the block index (0-based, as
in plans and exports).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ...analysis.derived import outliers
from .theme import DROP, EMPTY, KEEP, MUTED, SERIES, app_style, fixed_margins


def layer_curves(layers: list[dict], dropped=(), scale_free: bool = True, log_mssd: bool = False,
                 damage=None, bands: dict | None = None, clip: bool = True) -> go.Figure:
    """The Layer curves chart as a plotly Figure: ``curves_spec(curves_base(...), dropped)``.

    Hover is linked through the data: every point's tooltip carries all three metrics of its block,
    and a dotted spike line marks the block across all three panels. ``bands`` (from
    ``uncertainty.bands``) draws each metric's bootstrap band. ``clip`` (default; ignored with the log
    axis) fits the MSSD/MASD axes to the non-outlier blocks (``analysis.derived.outliers``) and writes
    the outliers' values at the top edge. ``log_mssd``: log axes for MSSD and MASD.
    """
    return go.Figure(curves_spec(curves_base(layers, scale_free, log_mssd, damage, bands, clip), dropped))


def _curves_figure(layers: list[dict], scale_free: bool, log_mssd: bool, damage, bands: dict | None,
                   clip: bool) -> go.Figure:
    """The metric panels of ``layer_curves`` (no dropped set): ``curves_base`` validates it once."""
    df = pd.DataFrame(layers)
    sfx = "_rel" if scale_free else ""
    cols = [("cosine", "cos(x, y)"), ("mssd" + sfx, "MSSD" + (" / ‖x‖²" if scale_free else "")),
            ("masd" + sfx, "MASD" + (" / ‖x‖₁" if scale_free else ""))]
    if damage is not None and len(damage) == len(df):
        # the measured ground truth next to the proxies: loss increase with only this block removed
        df = df.assign(damage=list(damage))
        cols.append(("damage", "measured damage (Δ loss)"))
    fig = make_subplots(rows=1, cols=len(cols), shared_xaxes="all", horizontal_spacing=0.06,
                        subplot_titles=[c[1] for c in cols])
    idx = df["index"].to_numpy()
    custom = np.stack([df["cosine"], df["mssd" + sfx], df["masd" + sfx]], axis=1)
    hover = ("<b>block %{x}</b><br>cosine %{customdata[0]:.4f}<br>MSSD %{customdata[1]:.4g}"
             "<br>MASD %{customdata[2]:.4g}<extra></extra>")
    notes = []
    for c, (key, title) in enumerate(cols, start=1):
        band = (bands or {}).get(key)
        if band is not None:  # hi edge first, then lo filled up to it
            fig.add_trace(go.Scatter(x=idx, y=band["hi"], mode="lines", line=dict(width=0, color=KEEP),
                                     hoverinfo="skip", showlegend=False, legendgroup="band", name="band hi"),
                          row=1, col=c)
            fig.add_trace(go.Scatter(x=idx, y=band["lo"], mode="lines", line=dict(width=0, color=KEEP),
                                     fill="tonexty", fillcolor="rgba(37, 99, 235, 0.18)", hoverinfo="skip",
                                     showlegend=(c == 1), legendgroup="band",
                                     name=f"{bands.get('_level', 0.9):.0%} bootstrap band"), row=1, col=c)
        if clip and not log_mssd and c in (2, 3):
            vals = df[key].to_numpy(dtype=float)
            out = outliers(vals)
            if out:
                rest = np.delete(vals, out)
                top = np.delete(np.asarray(band["hi"], float), out) if band is not None else rest
                lo = min(0.0, float(rest.min()))
                hi = float(max(rest.max(), top.max()))
                hi = hi + 0.12 * (hi - lo or 1.0)
                fig.update_yaxes(range=[lo, hi], row=1, col=c)
                notes += [dict(x=int(idx[i]), y=hi, xref=f"x{'' if c == 1 else c}", yref=f"y{'' if c == 1 else c}",
                               text=f"▲ {vals[i]:.3g}", showarrow=False, yanchor="top", font=dict(size=10, color=DROP),
                               hovertext=f"block {int(idx[i])}: {vals[i]:.4g} (outlier, off the clipped axis)")
                          for i in out]
        fig.add_trace(go.Scatter(x=idx, y=df[key], mode="lines+markers", name=title, line=dict(color=KEEP, width=2),
                                 marker=dict(size=6), customdata=custom, hovertemplate=hover, showlegend=False),
                      row=1, col=c)
    if notes:
        fig.update_layout(annotations=list(fig.layout.annotations) + notes)
    if log_mssd:
        fig.update_yaxes(type="log", row=1, col=2)
        fig.update_yaxes(type="log", row=1, col=3)
    fig.update_xaxes(title_text="block")
    fig.update_layout(hovermode="closest")
    return fixed_margins(app_style(fig, 340))


def contiguous_runs(drop: list[int]) -> list[list[int]]:
    """Sorted block indices -> [first, last] of each run of consecutive indices (one shaded band each)."""
    runs: list[list[int]] = []
    for i in drop:
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return runs


def curves_base(layers: list[dict], scale_free: bool = True, log_mssd: bool = False, damage=None,
                bands: dict | None = None, clip: bool = True) -> dict:
    """The Layer curves chart without a dropped set (the metric traces, bands, axes, style) as a validated dict.

    Built once per scores object and toggle setting; ``curves_spec`` adds the dropped blocks per move.
    """
    spec = _curves_figure(layers, scale_free, log_mssd, damage, bands, clip).to_dict()
    panels = [t for t in spec["data"] if t.get("name") != "dropped" and t.get("legendgroup") != "band"]
    spec["_panels"] = [{"x": np.asarray(plain_array(t["x"])), "y": np.asarray(plain_array(t["y"]), dtype=float),
                        "customdata": np.asarray(plain_array(t["customdata"]), dtype=float),
                        "xaxis": t.get("xaxis", "x"), "yaxis": t.get("yaxis", "y"),
                        "hovertemplate": t["hovertemplate"]} for t in panels]
    return spec


def plain_array(v):
    """An array from a figure dict (ndarray, list, or plotly's base64 typed-array dict)."""
    if isinstance(v, dict) and "bdata" in v:
        import base64

        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return a.reshape([int(n) for n in str(v["shape"]).split(",")]) if "shape" in v else a
    return v


def curves_spec(base: dict, dropped=(), markers: bool = True) -> dict:
    """The Layer curves chart for this dropped set, from ``curves_base``: microseconds, no plotly objects.

    ``markers=False``: the dropped set is drawn by the shaded bands alone (a darker shade; the shapes are
    named ``dropped``), so the traces do not change with it and a browser that updates the drawn chart in
    place (ui/live_chart.py, ``Plotly.react``) redraws only the shapes on a slider move, not every trace.
    """
    drop = sorted(set(int(i) for i in dropped))
    data = [t for t in base["data"]]
    if drop and markers:
        for c, p in enumerate(base["_panels"]):
            data.append({"type": "scatter", "x": drop, "y": p["y"][drop].tolist(), "mode": "markers",
                         "name": "dropped", "xaxis": p["xaxis"], "yaxis": p["yaxis"],
                         "marker": {"color": DROP, "size": 11, "symbol": "x", "line": {"width": 1, "color": "white"}},
                         "customdata": p["customdata"][drop].tolist(), "hovertemplate": p["hovertemplate"],
                         "showlegend": c == 0})
    # one shaded band per run of dropped blocks per panel
    shapes = [{"type": "rect", "xref": p["xaxis"], "yref": f"{p['yaxis']} domain", "x0": a - 0.5, "x1": b + 0.5,
               "y0": 0, "y1": 1, "fillcolor": DROP, "opacity": 0.08 if markers else 0.2, "line": {"width": 0},
               "layer": "below", **({} if markers else {"name": "dropped"})}
              for p in base["_panels"] for a, b in contiguous_runs(drop)]
    return {"data": data, "layout": dict(base["layout"], shapes=shapes)}


def bars_spec(values, dropped=(), title: str = "SimDiff importance (higher = keep)", shapes: bool = False) -> dict:
    """Importance per block as bars, the dropped blocks in rose with an ✕ (the layout: validated once per block count).

    ``shapes=True``: the removed blocks' bars are painted red by rectangles over them (layout shapes named
    ``dropped``, a stub bar included) instead of by the bar colours and an ✕ trace, so the traces do
    not change with the dropped set and an in-place chart (ui/live_chart.py) only redraws the shapes.
    """
    v = np.asarray(values, dtype=float)
    drop = set(int(i) for i in dropped)
    # a block whose importance is (near) zero would get an invisible bar, yet it is the first to go: draw a
    # stub of 1.5% of the axis; the hover still shows the true value
    stub = 0.015 * (float(np.abs(v).max()) or 1.0)
    shown = np.where(np.abs(v) < stub, stub, v)
    if shapes:
        spec = bars_spec(v, (), title)
        # the hover cannot say kept/dropped without changing the trace: it gives the importance only
        spec["data"][0]["hovertemplate"] = "<b>block %{x}</b><br>importance %{customdata[1]:.4f}<extra></extra>"
        half = (1 - spec["layout"].get("bargap", 0.15)) / 2
        spec["layout"] = dict(spec["layout"], shapes=[
            {"type": "rect", "xref": "x", "yref": "y", "x0": i - half, "x1": i + half, "y0": 0,
             "y1": float(shown[i]), "fillcolor": DROP, "line": {"width": 0}, "layer": "above", "name": "dropped"}
            for i in sorted(drop)])
        return spec
    trace = {"type": "bar", "x": list(range(len(v))), "y": shown.tolist(), "showlegend": False,
             "marker": {"color": [DROP if i in drop else KEEP for i in range(len(v))]},
             "customdata": [["dropped" if i in drop else "kept", float(v[i])] for i in range(len(v))],
             "hovertemplate": "<b>block %{x}</b><br>importance %{customdata[1]:.4f}<br>%{customdata[0]}<extra></extra>"}
    layout = dict(_bars_layout(len(v)))
    layout["title"] = dict(layout["title"], text=title)
    data = [trace] + ([dict(_removed_marks(v, shown, drop), type="scatter")] if drop else [])
    return {"data": data, "layout": layout}


def _removed_marks(v: np.ndarray, shown: np.ndarray, drop: set) -> dict:
    """A ✕ on every removed block's bar, whatever its value (a zero-importance bar is only a stub)."""
    d = sorted(drop)
    return {"x": d, "y": [float(shown[i]) for i in d], "mode": "markers", "name": "removed",
            "marker": {"color": DROP, "size": 10, "symbol": "x", "line": {"width": 1, "color": "white"}},
            "customdata": [float(v[i]) for i in d], "showlegend": False,
            "hovertemplate": "<b>block %{x}</b> removed<br>importance %{customdata:.4f}<extra></extra>"}


def with_band(spec: dict, band: dict | None) -> dict:
    """Bootstrap band of the bar values as error bars on ``bars_spec``'s bars (a new dict; ``band``: lo/hi/value)."""
    if not band:
        return spec
    v, lo, hi = (np.asarray(band[k], dtype=float) for k in ("value", "lo", "hi"))
    bars = dict(spec["data"][0], error_y={"type": "data", "symmetric": False, "array": np.maximum(hi - v, 0).tolist(),
                                          "arrayminus": np.maximum(v - lo, 0).tolist(), "color": MUTED,
                                          "thickness": 1.2, "width": 3})
    return {"data": [bars] + spec["data"][1:], "layout": spec["layout"]}


@lru_cache(maxsize=64)
def _bars_layout(n: int) -> dict:
    """The bar charts' layout for ``n`` blocks (``bars_spec``, ``stability_spec``), validated by plotly once."""
    fig = go.Figure(go.Bar(x=list(range(n)), y=[0.0] * n, showlegend=False))
    fig.update_layout(title=dict(text="", x=0, font=dict(size=15)), bargap=0.15)
    fig.update_xaxes(title_text="block", dtick=1 if n <= 40 else None)
    return fixed_margins(app_style(fig, 300)).to_dict()["layout"]


@lru_cache(maxsize=64)
def _overlap_layout(num_layers: int, names: tuple[str, ...]) -> dict:
    """``overlap_spec``'s layout for these rows, validated by plotly once."""
    fig = go.Figure(go.Heatmap(z=np.zeros((len(names), num_layers)), x=list(range(num_layers)), y=list(names),
                               showscale=False))
    fig.update_layout(title=dict(text="Blocks each criterion removes", x=0, font=dict(size=15)))
    fig.update_xaxes(title_text="block", dtick=1 if num_layers <= 40 else None, showspikes=False)
    fig.update_yaxes(autorange="reversed")
    left = 16 + 8 * max((len(str(n)) for n in names), default=4)
    return fixed_margins(app_style(fig, 90 + 34 * len(names)), left=left).to_dict()["layout"]


def overlap_spec(sets: dict[str, list[int]], num_layers: int) -> dict:
    """Criteria × blocks: which blocks each criterion would remove (the layout: validated once per block
    count and row names)."""
    names = list(sets)
    z = np.zeros((len(names), num_layers))
    for r, n in enumerate(names):
        z[r, list(sets[n])] = 1
    counts = z.sum(0)
    trace = {"type": "heatmap", "z": z.tolist(), "x": list(range(num_layers)), "y": names, "showscale": False,
             "xgap": 2, "ygap": 2, "colorscale": [[0, EMPTY], [1, DROP]], "zmin": 0, "zmax": 1,
             "customdata": np.tile(counts, (len(names), 1)).tolist(),
             "hovertemplate": "%{y}<br>block %{x}: %{z:d} (chosen by %{customdata:d} criteria)<extra></extra>"}
    return {"data": [trace], "layout": dict(_overlap_layout(num_layers, tuple(names)))}


def stability_spec(frequency, removed, threshold: float = 0.75, n_boot: int = 200) -> dict:
    """Plan stability as a plain dict: per block, the share of bootstrap resamples whose plan removes it.

    Blocks of the current plan in rose (hatched below ``threshold``: unstable), others grey; a dotted
    line at the threshold."""
    f = np.asarray(frequency, dtype=float)
    rem = set(int(i) for i in removed)
    colors = [DROP if i in rem else MUTED for i in range(len(f))]
    pattern = ["/" if i in rem and f[i] < threshold else "" for i in range(len(f))]
    # a removed block with frequency ~0 still gets a visible stub
    shown = [max(float(f[i]), 0.015) if i in rem else float(f[i]) for i in range(len(f))]
    trace = {"type": "bar", "x": list(range(len(f))), "y": shown,
             "marker": {"color": colors, "pattern": {"shape": pattern}}, "name": "removal frequency",
             "customdata": [[float(f[i]), "in plan" if i in rem else "not in plan"] for i in range(len(f))],
             "hovertemplate": "<b>block %{x}</b><br>removed in %{customdata[0]:.0%} of " + str(n_boot)
                              + " resamples<br>%{customdata[1]}<extra></extra>"}
    layout = dict(_bars_layout(len(f)))
    layout["title"] = dict(layout["title"], text=f"Plan stability: how often each block is removed ({n_boot} "
                                                 "bootstrap resamples of the calibration windows)")
    layout["yaxis"] = dict(layout.get("yaxis", {}), range=[0, 1.05], tickformat=".0%")
    layout["shapes"] = [{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "yref": "y", "y0": threshold,
                         "y1": threshold, "line": {"color": MUTED, "dash": "dot", "width": 1}}]
    return {"data": [trace], "layout": layout}


def overlay_curves(frame: pd.DataFrame, metric: str, relative: bool, title: str = "",
                   removed: dict | None = None) -> go.Figure:
    """One line per run/source of ``frame`` (``sensitivity.overlay_frame``); x = block or relative depth.

    ``removed`` (name -> blocks) marks each run's removed blocks with an x in its colour."""
    fig = go.Figure()
    for n, (name, sub) in enumerate(frame.groupby("run", sort=False)):
        color = SERIES[n % len(SERIES)]
        fig.add_trace(go.Scatter(x=sub["x"], y=sub["value"], mode="lines+markers", name=str(name),
                                 line=dict(color=color, width=2), marker=dict(size=5), customdata=sub["block"],
                                 hovertemplate=f"<b>{name}</b><br>block %{{customdata}}<br>{metric} %{{y:.4g}}"
                                               "<extra></extra>"))
        gone = [b for b in (removed or {}).get(name, []) if b in set(sub["block"])]
        if gone:
            s2 = sub.set_index("block").loc[gone]
            fig.add_trace(go.Scatter(x=s2["x"], y=s2["value"], mode="markers", name=f"{name}: removed",
                                     marker=dict(color=color, size=11, symbol="x", line=dict(width=1, color="white")),
                                     hoverinfo="skip"))
    fig.update_layout(title=dict(text=title or metric, x=0, font=dict(size=15)))
    fig.update_xaxes(title_text="relative depth (0 = first block, 1 = last)" if relative else "block")
    fig.update_yaxes(title_text=metric)
    app_style(fig, 420)
    # legend under the plot: run names are long and would run into the title
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.22, x=0), margin=dict(b=110))
    return fig


def shootout_bars(rows: list[dict]) -> go.Figure:
    """Perplexity per shoot-out row (``compare.run_compare`` rows), dense in grey, log axis."""
    labels = [f"{r['method']}:{r['criterion']}" if r.get("criterion") else r["method"] for r in rows]
    fig = go.Figure(go.Bar(x=labels, y=[r["ppl"] for r in rows],
                           marker_color=[MUTED if r["method"] == "dense" else KEEP for r in rows],
                           text=[f"{r['ppl']:.1f}" for r in rows], textposition="outside"))
    fig.update_layout(title="Perplexity after pruning (lower is better)", yaxis_type="log", height=380,
                      margin=dict(l=10, r=10, t=50, b=10), plot_bgcolor="white")
    return fig


def loss_curve(curve: list[dict]) -> go.Figure:
    """LoRA training loss per step (``[{"step", "loss"}]``, as ``evaluation/recover.py`` reports it)."""
    fig = go.Figure(go.Scatter(x=[p["step"] for p in curve], y=[p["loss"] for p in curve], mode="lines+markers",
                               line=dict(color=KEEP), marker=dict(size=4), name="training loss"))
    fig.update_layout(title="LoRA training loss", xaxis_title="step", yaxis_title="next-token loss (nats)",
                      height=320, margin=dict(l=10, r=10, t=50, b=10), plot_bgcolor="white")
    return fig
