"""SimDiff Explorer, page 1: load a model and calibrate it (the default page of ``app.py``'s navigation).

Picks a model (embedded SmolLM2-135M GGUF preselected, a hub id, a local directory, a GGUF file or
a model from the local HF cache), a device/dtype and a calibration text, then runs one streaming
calibration pass (``simdiff_core.workflows.calibrate``) with a live progress bar and a cancel button.
The other pages live in ``pages/`` (registered in ``app.py``) and read the scores from the session.
"""

from __future__ import annotations

import time

import streamlit as st

from simdiff_core import SimDiffError, make_windows
from simdiff_core.data.text import load_text
from simdiff_core.models.load import display_name
from simdiff_core.workflows import calibrate
from simdiff_core.export import figures as charts
from ui import state, views

EMBEDDED = {"Embedded SmolLM2-135M (default, offline)": "default", "Embedded Gemma3-270M (offline)": "gemma3-270m"}
OTHER = ["Hugging Face hub id", "Local model directory", "GGUF file"]
CALIB = ["WikiText-2 (shipped)", "Upload a .txt file", "Paste text", "Hugging Face dataset",
         "Code sample (shipped, CC0)", "Dialogue sample (shipped, CC0)"]
SHIPPED_CALIB = {CALIB[4]: "shipped:code", CALIB[5]: "shipped:dialogue"}

state.setup_page("Load & calibrate")

# ---- inputs (sidebar) ----
with st.sidebar:
    st.subheader("Model")
    cached = views.hf_cache_models()
    choice = st.selectbox("Model source", list(EMBEDDED) + OTHER + [f"HF cache: {m}" for m in cached],
                          key="src_kind", help="The embedded default needs no network. Models already in "
                          "your local Hugging Face cache are listed too.")
    if choice in EMBEDDED:
        spec = EMBEDDED[choice]
    elif choice.startswith("HF cache: "):
        spec = choice[len("HF cache: "):]
    else:
        hint = {"Hugging Face hub id": "e.g. Qwen/Qwen2.5-0.5B", "Local model directory": "/path/to/model-dir",
                "GGUF file": "/path/to/model.gguf"}[choice]
        spec = st.text_input(choice, key="src_text", placeholder=hint, help="Hub ids need the network or a warm cache.").strip()
    c1, c2 = st.columns(2)
    device = c1.selectbox("Device", ["auto", "cpu", "cuda", "mps"], key="device", help="auto: CUDA → MPS → CPU")
    dtype = c2.selectbox("Dtype", ["auto", "float32", "bfloat16", "float16"], key="dtype",
                         help="auto: bf16/fp16 on GPU, fp32 on CPU")
    st.caption(views.device_summary(device, dtype))
    trust = st.checkbox("Trust remote code", key="trust", value=False,
                        help="Run custom model code from the checkpoint. Only for code you have read.")
    stream = st.checkbox("Stream blocks from disk (low memory)", key="stream", value=False,
                         help="Score a model bigger than memory: weights are read one block at a time from "
                              "its safetensors (local directory or an embedded model's cache); the model is not "
                              "kept in memory, so Export & evaluate needs a normal load.")
    budget = st.number_input("Memory budget for weights (MB, 0 = none)", 0, 10**7, 0, step=256, key="stream_budget",
                             disabled=not stream, help="Refuse to hold more than this much weight memory at once.")

    st.subheader("Calibration text")
    calib_kind = st.radio("Source", CALIB, key="calib_kind", help="Text the blocks are measured on.")
    upload = pasted = hf_name = None
    if calib_kind == CALIB[1]:
        upload = st.file_uploader("Text file (UTF-8)", type=["txt", "md"], key="calib_upload")
    elif calib_kind == CALIB[2]:
        pasted = st.text_area("Text", key="calib_text", height=140, placeholder="Paste a few thousand words…")
    elif calib_kind == CALIB[3]:
        hf_name = st.text_input("Dataset", key="calib_hf", placeholder="wikitext/wikitext-2-raw-v1/train",
                                help="DATASET[/CONFIG]/SPLIT; needs the network or a warm datasets cache")
    c1, c2 = st.columns(2)
    samples = c1.number_input("Samples", 1, 4096, 8, key="samples", help="Number of calibration windows")
    seq_len = c2.number_input("Seq. length", 16, 8192, 256, step=16, key="seq_len", help="Tokens per window")
    first_token = st.checkbox("Count position 0 (BOS) in the block metrics", key="first_token", value=True,
                              disabled=stream,
                              help="Position 0 carries the massive attention-sink activation. Included by default, "
                                   "as ShortGPT's Block Influence averages over every token; the heatmaps always "
                                   "use positions 1..S-1. The protocol line on Layer curves says which.")
    go = st.button("Load & calibrate", type="primary", key="calibrate", width="stretch")

