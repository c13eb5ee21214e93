"""Small pieces shared by the pages: one-line errors, device info, the local HF cache, the block diagram.

    from ui import views
    try: ...
    except Exception as e: views.show_error(e)      # st.error(one line), never a traceback
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from simdiff_core import SimDiffError


def one_line(e: BaseException) -> str:
    if isinstance(e, torch.OutOfMemoryError):
        return ("out of GPU memory: use fewer samples or a shorter sequence length, dtype bfloat16, "
                "or device cpu")
    if isinstance(e, SimDiffError):
        return str(e)
    text = (str(e).strip().splitlines() or [""])[0][:300]
    return f"unexpected {type(e).__name__}: {text} (try again with smaller settings or another model)"


def show_error(e: BaseException) -> None:
    st.error(one_line(e), icon=":material/error:")


def text_from_widgets(kind: str, upload=None, pasted: str | None = None, hf_name: str | None = None):
    """The text a visitor chose with the upload / paste / HF-dataset widgets (``kind``: "upload", "paste" or
    "hf"), shared by Load & calibrate and Calibration sensitivity; bad input raises a one-line SimDiffError."""
    from simdiff_core import SimDiffError
    from simdiff_core.data.text import load_text, text_source

    if kind == "upload":
        if upload is None:
            raise SimDiffError("no file uploaded: choose a .txt file first")
        try:
            return text_source(upload.getvalue().decode("utf-8"), f"uploaded file {upload.name}")
        except UnicodeDecodeError:
            raise SimDiffError(f"'{upload.name}' is not UTF-8 text") from None
    if kind == "paste":
        return text_source(pasted or "", "pasted text")
    if not (hf_name or "").strip():
        raise SimDiffError("enter a dataset as DATASET[/CONFIG]/SPLIT")
    return load_text("hf:" + hf_name.strip(), purpose="calib")


def device_summary(device: str = "auto", dtype: str = "auto") -> str:
    """What ``auto`` resolves to here, with the GPU name and memory when there is one."""
    from simdiff_core.models.device import pick_device, pick_dtype

    try:
        dev = pick_device(device)
        dt = pick_dtype(dtype, dev)
    except SimDiffError as e:
        return f"⚠️ {e}"
    text = f"runs on **{dev.type}** in **{str(dt).replace('torch.', '')}**"
    if dev.type == "cuda":
        i = dev.index or 0
        props = torch.cuda.get_device_properties(i)
        free, total = torch.cuda.mem_get_info(i)
        text += f" · {props.name}, {free / 2**30:.1f} of {total / 2**30:.1f} GiB free"
    elif dev.type == "cpu":
        text += f" · {os.cpu_count()} CPU cores"
    return text


def hf_cache_models(limit: int = 50) -> list[str]:
    """Hub ids of causal-LM-looking models already in the local Hugging Face cache (no network)."""
    root = Path(os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
                or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub")
    found = []
    try:
        for d in sorted(root.glob("models--*")):
            if any((s / "config.json").exists() for s in (d / "snapshots").glob("*")):
                found.append(d.name[len("models--"):].replace("--", "/"))
            if len(found) >= limit:
                break
    except OSError:
        return []
    return found


def block_diagram(num_layers: int, removed, scores=None) -> str:
    """HTML strip of the block stack: kept blocks solid, removed ones greyed and struck through."""
    gone = set(int(i) for i in removed)
    cells = []
    for i in range(num_layers):
        cls = "sd-block sd-gone" if i in gone else "sd-block"
        tip = f"block {i}: {'removed' if i in gone else 'kept'}"
        if scores is not None:
            tip += f" · importance {scores[i]:.4f}"
        cells.append(f'<div class="{cls}" title="{html.escape(tip)}">{i}</div>')
    return (
        "<style>.sd-stack{display:flex;flex-wrap:wrap;gap:4px;margin:4px 0 12px}"
        ".sd-block{min-width:34px;height:38px;border-radius:6px;background:#2563eb;color:white;"
        "display:flex;align-items:center;justify-content:center;font:600 13px Inter,system-ui,sans-serif;"
        "box-shadow:0 1px 2px rgba(15,23,42,.15)}"
        ".sd-gone{background:#e2e8f0;color:#94a3b8;text-decoration:line-through;box-shadow:none;"
        "border:1px dashed #e11d48}</style>"
        f'<div class="sd-stack" data-testid="sd-stack">{"".join(cells)}</div>'
    )


def run_marker(name: str, count: int) -> None:
    """An invisible marker carrying a run counter (``state.count_run``), read by the browser test."""
    st.html(f'<span class="sd-runs" data-name="{html.escape(name)}" data-count="{int(count)}" hidden></span>')


def estimate_cost(lm, removed) -> dict:
    """Parameters before/after and the speedup estimated from per-token matmul work (no forward pass).

    Per-token FLOPs are ~2 x (block weights + LM head weights); embeddings are a lookup. The head
    counts even when tied to the embeddings, since the logits matmul runs anyway.
    """
    from simdiff_core.models.blocks import count_parameters
    from simdiff_core.pruning.prune import block_parameter_count

    per_block = block_parameter_count(lm)
    total = count_parameters(lm.model)
    removed_params = sum(per_block[i] for i in removed)
    head = lm.model.get_output_embeddings()
    head_params = head.weight.numel() if head is not None else 0
    work_before = sum(per_block) + head_params
    work_after = work_before - removed_params
    return {"params_before": total, "params_after": total - removed_params,
            "speedup": work_before / max(work_after, 1)}


def human(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return str(int(n))


def figure_frame(fig) -> "pd.DataFrame":
    """The data drawn in a plotly figure (object or dict) as a table, for its CSV download.

    Line/bar/scatter traces: one row per point (trace, x, y); a single heatmap: its matrix (rows = y,
    columns = x). Fill-only helper traces (bands) are kept, named as drawn.
    """
    import pandas as pd

    from simdiff_core.export.figures import plain_array

    d = fig if isinstance(fig, dict) else fig.to_dict()
    traces = [t for t in d.get("data", []) if isinstance(t, dict)]
    heat = [t for t in traces if t.get("type") == "heatmap"]
    if len(heat) == 1 and len(traces) == 1:
        t = heat[0]
        z = np.asarray(plain_array(t["z"]), dtype=float)
        x = list(plain_array(t.get("x"))) if t.get("x") is not None else list(range(z.shape[1]))
        y = list(plain_array(t.get("y"))) if t.get("y") is not None else list(range(z.shape[0]))
        return pd.DataFrame(z, index=pd.Index(y, name="y"), columns=x)
    rows = []
    for n, t in enumerate(traces):
        if t.get("x") is None or t.get("y") is None:
            continue
        xs, ys = list(plain_array(t["x"])), list(plain_array(t["y"]))
        name = t.get("name") or f"trace {n}"
        rows += [{"trace": name, "panel": t.get("xaxis", "x"), "x": x, "y": y} for x, y in zip(xs, ys)]
    return pd.DataFrame(rows)


def figure_png(fig) -> bytes:
    """PNG of a plotly figure (object or dict) via kaleido, rendered only when the button is clicked."""
    import plotly.graph_objects as go

    from simdiff_core.export.report import figure_bytes

    return figure_bytes(go.Figure(fig) if isinstance(fig, dict) else fig, "png")


def chart(fig, name: str, key: str, frame=None, config: dict | None = None, live: bool = False,
          bind: dict | None = None, payload: dict | None = None) -> None:
    """``st.plotly_chart`` plus its data as CSV and the chart as PNG (two real download buttons).

    ``frame``: the table behind the chart (default: ``figure_frame``, the points as drawn). The PNG is
    made by kaleido on click only (deferred), so the buttons cost nothing per rerun.
    ``live``: draw it with ``ui.live_chart`` (updated in place by ``Plotly.react``) instead of
    ``st.plotly_chart`` (redrawn from scratch whenever the figure changes): for charts a slider move changes.
    ``bind``/``payload``: also repainted in the browser from the precomputed payload as the slider widgets
    move (ui/live_slider.py; ``live_chart.plotly_live``'s ``live``/``payload``).
    """
    from simdiff_core.export import figures

    spec = fig.to_dict() if isinstance(fig, figures.Spec) else fig
    if live:
        from ui.live_chart import plotly_live

        plotly_live(spec, key, config or figures.plot_config(name), live=bind, payload=payload)
    else:
        st.plotly_chart(fig, key=key, config=config or figures.plot_config(name))
    df = frame if frame is not None else figure_frame(spec)
    c = st.columns([1, 1, 6])
    c[0].download_button("CSV", df.to_csv().encode(), f"{name}.csv", "text/csv", key=f"{key}_csv",
                         icon=":material/table:", help="The data behind this chart", on_click="ignore")
    c[1].download_button("PNG", lambda: figure_png(spec), f"{name}.png", "image/png", key=f"{key}_png",
                         icon=":material/image:", help="This chart as a PNG image (2x)", on_click="ignore")
