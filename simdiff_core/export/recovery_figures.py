"""Figures of a LoRA recovery with its dense reference (kept apart from the shared figures package).

    from simdiff_core.export.recovery_figures import loss_curves
    fig = loss_curves(report["loss_curve"], report["dense_reference"]["loss_curve"])

Why: the pruned model's training loss alone says "it learned"; drawn beside the dense model's loss
under the same run it shows how much of that is learning the text, which the dense model does too.
"""

from __future__ import annotations

import plotly.graph_objects as go

from .figures import loss_curve
from .figures.theme import KEEP

DENSE = "#64748b"


def loss_curves(curve: list[dict], dense_curve: list[dict] | None = None) -> go.Figure:
    """``figures.loss_curve`` of the pruned model plus, when given, the dense reference's curve."""
    fig = loss_curve(curve)
    fig.data[0].name = "pruned + LoRA"
    fig.data[0].line.color = KEEP
    if dense_curve:
        fig.add_trace(go.Scatter(x=[p["step"] for p in dense_curve], y=[p["loss"] for p in dense_curve],
                                 mode="lines+markers", line=dict(color=DENSE, dash="dash"), marker=dict(size=4),
                                 name="dense + same LoRA"))
        fig.update_layout(title="LoRA training loss: pruned model and the dense reference")
    return fig
