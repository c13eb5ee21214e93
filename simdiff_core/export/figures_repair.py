"""Figures for linear replaceability (``analysis/linear.py``): the per-block curve with its band and the
n-block span heatmap laid out like the PruneMe angular-distance one.

    from simdiff_core.export.figures_repair import linear_curve, span_heatmap
    fig = linear_curve(scores.layers, band=bands(scores).get("linear"), dropped=plan.removed_layers)
    fig = span_heatmap(span_replaceability(lm, ids))

Why a module of its own: ``figures.py`` is the shared builder for every other chart; these two only
need its styling helpers. Cost: plotly object construction, no model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .figures import heatmap
from .figures.theme import DROP, KEEP, app_style, report_style

TITLE = "Linear replaceability: share of the removal error one matrix on the block below cannot recover"


def linear_frame(layers: list[dict], band: dict | None = None, dropped=()) -> pd.DataFrame:
    """The table behind ``linear_curve`` (block, value, band, dropped)."""
    v = [np.nan if l.get("linear") is None else float(l["linear"]) for l in layers]
    df = pd.DataFrame({"block": range(len(layers)), "linear": v,
                       "dropped": [i in set(dropped) for i in range(len(layers))]})
    if band:
        df["linear_lo"], df["linear_hi"] = band["lo"], band["hi"]
    return df.set_index("block")


def linear_curve(layers: list[dict], band: dict | None = None, dropped=(), publication: bool = False) -> go.Figure:
    """Per-block linear replaceability (0 = repairable by one matrix, 1 = not at all), optional band."""
    df = linear_frame(layers, band, dropped)
    x = df.index.tolist()
    fig = go.Figure()
    if band:
        lo, hi = df["linear_lo"].to_numpy(float), df["linear_hi"].to_numpy(float)
        ok = ~(np.isnan(lo) | np.isnan(hi))
        xs = [i for i, k in zip(x, ok) if k]
        fig.add_trace(go.Scatter(x=xs + xs[::-1], y=list(hi[ok]) + list(lo[ok][::-1]), fill="toself",
                                 fillcolor="rgba(37, 99, 235, 0.15)", line=dict(width=0), hoverinfo="skip",
                                 name="bootstrap band", showlegend=True))
    fig.add_trace(go.Scatter(x=x, y=df["linear"], mode="lines+markers", name="linear replaceability",
                             line=dict(color=KEEP, width=2), marker=dict(size=5),
                             hovertemplate="block %{x}: %{y:.4f} of the removal error left after the fit<extra></extra>"))
    drop = [i for i in x if df.loc[i, "dropped"] and not np.isnan(df.loc[i, "linear"])]
    if drop:
        fig.add_trace(go.Scatter(x=drop, y=df.loc[drop, "linear"], mode="markers", name="dropped by the plan",
                                 marker=dict(color=DROP, size=9, symbol="x"), hoverinfo="skip"))
    fig.update_layout(title=dict(text=TITLE, x=0, font=dict(size=15)))
    fig.update_xaxes(title_text="block i (span [i, i+1), repaired on block i-1)", showspikes=False)
    fig.update_yaxes(title_text="residual / unrepaired error", range=[0, 1.02], gridcolor="#eef2f7")
    if publication:
        return report_style(fig, True, height=380, width=720)
    return app_style(fig, 360)


def span_grid(heat: dict) -> tuple[np.ndarray, list[int], list[int]]:
    """``heat["values"]`` (None where undefined) as a float matrix V[n-1, a] with its axes."""
    V = np.array([[np.nan if v is None else float(v) for v in row] for row in heat["values"]], dtype=float)
    return V, list(heat["x"]), list(heat["y"])


def span_frame(heat: dict) -> pd.DataFrame:
    V, x, y = span_grid(heat)
    return pd.DataFrame(V, index=pd.Index(y, name="n"), columns=x)


def span_heatmap(heat: dict, publication: bool = False) -> go.Figure:
    """V[n-1, a]: linear replaceability of removing [a, a+n); same axes as ``analysis.derived.nblock_angular``."""
    V, x, y = span_grid(heat)
    keep = ~np.all(np.isnan(V), axis=1)            # lengths beyond --max-span: no row
    rows = [n for n, k in zip(y, keep) if k]
    return heatmap(V[keep], "Linear replaceability across n blocks: low = one matrix repairs the cut",
                   x_title="first block a", y_title="n blocks", x=x, y=rows, zmin=0, zmax=1, colorscale="Viridis",
                   hover_label="unrecovered share", publication=publication)


__all__ = ["linear_curve", "linear_frame", "span_heatmap", "span_frame", "span_grid"]
