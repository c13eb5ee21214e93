"""Load & calibrate: load a model and calibrate it (the default page of ``app.py``'s navigation).

Picks a model (embedded SmolLM2-135M GGUF preselected, a hub id, a local directory, a GGUF file or
a model from the local HF cache), a device/dtype and a calibration text, then runs one streaming
calibration pass with a live progress bar and a cancel button (the procedures: ``ui/calibration.py``).
The other pages live in ``pages/`` (registered in ``app.py``) and read the scores from the session.
"""

from __future__ import annotations

import streamlit as st

from simdiff_core.models.load import display_name
from ui import calibration, links, models, shell, state, views

EMBEDDED = {"Embedded SmolLM2-135M (default, offline)": "default", "Embedded Gemma3-270M (offline)": "gemma3-270m"}
OTHER = ["Hugging Face hub id", "Local model directory", "GGUF file"]

shell.setup_page("Load & calibrate")

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
                              "kept in memory. Export & evaluate then writes the pruned checkpoint the same way.")
    budget = st.number_input("Memory budget for weights (MB, 0 = none)", 0, 10**7, 0, step=256, key="stream_budget",
                             disabled=not stream, help="Refuse to hold more than this much weight memory at once.")

    st.subheader("Calibration text")
    calib_kind = st.radio("Source", list(calibration.BY_LABEL), key="calib_kind",
                          help="Text the blocks are measured on.")
    source = calibration.BY_LABEL[calib_kind]
    upload = pasted = hf_name = None
    if source.key == "upload":
        upload = st.file_uploader("Text file (UTF-8)", type=["txt", "md"], key="calib_upload")
    elif source.key == "paste":
        pasted = st.text_area("Text", key="calib_text", height=140, placeholder="Paste a few thousand words…")
    elif source.key == "hf":
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


if state.get("calib_cancelled"):
    calibration.recover_cancelled()

recompute = bool(state.pop("_recompute", False))  # the Recompute button below (a run from the library)
if go or recompute:
    try:
        calibration.run(calibration.Request(
            spec=spec, source=source, samples=int(samples), seq_len=int(seq_len), device=device, dtype=dtype,
            trust_remote_code=trust, stream=stream, budget_mb=float(budget), first_token=bool(first_token),
            upload=upload, pasted=pasted, hf_name=hf_name, recompute=recompute))
    except Exception as e:  # noqa: BLE001 — every failure becomes one st.error line
        views.show_error(e)
    shell.show_status()
    links.publish()  # the URL names the new run

# ---- render ----
lm = models.current_lm()
scores = state.get("scores")
streamed = scores is not None and (state.get("calib_info") or {}).get("streamed")
if streamed and lm is None:
    info = state.get("calib_info")
    st.subheader(f"{display_name(scores.model)} (streamed from disk)")
    st.success(f"Scored {scores.num_layers} blocks one at a time on {info['samples']} × {info['seq_len']} tokens of "
               f"{info['source']} in {info['seconds']} s; the weights were not kept in memory.",
               icon=":material/check_circle:")
    st.caption(f"Streaming details: {info['streamed']}")
    n1, n2, n3 = st.columns(3)
    n1.page_link(shell.PAGES["curves"], label="Layer curves & heatmaps", icon=":material/show_chart:")
    n2.page_link(shell.PAGES["preview"], label="Prune preview", icon=":material/content_cut:")
    n3.page_link(shell.PAGES["export"], label="Export (streamed prune)", icon=":material/inventory_2:")
    st.stop()
if lm is None and scores is not None and state.get("run_id"):
    # an opened run (Runs page, a link): its scores are here, its model is loaded only where a page runs it
    info = state.get("calib_info") or {}
    st.subheader(display_name(scores.model))
    st.success(f"Run {state.get('run_id')} from the run library (computed {info.get('computed', '?')}): "
               f"{scores.num_layers} blocks scored on {info.get('samples')} × {info.get('seq_len')} tokens of "
               f"{info.get('source')}. The model is not loaded: the curves and the preview need none.",
               icon=":material/inventory:")
    n1, n2, n3 = st.columns(3)
    n1.page_link(shell.PAGES["curves"], label="Layer curves & heatmaps", icon=":material/show_chart:")
    n2.page_link(shell.PAGES["preview"], label="Prune preview", icon=":material/content_cut:")
    n3.page_link(shell.PAGES["runs"], label="All runs", icon=":material/inventory:")
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
elif state.get("run_from_library"):
    lib = state.get("run_from_library")
    st.success(f"Calibrated on {info.get('samples')} × {info.get('seq_len')} tokens of {info.get('source')}: "
               f"from the run library, computed {lib['computed']} (same weights, text and settings; run "
               f"{lib['run']}).", icon=":material/inventory:")
    st.button("Recompute", key="recompute", on_click=state.put, args=("_recompute", True),
              help="Calibrate again instead of reopening the stored run (the new scores replace it).")
else:
    st.success(f"Calibrated on {info.get('samples')} × {info.get('seq_len')} tokens of {info.get('source')} "
               f"in {info.get('seconds')} s (forward pass {info.get('forward_seconds', 0):.1f} s).",
               icon=":material/check_circle:")
st.markdown("**Next:**")
n1, n2, n3 = st.columns(3)
n1.page_link(shell.PAGES["curves"], label="Layer curves & heatmaps", icon=":material/show_chart:")
n2.page_link(shell.PAGES["preview"], label="Prune preview", icon=":material/content_cut:")
n3.page_link(shell.PAGES["export"], label="Export & evaluate", icon=":material/inventory_2:")
with st.expander("Per-block scores (table)"):
    st.dataframe(scores.table(), width="stretch")
