"""The one look of every figure: the palette, the screen style (the app) and the print style (the report,
``publication=True``), the modebar config and ``Spec``."""

from __future__ import annotations

import plotly.graph_objects as go

KEEP = "#2563eb"     # blue: kept blocks, main curves
DROP = "#e11d48"     # rose: blocks a plan removes
MUTED = "#94a3b8"    # grey: context (dense, not in the plan, bands' error bars)
GRID = "#eef2f7"
EMPTY = "#f1f5f9"    # an empty heatmap cell
SERIES = [KEEP, DROP, "#059669", "#d97706", "#7c3aed", "#0891b2"]   # one colour per run / source, in order
DAMAGE = SERIES[2]   # measured damage next to the proxies
FONT = "Inter, system-ui, -apple-system, Segoe UI, sans-serif"


def report_style(fig: go.Figure, publication: bool, height: int, width: int | None = None) -> go.Figure:
    """The report's figures: ``publication`` is the print style (white, larger sans-serif fonts, no legend,
    a fixed size for a one-column paper figure), else the report's screen style."""
    if publication:
        fig.update_layout(template="simple_white", font=dict(family="Arial, Helvetica, sans-serif", size=15),
                          width=width or 900, height=height, margin=dict(l=80, r=30, t=50, b=60),
                          showlegend=False)
    else:
        fig.update_layout(template="plotly_white", height=height, margin=dict(l=60, r=20, t=50, b=40))
    return fig


def app_style(fig: go.Figure, height: int) -> go.Figure:
    """The app's charts: white, the app font, a horizontal legend above, dotted spike lines across panels."""
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=60, b=10), font=dict(family=FONT, size=13),
                      plot_bgcolor="white", paper_bgcolor="white", hoverlabel=dict(font_size=12),
                      legend=dict(orientation="h", yanchor="bottom", y=1.08, x=0))
    fig.update_xaxes(showgrid=True, gridcolor=GRID, zeroline=False, showspikes=True, spikemode="across",
                     spikethickness=1, spikecolor=MUTED, spikedash="dot")
    fig.update_yaxes(showgrid=True, gridcolor=GRID, zeroline=False)
    return fig


def fixed_margins(fig: go.Figure, left: int = 56, bottom: int = 48) -> go.Figure:
    """Fixed margins, no automargin: plotly otherwise measures every tick label and redraws until the
    margins settle, which was most of the browser's work per slider move (bench/browser_slider.py)."""
    fig.update_layout(margin=dict(l=left, b=bottom, autoexpand=False))
    fig.update_xaxes(automargin=False)
    fig.update_yaxes(automargin=False)
    return fig


def plot_config(filename: str) -> dict:
    """Client-side PNG export (the modebar camera button): no server-side renderer needed."""
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
