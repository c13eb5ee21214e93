"""The report's figures (``export/report.py``, ``python -m simdiff_core report``), print-ready with
``publication=True``; ``heatmap`` is the one heatmap builder of the report and the app."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ...analysis.metrics import importance
from ...evaluation.agreement import spearman
from .theme import DAMAGE, DROP, KEEP, app_style, report_style


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
        color = DAMAGE if name.startswith("Δ") else KEEP
        fig.add_trace(go.Scatter(x=x, y=ys, mode="lines+markers", name=name, line=dict(color=color, width=2),
                                 marker=dict(size=5), hovertemplate="block %{x}: %{y:.4g}<extra>" + name + "</extra>"),
                      row=r, col=1)
        if removed:
            fig.add_trace(go.Scatter(x=removed, y=[ys[i] for i in removed], mode="markers", name="removed",
                                     marker=dict(color=DROP, size=10, symbol="x"), showlegend=r == 1,
                                     hovertemplate="removed block %{x}<extra></extra>"), row=r, col=1)
        log = log and min(ys) > 0
        # powers of ten only: plotly's default minor log labels ("2", "5") read as values in print
        fig.update_yaxes(title_text=name, type="log" if log else "linear", dtick=1 if log else None, row=r, col=1)
    fig.update_xaxes(range=[-0.5, L - 0.5])
    fig.update_xaxes(title_text="block", dtick=1 if L <= 32 else None, row=len(rows), col=1)
    title = f"{scores.model}: per-block redundancy" + (" and measured damage" if damage is not None else "")
    fig.update_layout(title=title)
    return report_style(fig, publication, height=170 * len(rows) + 80)


def matrix_figures(scores, publication: bool = False) -> list[go.Figure]:
    """The cross-layer heatmaps stored in ``scores.matrices`` (those present)."""
    m = scores.matrices or {}
    specs = [("output_cosine", "cosine between block outputs", "block", "block"),
             ("cka", "linear CKA between block outputs", "block", "block"),
             ("angular_boundaries", "angular distance between boundaries (PruneMe: window [l, l+n))",
              "boundary (end)", "boundary (start)")]
    return [heatmap(m[k], t, xt, yt, publication=publication) for k, t, xt, yt in specs if k in m and m[k]]


def agreement_scatter(scores, damage, criterion: str = "simdiff", alpha: float = 0.5,
                      publication: bool = False, **fusion) -> go.Figure:
    """Criterion importance (x) against measured damage (y), each point labelled by its block."""
    imp = importance(scores.layers, criterion, alpha=alpha, **fusion)
    d = damage.deltas()
    name = f"simdiff (α={alpha:g})" if criterion == "simdiff" else criterion
    fig = go.Figure(go.Scatter(x=list(imp), y=d, mode="markers+text", text=[str(i) for i in range(len(d))],
                               textposition="top center", marker=dict(size=8, color=KEEP),
                               hovertemplate="block %{text}: importance %{x:.4g}, Δ loss %{y:.4g}<extra></extra>"))
    fig.update_layout(title=f"{name} vs measured damage (Spearman ρ = {spearman(imp, d):.2f})",
                      xaxis_title=f"{name} importance (higher = keep)", yaxis_title="Δ loss without block")
    return report_style(fig, publication, height=420, width=560)


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
    return report_style(fig, False, height=330 * nrows + 60)


def set_damage_figure(rows: list[dict]) -> go.Figure:
    """Measured damage of each removed set next to the sum of its single-block damages."""
    labels = [r["label"] for r in rows]
    fig = go.Figure([go.Bar(name="measured (set removed together)", x=labels, y=[r["delta_loss"] for r in rows]),
                     go.Bar(name="sum of single-block damages", x=labels, y=[r["additive_delta"] for r in rows])])
    fig.update_layout(barmode="group", title="multi-block damage vs single-block prediction",
                      yaxis_title="Δ loss")
    return report_style(fig, False, height=400)


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
    return report_style(fig, True, height=480, width=560) if publication else app_style(fig, 430)
