"""Every plotly figure: the app's pages, the HTML report and the CLI build them here. No streamlit.

    from simdiff_core.export import figures
    fig = figures.layer_curves(scores.layers, dropped=plan.removed_layers)     # app: side-by-side panels
    fig = figures.curves_figure(scores, damage=dmg, alpha=0.5, removed=plan.removed_layers)  # report
    fig = figures.heatmap(scores.matrices["cka"], "CKA between block outputs")
    fig.show()  # or fig.to_html(...), fig.write_image("fig.pdf") (kaleido + Chromium)

One package, three modules: ``theme`` (the one palette and style, ``plot_config``, ``Spec``), ``report``
(the report's figures, print-ready with ``publication=True``; the heatmap) and ``interactive`` (the
app's charts, the ones a slider move changes built as plain dicts). One builder per chart; pure
functions of scores/plans/results, tested without Streamlit (tests/export/test_figures.py).
"""

from .interactive import (bars_spec, contiguous_runs, curves_base, curves_spec, layer_curves, loss_curve,
                          overlap_spec, overlay_curves, plain_array, shootout_bars, stability_spec, with_band)
from .report import agreement_grid, agreement_scatter, curves_figure, heatmap, matrix_figures, set_damage_figure
from .theme import Spec, plot_config

__all__ = ["Spec", "agreement_grid", "agreement_scatter", "bars_spec", "contiguous_runs", "curves_base",
           "curves_figure", "curves_spec", "heatmap", "layer_curves", "loss_curve", "matrix_figures",
           "overlap_spec", "overlay_curves", "plain_array", "plot_config", "set_damage_figure", "shootout_bars",
           "stability_spec", "with_band"]
