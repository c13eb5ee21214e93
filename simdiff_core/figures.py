"""Plotly figure builders shared by the report, the CLI and (optionally) the app. No streamlit here.

    from simdiff_core.figures import curves_figure, heatmap_figure, agreement_scatter
    fig = curves_figure(scores, damage=dmg, alpha=0.5, removed=plan.removed_layers)
    fig.show()  # or fig.to_html(...), fig.write_image("fig.pdf") (kaleido + Chromium)

``publication=True`` switches to a print style: white background, larger serif-free fonts, no
hover/mode-bar-oriented decoration, fixed size suited to a one-column paper figure.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .agreement import AGREEMENT_CRITERIA, spearman
from .metrics import importance

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
    z = np.asarray(matrix, dtype=np.float64)
    fig = go.Figure(go.Heatmap(z=z, x=list(range(z.shape[1])), y=list(range(z.shape[0])), colorscale=colorscale,
                               hovertemplate=y_title + " %{y}, " + x_title + " %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, yaxis_autorange="reversed")
    return _style(fig, publication, height=480, width=560)


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
