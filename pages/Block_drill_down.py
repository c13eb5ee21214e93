"""Block drill-down: the calibration tokens whose hidden state one block changes most.

Runs a second, bounded forward pass over the first few calibration windows that stops after the
chosen block (``simdiff_core.analysis.drilldown``) and lists the tokens with the largest ||y − x|| / ||x||
in context — where massive activations and BOS sinks show up, the evidence behind an MSSD spike.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from simdiff_core.analysis.drilldown import MAX_WINDOWS, drill_down
from ui import models, shell, state, views

shell.setup_page("Block drill-down")
st.title("Block drill-down")
scores = models.require_scores()
lm = models.require_model()
ids = state.get("calib_ids")
L = scores.num_layers
if ids is None or lm.num_layers != L:
    st.info("Calibrate the loaded model first (Load & calibrate).", icon=":material/arrow_back:")
    st.stop()

mssd = [l["mssd_rel"] for l in scores.layers]
with st.sidebar:
    st.subheader("Drill-down")
    block = st.selectbox("Block", list(range(L)), index=int(np.argmax(mssd)), key="dd_block",
                         format_func=lambda i: f"block {i} · MSSD/‖x‖² {mssd[i]:.3g}",
                         help="Default: the block with the largest scale-free MSSD.")
    windows = st.number_input("Windows", 1, min(MAX_WINDOWS, int(ids.shape[0])), min(4, int(ids.shape[0])),
                              key="dd_windows", help="Calibration windows the second pass runs over (from the first).")
    top = st.number_input("Top tokens", 5, 200, 20, key="dd_top")
    go_btn = st.button("Drill down", type="primary", key="dd_run", width="stretch")

key = (id(scores), int(block), int(windows), int(top))
if go_btn:
    try:
        with st.spinner(f"Running block {block} on {windows} windows…"):
            state.put_result("drill", {"key": key, "result": drill_down(lm, ids, int(block), int(windows), int(top))})
    except Exception as e:  # noqa: BLE001
        views.show_error(e)
res = state.result("drill")
if not res or res["key"] != key:
    st.info("Pick a block and press **Drill down** (one bounded pass over the first windows, this block only).",
            icon=":material/arrow_back:")
    st.stop()
d = res["result"]
s = d.summary()
m = st.columns(4)
m[0].metric("Block", d.block)
m[1].metric("Tokens", s["tokens"])
m[2].metric("Median ‖y−x‖/‖x‖", f"{s['median']:.3g}")
m[3].metric("Max ‖y−x‖/‖x‖", f"{s['max']:.3g}")
st.caption(f"The top {len(d.top)} tokens carry {s['share_top']:.0%} of the summed relative change of the "
           f"{s['tokens']} tokens. Relative change r = ‖y − x‖₂ / ‖x‖₂ (input x, output y of the block).")

def shown(text: str) -> str:
    """Whitespace made visible: a newline is ⏎, a token of spaces is ␣."""
    t = text.replace("\n", "⏎")
    return t if t.strip() else "␣" * max(1, len(t))


rows = "".join(
    f"<tr><td>{t['value']:.4g}</td><td>{t['window']}:{t['position']}</td><td class='sd-ctx'>"
    f"{html.escape(t['before'].replace(chr(10), '⏎'))}<mark>{html.escape(shown(t['token']))}</mark>"
    f"{html.escape(t['after'].replace(chr(10), '⏎'))}</td>"
    f"<td>{t['x_norm']:.3g}</td><td>{'special' if t['special'] else ''}</td></tr>" for t in d.top)
st.html("<style>.sd-dd{border-collapse:collapse;font:13px Inter,system-ui,sans-serif;width:100%}"
        ".sd-dd td,.sd-dd th{border-bottom:1px solid #eef2f7;padding:4px 8px;text-align:left}"
        ".sd-ctx{font-family:ui-monospace,monospace;white-space:pre-wrap}.sd-dd mark{background:#fde68a}</style>"
        "<table class='sd-dd' data-testid='sd-drill'><tr><th>‖y−x‖/‖x‖</th><th>window:pos</th><th>in context</th>"
        f"<th>‖x‖</th><th></th></tr>{rows}</table>")
st.download_button("Top tokens (CSV)", d.frame().to_csv(index=False).encode(), f"block_{d.block}_tokens.csv",
                   "text/csv", key="dd_csv", on_click="ignore")

# log colour scale: one sink token can be 1000x the rest
fig = go.Figure(go.Heatmap(z=np.log10(np.maximum(d.values, 1e-12)), customdata=d.values, colorscale="Magma",
                           colorbar=dict(thickness=12, title="log₁₀ r"),
                           hovertemplate="window %{y}, position %{x}<br>r %{customdata:.4g}<extra></extra>"))
fig.update_layout(title=dict(text=f"‖y−x‖/‖x‖ of block {d.block} per token (windows × positions, log colour)", x=0),
                  height=120 + 28 * d.values.shape[0], margin=dict(l=10, r=10, t=50, b=10))
fig.update_xaxes(title_text="position")
fig.update_yaxes(title_text="window", autorange="reversed", dtick=1)
views.chart(fig, f"block_{d.block}_token_change", "dd_heat", frame=pd.DataFrame(d.values))
