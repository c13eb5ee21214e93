"""Calibration in the app: the text sources (one list for Load & calibrate and Calibration sensitivity)
and Load & calibrate's procedures: a full pass with live curves and Cancel, a streamed pass, and the
recovery of a cancelled pass's partial scores. Every calibration the session adopts goes through
``install``.

    req = calibration.Request(spec="default", source=calibration.BY_KEY["wikitext2"], samples=8, seq_len=256)
    calibration.run(req)                 # raises SimDiffError (or anything) for the page to show in one line
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import streamlit as st

from simdiff_core import SimDiffError, make_windows
from simdiff_core.data.text import load_text
from simdiff_core.export import figures
from simdiff_core.models.load import display_name
from simdiff_core.workflows import calibrate, calibration_info
from ui import models, runs, shell, state, views


@dataclass(frozen=True)
class Source:
    """A calibration text the app offers: ``label`` on Load & calibrate, ``run_name`` on Calibration
    sensitivity (a run's name in its tables and legends), ``spec`` for a shipped text (``load_text``);
    without one the text comes from the upload / paste / dataset widgets named by ``key``."""

    key: str
    label: str
    run_name: str
    spec: str | None = None


SOURCES = (
    Source("wikitext2", "WikiText-2 (shipped)", "WikiText-2 (shipped)", "wikitext2"),
    Source("upload", "Upload a .txt file", "Uploaded .txt"),
    Source("paste", "Paste text", "Pasted text"),
    Source("hf", "Hugging Face dataset", "Hugging Face dataset"),
    Source("code", "Code sample (shipped, CC0)", "Code sample (shipped, CC0)", "shipped:code"),
    Source("dialogue", "Dialogue sample (shipped, CC0)", "Dialogue sample (shipped, CC0)", "shipped:dialogue"),
)
BY_KEY = {s.key: s for s in SOURCES}
BY_LABEL = {s.label: s for s in SOURCES}
BY_RUN_NAME = {s.run_name: s for s in SOURCES}
# Calibration sensitivity lists the shipped texts first (they work offline, two are its default)
RUN_NAMES = [s.run_name for s in SOURCES if s.spec] + [s.run_name for s in SOURCES if not s.spec]


def load_source(source: Source, upload=None, pasted: str | None = None, hf_name: str | None = None):
    """The ``TextSource`` of ``source``: a shipped text, or what the widgets hold (``views.text_from_widgets``)."""
    if source.spec is not None:
        return load_text(source.spec, purpose="calib")
    return views.text_from_widgets(source.key, upload, pasted, hf_name)


@dataclass
class Request:
    """What Load & calibrate's sidebar asks for."""

    spec: str
    source: Source
    samples: int
    seq_len: int
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    stream: bool = False
    budget_mb: float = 0.0           # streamed: weight memory budget, 0 = none
    first_token: bool = True
    upload: object = None
    pasted: str | None = None
    hf_name: str | None = None
    recompute: bool = False          # calibrate even where the run library holds this calibration

    def text(self):
        return load_source(self.source, self.upload, self.pasted, self.hf_name)

    def text_spec(self) -> str | None:
        """The text as a spec that reloads it (shipped texts, datasets), kept with the run so that a page
        loading an opened run's model can rebuild its windows; None for an upload or a pasted text."""
        if self.source.spec is not None:
            return self.source.spec
        return f"hf:{self.hf_name.strip()}" if self.source.key == "hf" and (self.hf_name or "").strip() else None

    def model_spec(self) -> dict:
        return {"spec": self.spec, "device": self.device, "dtype": self.dtype,
                "trust_remote_code": self.trust_remote_code}


def install(model_spec: dict | None, scores, ids, info: dict) -> None:
    """Adopt a calibration: the model and its scores change together and every earlier result goes
    (``state.new_calibration``). ``model_spec`` None: streamed, nothing held in memory."""
    state.new_calibration(model_spec, scores, ids, info)


def run(req: Request) -> None:
    """Load the model (cached) and calibrate it with a progress bar, live partial curves and Cancel."""
    if not req.spec:
        raise SimDiffError("enter a model first (hub id, directory or .gguf path)")
    t0 = time.perf_counter()
    # transformers' lazy imports must not run in two threads at once: let the server-start prewarm
    # (shell.prewarm_once) finish first; usually it long has by the time anyone clicks
    shell.prewarm_once().join()
    if req.stream:
        return _run_streamed(req, t0)
    with st.spinner(f"Loading {display_name(req.spec)} (cached after the first load)…"):
        lm = models.cached_model(req.spec, req.device, req.dtype, req.trust_remote_code)
    new_spec = req.model_spec()
    src = req.text()
    ids = make_windows(lm.tokenizer, src, int(req.samples), int(req.seq_len))
    # Identical weights, windows and options give identical scores: reopen the stored run instead of
    # recomputing (Load & calibrate's Recompute button sets req.recompute).
    key, settings = runs.calibration_key(lm, ids, bool(req.first_token))
    if not req.recompute and runs.reopen(key, new_spec, ids):
        return
    bar = st.progress(0.0, text="Calibrating…")
    stop = st.empty()
    # A click on Cancel makes Streamlit rerun the page, which interrupts the pass at the next progress
    # update; the flag set in the callback lets the new run say what happened (recover_cancelled).
    stop.button("Cancel", key="cancel_calib", on_click=state.put, args=("calib_cancelled", True))
    live = st.empty()

    def on_batch(partial) -> None:
        # Live curves: the per-block means of the windows scored so far, after every batch. Kept in the
        # session so that Cancel (which interrupts this run) can keep them as usable partial scores.
        done, total = partial.meta["partial"]["windows"], partial.meta["partial"]["of"]
        state.put("_partial_calib", {"scores": partial, "ids": ids[:done], "source": src.description, "t0": t0,
                                     "model_spec": new_spec, "settings": settings, "text_spec": req.text_spec()})
        spec = figures.curves_spec(figures.curves_base(partial.layers, scale_free=bool(state.get("scale_free", True))))
        spec["layout"] = dict(spec["layout"], title={"text": f"Partial: {done} of {total} windows", "x": 0})
        with live.container():
            st.caption(f"**Partial** curves after {done} of {total} calibration windows (they settle as the pass "
                       "goes on; **Cancel** keeps them as partial scores).")
            st.plotly_chart(figures.Spec(spec), key=f"live_curves_{done}", config=figures.plot_config("partial_curves"))

    state.put("_partial_calib", None)
    try:
        scores, ids, info = calibrate(lm, src, int(req.samples), int(req.seq_len), windows=ids,
                                      first_token=bool(req.first_token), on_batch=on_batch,
                                      progress=lambda f, msg: bar.progress(min(f, 1.0), text=f"Calibrating: {msg}"))
    except Exception:
        # a failed pass keeps nothing half-computed; Cancel's rerun is no Exception (Streamlit's
        # ScriptControlException is a BaseException), so the partial scores survive it for recover_cancelled
        state.put("_partial_calib", None)
        raise
    state.put("_partial_calib", None)
    bar.empty()
    stop.empty()
    live.empty()
    info["seconds"] = round(time.perf_counter() - t0, 1)  # model load included
    install(new_spec, scores, ids, info)
    state.put("run_id", runs.save_calibration(scores, new_spec, info, key=key, settings=settings,
                                              text_spec=req.text_spec(), replace=req.recompute))


def _run_streamed(req: Request, t0: float) -> None:
    """Score without loading the model: one block at a time from disk (simdiff_core.analysis.streaming)."""
    from simdiff_core.analysis.streaming import stream_score
    from simdiff_core.common.progress import with_eta
    from simdiff_core.models.streaming import resolve_stream_dir

    model_dir = resolve_stream_dir(req.spec)
    tok = models.cached_tokenizer(str(model_dir))
    src = req.text()
    ids = make_windows(tok, src, int(req.samples), int(req.seq_len))
    bar = st.progress(0.0, text="Calibrating (streaming blocks from disk)…")
    # per block and batch, with the time left from the measured time per block so far
    scores = stream_score(model_dir, ids, memory_budget_mb=float(req.budget_mb) or None, device=req.device,
                          dtype=req.dtype, calibration={"source": src.description}, source=req.spec,
                          progress=with_eta(lambda f, msg: bar.progress(f, text=f"Streaming: {msg}")))
    bar.empty()
    info = calibration_info(src.description, ids, time.perf_counter() - t0, scores.meta["seconds"],
                            streamed=scores.meta.get("stream", True))
    install(None, scores, ids, info)
    # saved for the library and links; an opened streamed run never loads its (too big) model on demand
    state.put("run_id", runs.save_calibration(scores, dict(req.model_spec(), streamed=True), info,
                                              text_spec=req.text_spec()))


def recover_cancelled() -> None:
    """After a Cancel click: keep the interrupted pass's partial scores (if a batch finished) and say so."""
    state.put("calib_cancelled", False)
    part = state.get("_partial_calib")
    state.put("_partial_calib", None)
    if part is None:
        st.warning("Calibration cancelled; the previous results (if any) are kept.", icon=":material/stop_circle:")
        return
    # keep what the interrupted pass measured: usable scores over the windows scored so far
    ps = part["scores"]
    done, total = ps.meta["partial"]["windows"], ps.meta["partial"]["of"]
    info = calibration_info(part["source"], part["ids"], time.perf_counter() - part["t0"], 0.0,
                            partial=f"{done} of {total} windows")
    install(part["model_spec"], ps, part["ids"], info)
    # kept in the library too, marked partial (never reopened in place of a full calibration)
    state.put("run_id", runs.save_calibration(ps, part["model_spec"], info, settings=part.get("settings"),
                                              text_spec=part.get("text_spec"), partial=True))
    shell.show_status()
    st.warning(f"Calibration cancelled after {done} of {total} windows: the curves and the preview use those "
               f"{done} windows (partial scores, no heatmaps). Calibrate again for the full set.",
               icon=":material/stop_circle:")
