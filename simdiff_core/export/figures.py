"""Every plotly figure: the app's pages, the HTML report and the CLI build them here. No streamlit.

    from simdiff_core import figures
    fig = figures.layer_curves(scores.layers, dropped=plan.removed_layers)     # app: side-by-side panels
    fig = figures.curves_figure(scores, damage=dmg, alpha=0.5, removed=plan.removed_layers)  # report
    fig = figures.heatmap(scores.matrices["cka"], "CKA between block outputs")
    fig.show()  # or fig.to_html(...), fig.write_image("fig.pdf") (kaleido + Chromium)

Why one module: the app (``ui/charts.py``) and the report used to build overlapping figures in two
places. Pure functions of scores/plans/results, so they are tested without Streamlit; cost is
figure construction only (the Prune preview times it in bench/run.py).

``publication=True`` switches to a print style: white background, larger serif-free fonts, no
hover/mode-bar-oriented decoration, fixed size suited to a one-column paper figure.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import plotly.graph_objects as go
import pandas as pd
from plotly.subplots import make_subplots

from ..analysis.metrics import importance
from ..evaluation.agreement import AGREEMENT_CRITERIA, spearman

REMOVED_COLOR = "#d62728"
LINE_COLOR = "#1f77b4"
DAMAGE_COLOR = "#2ca02c"


def _style(fig: go.Figure, publication: bool, height: int, width: int | None = None) -> go.Figure:
    if publication:
        fig.update_layout(template="simple_white", font=dict(family="Arial, Helvetica, sans-serif", size=15),
                          width=width or 900, height=height, margin=dict(l=80, r=30, t=50, b=60),
                          showlegend=False)
    else:
        fig.update_layout(template="plotly_white", height=height, margin=dict(l=60, r=20, t=50, b=40))
    return fig


def curves_figure(scores, damage=None, alpha: float = 0.5, removed=None, publication: bool = False,
                  **fusion) -> go.Figure:
    """Per-block curves stacked on a shared block axis: cosine, MSSD, MASD, SimDiff(alpha), damage.

    Removed blocks (a plan's ``removed_layers``) are drawn as red markers on every curve.
    """
    L = scores.num_layers
    x = list(range(L))
    rows = [("cosine(x, y)", [l["cosine"] for l in scores.layers], False),
            ("MSSD", [l["mssd"] for l in scores.layers], True),
            ("MASD", [l["masd"] for l in scores.layers], False),
            (f"SimDiff (α={alpha:g})", list(importance(scores.layers, "simdiff", alpha=alpha, **fusion)), False)]
    if damage is not None:
        rows.append(("Δ loss without block", list(damage.deltas()), False))
    fig = make_subplots(rows=len(rows), cols=1, shared_xaxes=True, vertical_spacing=0.03 if publication else 0.04)
    removed = sorted(set(int(i) for i in (removed or [])))
    for r, (name, ys, log) in enumerate(rows, start=1):
        color = DAMAGE_COLOR if name.startswith("Δ") else LINE_COLOR
        fig.add_trace(go.Scatter(x=x, y=ys, mode="lines+markers", name=name, line=dict(color=color, width=2),
                                 marker=dict(size=5), hovertemplate="block %{x}: %{y:.4g}<extra>" + name + "</extra>"),
                      row=r, col=1)
        if removed:
            fig.add_trace(go.Scatter(x=removed, y=[ys[i] for i in removed], mode="markers", name="removed",
                                     marker=dict(color=REMOVED_COLOR, size=10, symbol="x"), showlegend=r == 1,
                                     hovertemplate="removed block %{x}<extra></extra>"), row=r, col=1)
        log = log and min(ys) > 0
        # powers of ten only: plotly's default minor log labels ("2", "5") read as values in print
        fig.update_yaxes(title_text=name, type="log" if log else "linear", dtick=1 if log else None, row=r, col=1)
    fig.update_xaxes(range=[-0.5, L - 0.5])
    fig.update_xaxes(title_text="block", dtick=1 if L <= 32 else None, row=len(rows), col=1)
    title = f"{scores.model}: per-block redundancy" + (" and measured damage" if damage is not None else "")
    fig.update_layout(title=title)
    return _style(fig, publication, height=170 * len(rows) + 80)


def heatmap_figure(matrix, title: str, x_title: str = "block", y_title: str = "block",
                   colorscale: str = "Viridis", publication: bool = False) -> go.Figure:
    """``heatmap`` under its older name (kept for callers of the report API)."""
    return heatmap(matrix, title, x_title, y_title, colorscale=colorscale, publication=publication)


def matrix_figures(scores, publication: bool = False) -> list[go.Figure]:
    """The cross-layer heatmaps stored in ``scores.matrices`` (those present)."""
    m = scores.matrices or {}
    specs = [("output_cosine", "cosine between block outputs", "block", "block"),
             ("cka", "linear CKA between block outputs", "block", "block"),
             ("angular_boundaries", "angular distance between boundaries (PruneMe: window [l, l+n))",
              "boundary (end)", "boundary (start)")]
    return [heatmap_figure(m[k], t, xt, yt, publication=publication) for k, t, xt, yt in specs if k in m and m[k]]


def agreement_scatter(scores, damage, criterion: str = "simdiff", alpha: float = 0.5,
                      publication: bool = False, **fusion) -> go.Figure:
    """Criterion importance (x) against measured damage (y), each point labelled by its block."""
    imp = importance(scores.layers, criterion, alpha=alpha, **fusion)
    d = damage.deltas()
    name = f"simdiff (α={alpha:g})" if criterion == "simdiff" else criterion
    fig = go.Figure(go.Scatter(x=list(imp), y=d, mode="markers+text", text=[str(i) for i in range(len(d))],
                               textposition="top center", marker=dict(size=8, color=LINE_COLOR),
                               hovertemplate="block %{text}: importance %{x:.4g}, Δ loss %{y:.4g}<extra></extra>"))
    fig.update_layout(title=f"{name} vs measured damage (Spearman ρ = {spearman(imp, d):.2f})",
                      xaxis_title=f"{name} importance (higher = keep)", yaxis_title="Δ loss without block")
    return _style(fig, publication, height=420, width=560)


def agreement_grid(scores, damage, alpha: float = 0.5, criteria=("cosine", "mssd", "masd", "mssd_rel",
                                                                   "masd_rel", "simdiff"), **fusion) -> go.Figure:
    """Small multiples of ``agreement_scatter`` for several criteria (one figure, for the report)."""
    d = damage.deltas()
    cols = 3
    nrows = -(-len(criteria) // cols)
    titles = []
    imps = []
    for c in criteria:
        imp = importance(scores.layers, c, alpha=alpha, **fusion)
        imps.append(imp)
        titles.append(f"{'simdiff α=%g' % alpha if c == 'simdiff' else c}: ρ = {spearman(imp, d):.2f}")
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=titles, horizontal_spacing=0.08,
                        vertical_spacing=0.15)
    for n, imp in enumerate(imps):
        fig.add_trace(go.Scatter(x=list(imp), y=d, mode="markers+text", text=[str(i) for i in range(len(d))],
                                 textposition="top center", textfont=dict(size=9), marker=dict(size=6),
                                 showlegend=False,
                                 hovertemplate="block %{text}: %{x:.4g}, Δ loss %{y:.4g}<extra></extra>"),
                      row=n // cols + 1, col=n % cols + 1)
    fig.update_yaxes(title_text="Δ loss", col=1)
    fig.update_layout(title="criterion importance (x) vs measured leave-one-out damage (y)")
    return _style(fig, False, height=330 * nrows + 60)


def set_damage_figure(rows: list[dict]) -> go.Figure:
    """Measured damage of each removed set next to the sum of its single-block damages."""
    labels = [r["label"] for r in rows]
    fig = go.Figure([go.Bar(name="measured (set removed together)", x=labels, y=[r["delta_loss"] for r in rows]),
                     go.Bar(name="sum of single-block damages", x=labels, y=[r["additive_delta"] for r in rows])])
    fig.update_layout(barmode="group", title="multi-block damage vs single-block prediction",
                      yaxis_title="Δ loss")
    return _style(fig, False, height=400)


__all__ = ["curves_figure", "heatmap_figure", "matrix_figures", "agreement_scatter", "agreement_grid",
           "set_damage_figure", "AGREEMENT_CRITERIA"]


# ---------------------------------------------------------------- interactive figures of the app pages
# (formerly ui/charts.py)
# Every figure uses the block index (0-based, as in plans and exports) on its x axis.
#
# Slider moves must repaint in milliseconds, and building a plotly figure (plus the validation
# ``st.plotly_chart`` runs on it) costs 25-120 ms. So what a move changes is built as plain dicts on top
# of a figure validated once: ``curves_base`` + ``curves_spec`` (the dropped-block markers and bands),
# ``bars_spec`` (importance bars) and ``overlap_spec`` (criteria overlap); ``Spec`` hands such a dict to
# ``st.plotly_chart`` without a second validation. tests/export/test_figures.py checks each against the plotly-
# built figure (same traces, and plotly validates the dict).

KEEP = "#2563eb"     # blue: kept blocks / main curves
DROP = "#e11d48"     # rose: blocks the current plan removes
MUTED = "#94a3b8"
FONT = "Inter, system-ui, -apple-system, Segoe UI, sans-serif"

# Client-side PNG export (the modebar camera button): no server-side renderer needed.
def plot_config(filename: str) -> dict:
    return {"displaylogo": False, "toImageButtonOptions": {"format": "png", "filename": filename, "scale": 2},
            "modeBarButtonsToRemove": ["lasso2d", "select2d"]}


class Spec(go.Figure):
    """A finished plotly figure dict that ``st.plotly_chart`` uses as is (a plain dict would be re-validated
    through ``go.Figure(**dict)``, 25-40 ms per chart). Only ``to_dict``/``to_plotly_json`` are supported."""

    def __init__(self, spec: dict):  # noqa: D107 - deliberately skips go.Figure's validating __init__
        object.__setattr__(self, "_sd_spec", spec)

    def to_dict(self) -> dict:
        return self._sd_spec

    def to_plotly_json(self) -> dict:
        return self._sd_spec


def _app_style(fig: go.Figure, height: int) -> go.Figure:
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=60, b=10), font=dict(family=FONT, size=13),
                      plot_bgcolor="white", paper_bgcolor="white", hoverlabel=dict(font_size=12),
                      legend=dict(orientation="h", yanchor="bottom", y=1.08, x=0))
    fig.update_xaxes(showgrid=True, gridcolor="#eef2f7", zeroline=False, showspikes=True, spikemode="across",
                     spikethickness=1, spikecolor=MUTED, spikedash="dot")
    fig.update_yaxes(showgrid=True, gridcolor="#eef2f7", zeroline=False)
    return fig


def _fixed_margins(fig: go.Figure, left: int = 56, bottom: int = 48) -> go.Figure:
    """Fixed margins, no automargin: plotly otherwise measures every tick label and redraws until the
    margins settle, which was most of the browser's work per slider move (bench/browser_slider.py)."""
    fig.update_layout(margin=dict(l=left, b=bottom, autoexpand=False))
    fig.update_xaxes(automargin=False)
    fig.update_yaxes(automargin=False)
    return fig


def curves_frame(layers: list[dict], simdiff: np.ndarray | None = None, dropped=()) -> pd.DataFrame:
    """The data behind the curve charts (what the CSV download holds)."""
    df = pd.DataFrame(layers).set_index("index")
    if simdiff is not None:
        df["simdiff"] = np.asarray(simdiff, dtype=float)
    df["dropped"] = [i in set(dropped) for i in df.index]
    return df


def outliers(values, factor: float = 5.0) -> list[int]:
    """Blocks far above the rest: value above ``factor`` x the 90th percentile of all blocks (at most 10 %
    of the blocks can be outliers). [] when nothing stands out or the values are not positive."""
    v = np.asarray(values, dtype=float)
    if v.size < 5:
        return []
    p90 = float(np.quantile(v, 0.9))
    if not p90 > 0:
        return []
    return [int(i) for i in np.flatnonzero(v > factor * p90)]


def layer_curves(layers: list[dict], dropped=(), scale_free: bool = True, log_mssd: bool = False,
                 damage=None, bands: dict | None = None, clip: bool = True) -> go.Figure:
    """Cosine, MSSD and MASD per block, side by side on a shared block axis.

    Hover is linked through the data: every point's tooltip carries all three metrics of its block,
    and a dotted spike line marks the block across all three panels. ``bands`` (from
    ``uncertainty.bands``) draws each metric's bootstrap band. ``clip`` (default; ignored with the log
    axis) fits the MSSD/MASD axes to the non-outlier blocks (``outliers``) and writes the outliers'
    values at the top edge, so one or two huge blocks no longer flatten the rest. ``log_mssd``: log
    axes for MSSD and MASD.
    """
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
    drop = sorted(set(int(i) for i in dropped))
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
        if drop:
            sub = df.set_index("index").loc[drop]
            fig.add_trace(go.Scatter(x=drop, y=sub[key], mode="markers", name="dropped",
                                     marker=dict(color=DROP, size=11, symbol="x", line=dict(width=1, color="white")),
                                     customdata=custom[drop], hovertemplate=hover + "", showlegend=(c == 1)),
                          row=1, col=c)
    # One shaded band per run of dropped blocks per panel, added in a single layout update:
    # add_vrect re-validates the whole layout on every call, which made slider moves take seconds.
    runs = []
    for i in drop:
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    axis = lambda c: "" if c == 1 else str(c)  # noqa: E731 - subplot axis suffixes: x, x2, x3
    shapes = [dict(type="rect", xref=f"x{axis(c)}", yref=f"y{axis(c)} domain", x0=a - 0.5, x1=b + 0.5, y0=0, y1=1,
                   fillcolor=DROP, opacity=0.08, line_width=0, layer="below")
              for c in range(1, len(cols) + 1) for a, b in runs]
    fig.update_layout(shapes=shapes)
    if notes:
        fig.update_layout(annotations=list(fig.layout.annotations) + notes)
    if log_mssd:
        fig.update_yaxes(type="log", row=1, col=2)
        fig.update_yaxes(type="log", row=1, col=3)
    fig.update_xaxes(title_text="block")
    fig.update_layout(hovermode="closest")
    return _fixed_margins(_app_style(fig, 340))


def importance_bars(values, dropped=(), title: str = "SimDiff importance (higher = keep)") -> go.Figure:
    v = np.asarray(values, dtype=float)
    drop = set(int(i) for i in dropped)
    colors = [DROP if i in drop else KEEP for i in range(len(v))]
    # A block whose importance is (near) zero would get an invisible bar, yet it is the first to go:
    # draw a stub of 1.5% of the axis; the hover still shows the true value.
    stub = 0.015 * (float(np.abs(v).max()) or 1.0)
    shown = np.where(np.abs(v) < stub, stub, v)
    fig = go.Figure(go.Bar(x=list(range(len(v))), y=shown, marker_color=colors, showlegend=False,
                           customdata=[["dropped" if i in drop else "kept", float(v[i])] for i in range(len(v))],
                           hovertemplate="<b>block %{x}</b><br>importance %{customdata[1]:.4f}<br>%{customdata[0]}<extra></extra>"))
    if drop:
        fig.add_trace(go.Scatter(_removed_marks(v, shown, drop)))
    fig.update_layout(title=dict(text=title, x=0, font=dict(size=15)), bargap=0.15)
    fig.update_xaxes(title_text="block", dtick=1 if len(v) <= 40 else None)
    return _fixed_margins(_app_style(fig, 300))


def _removed_marks(v: np.ndarray, shown: np.ndarray, drop: set) -> dict:
    """A ✕ on every removed block's bar, whatever its value (a zero-importance bar is only a stub)."""
    d = sorted(drop)
    return {"x": d, "y": [float(shown[i]) for i in d], "mode": "markers", "name": "removed",
            "marker": {"color": DROP, "size": 10, "symbol": "x", "line": {"width": 1, "color": "white"}},
            "customdata": [float(v[i]) for i in d], "showlegend": False,
            "hovertemplate": "<b>block %{x}</b> removed<br>importance %{customdata:.4f}<extra></extra>"}


def heatmap(matrix, title: str, x_title: str = "block", y_title: str = "block", x=None, y=None,
            zmin=None, zmax=None, colorscale: str = "Viridis", hover_label: str = "value",
            publication: bool = False) -> go.Figure:
    """One heatmap builder for the app, the HTML report and print (``publication=True``)."""
    m = np.asarray(matrix, dtype=float)
    x = list(range(m.shape[1])) if x is None else x
    y = list(range(m.shape[0])) if y is None else y
    fig = go.Figure(go.Heatmap(z=m, x=x, y=y, zmin=zmin, zmax=zmax, colorscale=colorscale,
                               hovertemplate=f"{y_title} %{{y}}<br>{x_title} %{{x}}<br>{hover_label} %{{z:.4f}}<extra></extra>",
                               colorbar=dict(thickness=12)))
    fig.update_layout(title=dict(text=title, x=0, font=dict(size=15)))
    fig.update_xaxes(title_text=x_title, showspikes=False)
    fig.update_yaxes(title_text=y_title, autorange="reversed")
    return _style(fig, True, height=480, width=560) if publication else _app_style(fig, 430)


def nblock_angular(angular_boundaries) -> tuple[np.ndarray, list[int], list[int]]:
    """PruneMe view: D[n-1, l] = angular distance across the n blocks starting at l (NaN where l+n > L)."""
    A = np.asarray(angular_boundaries, dtype=float)
    L = A.shape[0] - 1
    D = np.full((L, L), np.nan)
    for n in range(1, L + 1):
        for l in range(0, L - n + 1):
            D[n - 1, l] = A[l, l + n]
    return D, list(range(L)), list(range(1, L + 1))


def overlap_matrix(sets: dict[str, list[int]], num_layers: int) -> go.Figure:
    """Criteria × blocks: which blocks each criterion would remove (overlap view)."""
    names = list(sets)
    z = np.zeros((len(names), num_layers))
    for r, n in enumerate(names):
        z[r, list(sets[n])] = 1
    counts = z.sum(0)
    fig = go.Figure(go.Heatmap(z=z, x=list(range(num_layers)), y=names, showscale=False, xgap=2, ygap=2,
                               colorscale=[[0, "#f1f5f9"], [1, DROP]], zmin=0, zmax=1,
                               customdata=np.tile(counts, (len(names), 1)),
                               hovertemplate="%{y}<br>block %{x}: %{z:d} (chosen by %{customdata:d} criteria)<extra></extra>"))
    fig.update_layout(title=dict(text="Blocks each criterion removes", x=0, font=dict(size=15)))
    fig.update_xaxes(title_text="block", dtick=1 if num_layers <= 40 else None, showspikes=False)
    fig.update_yaxes(autorange="reversed")
    return _fixed_margins(_app_style(fig, 90 + 34 * len(names)), left=16 + 8 * max((len(str(n)) for n in names), default=4))


# ---- cheap per-move figures (plain dicts over a once-validated base) ----

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
    """The static part of ``layer_curves`` (the metric traces, bands, axes, style) as a validated dict.

    Built once per scores object and toggle setting; ``curves_spec`` adds the dropped blocks per move.
    """
    spec = layer_curves(layers, dropped=(), scale_free=scale_free, log_mssd=log_mssd, damage=damage, bands=bands,
                        clip=clip).to_dict()
    panels = [t for t in spec["data"] if t.get("name") != "dropped" and t.get("legendgroup") != "band"]
    spec["_panels"] = [{"x": np.asarray(_plain(t["x"])), "y": np.asarray(_plain(t["y"]), dtype=float),
                        "customdata": np.asarray(_plain(t["customdata"]), dtype=float),
                        "xaxis": t.get("xaxis", "x"), "yaxis": t.get("yaxis", "y"),
                        "hovertemplate": t["hovertemplate"]} for t in panels]
    return spec


def _plain(v):
    """An array from a figure dict (ndarray, list, or plotly's base64 typed-array dict)."""
    if isinstance(v, dict) and "bdata" in v:
        import base64

        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return a.reshape([int(n) for n in str(v["shape"]).split(",")]) if "shape" in v else a
    return v


def curves_spec(base: dict, dropped=(), markers: bool = True) -> dict:
    """``layer_curves`` for this dropped set, from ``curves_base``: microseconds, no plotly objects.

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
    """``importance_bars`` as a plain dict (the layout comes from a once-built template per block count).

    ``shapes=True``: the removed blocks' bars are painted red by rectangles over them (layout shapes named
    ``dropped``, a stub bar included) instead of by the bar colours and an ✕ trace, so the traces do
    not change with the dropped set and an in-place chart (ui/live_chart.py) only redraws the shapes.
    """
    v = np.asarray(values, dtype=float)
    drop = set(int(i) for i in dropped)
    stub = 0.015 * (float(np.abs(v).max()) or 1.0)  # near-zero bars stay visible (see importance_bars)
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
    return importance_bars(np.zeros(n)).to_dict()["layout"]


def overlap_spec(sets: dict[str, list[int]], num_layers: int) -> dict:
    """``overlap_matrix`` as a plain dict (layout template cached per block count and row names)."""
    names = list(sets)
    z = np.zeros((len(names), num_layers))
    for r, n in enumerate(names):
        z[r, list(sets[n])] = 1
    counts = z.sum(0)
    trace = {"type": "heatmap", "z": z.tolist(), "x": list(range(num_layers)), "y": names, "showscale": False,
             "xgap": 2, "ygap": 2, "colorscale": [[0, "#f1f5f9"], [1, DROP]], "zmin": 0, "zmax": 1,
             "customdata": np.tile(counts, (len(names), 1)).tolist(),
             "hovertemplate": "%{y}<br>block %{x}: %{z:d} (chosen by %{customdata:d} criteria)<extra></extra>"}
    return {"data": [trace], "layout": dict(_overlap_layout(num_layers, tuple(names)))}


@lru_cache(maxsize=64)
def _overlap_layout(num_layers: int, names: tuple[str, ...]) -> dict:
    return overlap_matrix({n: [] for n in names}, num_layers).to_dict()["layout"]


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


PALETTE = ["#2563eb", "#e11d48", "#059669", "#d97706", "#7c3aed", "#0891b2"]


def overlay_curves(frame: pd.DataFrame, metric: str, relative: bool, title: str = "",
                   removed: dict | None = None) -> go.Figure:
    """One line per run/source of ``frame`` (``sensitivity.overlay_frame``); x = block or relative depth.

    ``removed`` (name -> blocks) marks each run's removed blocks with an x in its colour."""
    fig = go.Figure()
    for n, (name, sub) in enumerate(frame.groupby("run", sort=False)):
        color = PALETTE[n % len(PALETTE)]
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
    _app_style(fig, 420)
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