# ---- title ----
st.title("SimDiff Explorer")
st.markdown("Which transformer blocks of a causal LM are redundant? Load a model, run calibration text "
            "through it once, then explore **layer curves**, a live **prune preview** and an **export** "
            "with a perplexity check. Settings are in the sidebar.")


def calib_source():
    if calib_kind == CALIB[0]:
        return load_text("wikitext2", purpose="calib")
    if calib_kind in SHIPPED_CALIB:
        return load_text(SHIPPED_CALIB[calib_kind], purpose="calib")
    kind = {CALIB[1]: "upload", CALIB[2]: "paste"}.get(calib_kind, "hf")
    return views.text_from_widgets(kind, upload, pasted, hf_name)


def run_streamed_calibration(t0: float) -> None:
    """Score without loading the model: one block at a time from disk (simdiff_core.analysis.streaming)."""
    from simdiff_core.analysis.streaming import stream_score
    from simdiff_core.models.streaming import resolve_stream_dir

    model_dir = resolve_stream_dir(spec)
    tok = state.cached_tokenizer(str(model_dir))
    src = calib_source()
    ids = make_windows(tok, src, int(samples), int(seq_len))
    bar = st.progress(0.0, text="Calibrating (streaming blocks from disk)…")
    scores = stream_score(model_dir, ids, memory_budget_mb=float(budget) or None, device=device, dtype=dtype,
                          progress=lambda f, msg: bar.progress(min(f, 1.0), text=f"Streaming: {msg}"),
                          calibration={"source": src.description}, source=spec)
    bar.empty()
    state.new_calibration(None, scores, ids,  # model_spec None: nothing is held in memory
                          {"source": src.description, "samples": int(ids.shape[0]), "seq_len": int(ids.shape[1]),
                           "seconds": round(time.perf_counter() - t0, 1), "forward_seconds": scores.meta["seconds"],
                           "streamed": scores.meta.get("stream", True)})


def run_calibration() -> None:
    if not spec:
        raise SimDiffError("enter a model first (hub id, directory or .gguf path)")
    t0 = time.perf_counter()
    # transformers' lazy imports must not run in two threads at once: let the server-start prewarm
    # (state.prewarm_once) finish first; usually it long has by the time anyone clicks
    state.prewarm_once().join()
    if stream:
        return run_streamed_calibration(t0)
    with st.spinner(f"Loading {display_name(spec)} (cached after the first load)…"):
        lm = state.cached_model(spec, device, dtype, trust)
    new_spec = {"spec": spec, "device": device, "dtype": dtype, "trust_remote_code": trust}
    src = calib_source()
    ids = make_windows(lm.tokenizer, src, int(samples), int(seq_len))
    bar = st.progress(0.0, text="Calibrating…")
    stop = st.empty()
    # A click on Cancel makes Streamlit rerun the page, which interrupts the pass at the next progress
    # update; the flag set in the callback lets the new run say what happened.
    stop.button("Cancel", key="cancel_calib", on_click=state.put, args=("calib_cancelled", True))
    live = st.empty()

    def on_batch(partial) -> None:
        # Live curves: the per-block means of the windows scored so far, after every batch. Kept in the
        # session so that Cancel (which interrupts this run) can keep them as usable partial scores.
        done, total = partial.meta["partial"]["windows"], partial.meta["partial"]["of"]
        state.put("_partial_calib", {"scores": partial, "ids": ids[:done], "source": src.description, "t0": t0,
                                     "model_spec": new_spec})
        spec = charts.curves_spec(charts.curves_base(partial.layers, scale_free=bool(state.get("scale_free", True))))
        spec["layout"] = dict(spec["layout"], title={"text": f"Partial: {done} of {total} windows", "x": 0})
        with live.container():
            st.caption(f"**Partial** curves after {done} of {total} calibration windows (they settle as the pass "
                       "goes on; **Cancel** keeps them as partial scores).")
            st.plotly_chart(charts.Spec(spec), key=f"live_curves_{done}", config=charts.plot_config("partial_curves"))

    state.put("_partial_calib", None)
    try:
        scores, ids, info = calibrate(lm, src, int(samples), int(seq_len), windows=ids, first_token=bool(first_token),
                                      on_batch=on_batch, progress=lambda f, msg: bar.progress(min(f, 1.0),
                                                                                              text=f"Calibrating: {msg}"))
    except Exception:
        state.put("_partial_calib", None)  # a failed pass keeps nothing half-computed
        raise
    state.put("_partial_calib", None)
    bar.empty()
    stop.empty()
    live.empty()
    info["seconds"] = round(time.perf_counter() - t0, 1)  # model load included
    # the model and its calibration change together, and every earlier result goes (ui/state.py)
    state.new_calibration(new_spec, scores, ids, info)


