"""The app's figures now live in ``simdiff_core.figures`` (one figures module for the app, the report
and the CLI); this name is kept so code written against ``ui.charts`` still runs."""

from simdiff_core.figures import (  # noqa: F401
    DROP, FONT, KEEP, MUTED, curves_frame, heatmap, importance_bars, layer_curves, loss_curve, nblock_angular,
    overlap_matrix, plot_config, shootout_bars,
)