if state.get("calib_cancelled"):
    state.put("calib_cancelled", False)
    part = state.get("_partial_calib")
    state.put("_partial_calib", None)
    if part is not None:
        # keep what the interrupted pass measured: usable scores over the windows scored so far
        ps = part["scores"]
        done, total = ps.meta["partial"]["windows"], ps.meta["partial"]["of"]
        state.new_calibration(part["model_spec"], ps, part["ids"],
                              {"source": part["source"], "samples": done, "seq_len": int(part["ids"].shape[1]),
                               "seconds": round(time.perf_counter() - part["t0"], 1), "forward_seconds": 0.0,
                               "partial": f"{done} of {total} windows"})
        state.show_status()
        st.warning(f"Calibration cancelled after {done} of {total} windows: the curves and the preview use those "
                   f"{done} windows (partial scores, no heatmaps). Calibrate again for the full set.",
                   icon=":material/stop_circle:")
    else:
        st.warning("Calibration cancelled; the previous results (if any) are kept.", icon=":material/stop_circle:")

if go:
    try:
        run_calibration()
    except Exception as e:  # noqa: BLE001 — every failure becomes one st.error line
        views.show_error(e)
    state.show_status()

# ---- render ----
lm = state.current_lm()
scores = state.get("scores")
streamed = scores is not None and (state.get("calib_info") or {}).get("streamed")
if streamed and lm is None:
    info = state.get("calib_info")
    st.subheader(f"{display_name(scores.model)} (streamed from disk)")
    st.success(f"Scored {scores.num_layers} blocks one at a time on {info['samples']} × {info['seq_len']} tokens of "
               f"{info['source']} in {info['seconds']} s; the weights were not kept in memory.",
               icon=":material/check_circle:")
    st.caption(f"Streaming details: {info['streamed']}")
    n1, n2 = st.columns(2)
    n1.page_link(state.PAGES["curves"], label="Layer curves & heatmaps", icon=":material/show_chart:")
    n2.page_link(state.PAGES["preview"], label="Prune preview", icon=":material/content_cut:")
    st.info("Export & evaluate needs the model in memory: untick streaming and load it normally.")
    st.stop()
if lm is None:
    st.info("Nothing loaded yet. The embedded default model is preselected: press **Load & calibrate** "
            "in the sidebar (about 10–30 s on a laptop CPU the first time).", icon=":material/arrow_back:")
    st.stop()

st.subheader(lm.name)
c = st.columns(4)
c[0].metric("Blocks", lm.num_layers)
c[1].metric("Parameters", views.human(lm.num_parameters()))
c[2].metric("Family", lm.family)
c[3].metric("Device", f"{lm.device.type} · {str(lm.dtype).replace('torch.', '')}")
if scores is None:
    st.info("Model loaded. Press **Load & calibrate** to measure its blocks.", icon=":material/arrow_back:")
    st.stop()
info = state.get("calib_info") or {}
if info.get("partial"):
    st.info(f"Partial calibration ({info['partial']}, cancelled): {info.get('samples')} × {info.get('seq_len')} "
            f"tokens of {info.get('source')}.", icon=":material/hourglass_bottom:")
else:
    st.success(f"Calibrated on {info.get('samples')} × {info.get('seq_len')} tokens of {info.get('source')} "
               f"in {info.get('seconds')} s (forward pass {info.get('forward_seconds', 0):.1f} s).",
               icon=":material/check_circle:")
st.markdown("**Next:**")
n1, n2, n3 = st.columns(3)
n1.page_link(state.PAGES["curves"], label="Layer curves & heatmaps", icon=":material/show_chart:")
n2.page_link(state.PAGES["preview"], label="Prune preview", icon=":material/content_cut:")
n3.page_link(state.PAGES["export"], label="Export & evaluate", icon=":material/inventory_2:")
with st.expander("Per-block scores (table)"):
    st.dataframe(scores.table(), width="stretch")
