"""The app's side of the run library (``simdiff_core.runs``): every calibration is saved as a run, a
calibration with identical settings on identical weights reopens the stored run, and a run opens into
the session without its model (the pages that run the model load it on demand: ``ensure_model``).

    from ui import runs
    key, settings = runs.calibration_key(lm, ids, first_token)  # content-derived: weights + windows + options
    found = runs.lookup(key)                                     # RunInfo or None
    runs.save_calibration(scores, spec, info, key, settings, text_spec)  # after a calibration (partial=True if cancelled)
    runs.open_run(run_id)                                      # scores into the session, no model
    lm = runs.ensure_model()                                   # the open run's model, loaded now if needed

Session keys (besides ``ui.state``'s): ``run_id`` (the run the session shows, the ``run`` of the URL),
``run_model`` (how to load the model of an opened run: spec, device, dtype, the text to rebuild the
windows from) and ``run_from_library`` (the stored run a calibration reopened instead of recomputing).
What the app adds to a run's metadata (``meta["app"]``): the model spec as loaded (device, dtype), the
calibration line the pages show, and the text as a spec that reloads it; runs from the CLI have none and
fall back to ``scores.model`` (the spec the CLI was given) and ``scores.calibration["source"]``.
"""

from __future__ import annotations

import streamlit as st

from simdiff_core import SimDiffError
from ui import models, shell, state


def store():
    """The run store of ``$SIMDIFF_HOME`` (read-only where ``SIMDIFF_RUNS_READONLY=1``). A fresh handle per
    call: cheap, and no SQLite connection is shared between the server's threads."""
    from simdiff_core.runs import RunStore

    return RunStore()


def readonly() -> bool:
    return store().readonly


def calibration_key(lm, ids, first_token: bool) -> tuple[str, dict]:
    """(key, settings) of a calibration before it runs (``simdiff_core.runs.calibration_key``: the weights
    fingerprint, the exact token windows, every option that changes the numbers, the versions). Identical
    key: identical scores, so the stored run is shown instead of recomputing. Load & calibrate scores with the
    library's defaults (matrix tokens, automatic batch size), which the key assumes too."""
    from simdiff_core.runs import calibration_key as key_of

    return key_of(lm, ids, first_token=bool(first_token))


def lookup(key: str):
    """The stored, complete run with this key, or None (and None when the library cannot be read)."""
    try:
        return store().lookup(key)
    except SimDiffError:
        return None


def save_calibration(scores, model_spec: dict | None, info: dict, key: str | None = None, settings: dict | None = None,
                     text_spec: str | None = None, partial: bool = False, replace: bool = False) -> str | None:
    """Save a finished (or, ``partial``, a cancelled) calibration as a run (``replace``: a recomputation
    replaces the stored run of its key); its id, or None where the library is read-only or the save
    failed (one caption says so: the calibration itself stands)."""
    from simdiff_core.runs import run_meta as meta_of

    s = store()
    if s.readonly:
        st.caption("Not saved: the run library is read-only on this server.")
        return None
    app = {"model_spec": model_spec, "calib_info": {k: v for k, v in info.items() if k != "from_store"},
           "text_spec": text_spec}
    try:
        return s.save(scores, meta=meta_of(scores, settings, {"app": app}), key=key, partial=partial,
                      replace=replace)
    except (SimDiffError, OSError) as e:
        st.caption(f"Not saved to the run library: {e}")
        return None


def app_meta(info) -> dict:
    """What the app saved with the run (``meta["app"]``); {} for runs from the CLI or an import."""
    app = (getattr(info, "meta", None) or {}).get("app")
    return dict(app) if isinstance(app, dict) else {}


def run_date(info) -> str:
    """The run's creation time as the pages show it: ``2026-12-06 11:40 UTC``."""
    c = str(getattr(info, "created", "") or "")
    return f"{c[:16].replace('T', ' ')} UTC" if c.endswith("Z") else c[:16].replace("T", " ")


def open_run(run_id: str) -> None:
    """Install a stored run as the session's calibration, without loading any model. Raises SimDiffError
    (one line) where the run is missing or unreadable."""
    run = store().open(run_id)
    scores, info = run.scores, run.info
    app = app_meta(info)
    cal = dict(app.get("calib_info") or {})
    c = scores.calibration or {}
    cal.setdefault("source", info.text or c.get("description") or c.get("source", "?"))
    cal.setdefault("samples", info.samples or c.get("samples") or "?")
    cal.setdefault("seq_len", info.seq_len or c.get("seq_len") or "?")
    cal["run"] = info.id
    cal["computed"] = run_date(info)
    if info.partial:
        cal.setdefault("partial", "cancelled calibration")
    state.new_calibration(None, scores, None, cal)
    state.set_run_content(scores, run.sha256)  # its figures and payloads are shared across sessions (ui/state.py)
    state.put("run_id", info.id)
    imported = bool((info.meta or {}).get("imported"))
    spec = app.get("model_spec")
    if not (isinstance(spec, dict) and spec.get("spec")):
        # a CLI run: scores.model is the --model spec it was given
        spec = {"spec": scores.model, "device": "auto", "dtype": "auto"} if scores.model else None
    text_spec = app.get("text_spec") if app else c.get("source") if c.get("description") else None
    meta = info.meta or {}
    state.put("run_model", None if spec is None or spec.get("streamed") else {
        "spec": dict(spec), "text_spec": text_spec, "samples": cal.get("samples"), "seq_len": cal.get("seq_len"),
        "imported": imported,
        # what a model loaded on demand and its rebuilt windows must match (ensure_model checks both)
        "weights": meta.get("weights_fingerprint"), "tokens_hash": meta.get("tokens_hash"),
        "stream": bool((meta.get("options") or {}).get("stream")), "dtype": (meta.get("options") or {}).get("dtype")})


def ensure_model():
    """The session's model; for an opened run, its model loaded now (said first, with the usual
    spinner). None where there is neither. The calibration windows are rebuilt from the run's text where
    it is a shipped or named source (pages such as Shootout and Drill-down run on them)."""
    lm = models.current_lm()
    if lm is not None:
        return lm
    rm = state.get("run_model")
    if not rm:
        return None
    from simdiff_core.models.load import display_name

    spec = rm["spec"]
    name = display_name(spec["spec"])
    note = st.empty()
    note.info(f"This page runs the model: loading **{name}** for the open run (the curves and the preview "
              "did not need it; cached after the first load)…", icon=":material/downloading:")
    # a run imported from elsewhere never runs remote code on this server
    trust = bool(spec.get("trust_remote_code")) and not rm.get("imported")
    try:
        with st.spinner(f"Loading {name} (cached after the first load)…"):
            shell.prewarm_once().join()
            lm = models.cached_model(spec["spec"], spec.get("device", "auto"), spec.get("dtype", "auto"), trust)
    except Exception as e:  # noqa: BLE001 - one st.error line, the page stops
        note.empty()
        from ui import views

        views.show_error(e)
        st.stop()
    scores = state.get("scores")
    if scores is not None and lm.num_layers != scores.num_layers:
        note.empty()
        st.error(f"The open run has {scores.num_layers} blocks but {name} has {lm.num_layers}: load the model it "
                 "was scored on from Load & calibrate.", icon=":material/error:")
        st.stop()
    problem, unchecked = weights_problem(lm, rm, name)
    if problem:  # same block count is not the same model: never run other weights against this run's scores
        note.empty()
        st.error(problem, icon=":material/error:")
        st.stop()
    state.put("model_spec", dict(spec, trust_remote_code=trust))
    lm = models.current_lm()  # pins this session's reference (ui/models.py), from the cache just filled
    if state.get("calib_ids") is None:
        ids, why = rebuild_windows(lm, rm)
        state.put("calib_ids", ids)
        state.put("_windows_problem", why)
    note.caption(f"Loaded {name} for the open run." + (f" {unchecked}" if unchecked else ""))
    shell.show_status()
    return lm


def weights_problem(lm, rm: dict, name: str) -> tuple[str | None, str | None]:
    """(refusal, note) for running ``lm`` against the open run ``rm``: a refusal (one line) where the loaded
    weights' fingerprint (``simdiff_core.runs.weights_fingerprint``) differs from the one the run was scored
    with; a note where the run gives nothing to compare with (imported scores, a streamed run keyed on its
    files, which are compared where the spec names them here)."""
    from simdiff_core.runs import files_fingerprint, weights_fingerprint

    want = rm.get("weights")
    if not want:
        return None, "(The run records no weights fingerprint: not checked that these are its weights.)"
    if rm.get("stream"):
        from pathlib import Path

        where = Path(str(rm["spec"]["spec"])).expanduser()
        if not where.exists():
            return None, "(The run was keyed on its weight files, which this spec does not name: not checked.)"
        got = files_fingerprint(where)
    else:
        got = weights_fingerprint(lm.model)
    if got == want:
        return None, None
    dt, run_dt = str(lm.dtype).replace("torch.", ""), rm.get("dtype")
    why = f"; the run was scored in {run_dt}, this load is {dt}" if run_dt and run_dt != dt and not rm.get("stream") else ""
    return (f"{name} as loaded here is not the model this run was scored on: its weights fingerprint "
            f"{got[:12]} differs from the run's {want[:12]}{why}. Load the run's model on Load & calibrate."), None


def rebuild_windows(lm, rm: dict):
    """(ids, None) or (None, why): the open run's calibration windows, cut again from its text with its
    samples x seq. length, and accepted only where their hash equals the run's ``tokens_hash``."""
    from simdiff_core import make_windows
    from simdiff_core.runs import tokens_hash

    if not rm.get("text_spec"):
        return None, "the run's text was uploaded or pasted, so its windows cannot be cut again here"
    if not (isinstance(rm.get("samples"), int) and isinstance(rm.get("seq_len"), int)):
        return None, "the run does not record its samples x seq. length"
    if not rm.get("tokens_hash"):
        return None, "the run records no token hash to check rebuilt windows against"
    try:
        ids = make_windows(lm.tokenizer, rm["text_spec"], rm["samples"], rm["seq_len"])
    except SimDiffError as e:
        return None, f"its text {rm['text_spec']} cannot be read here: {e}"
    if tokens_hash(ids) != rm["tokens_hash"]:
        return None, (f"the windows cut again from {rm['text_spec']} differ from the run's (token hash mismatch: "
                      "another text release or tokenizer)")
    return ids, None


def rows(infos) -> list[dict]:
    """The Runs page's table: one row per run (an unreadable one says why in ``problem``)."""
    return [{"name": i.name or "", "model": i.model or "", "text": i.text or "",
             "tokens": f"{i.samples} × {i.seq_len}" if i.samples and i.seq_len else "",
             "blocks": i.blocks, "date": run_date(i), "size_kB": round((i.size or 0) / 1024, 1),
             "partial": bool(i.partial), "pinned": bool(i.pinned), "problem": i.error or "", "id": i.id}
            for i in infos]


def run_bytes(run_id: str) -> bytes:
    """The run as one file (the run file ``RunStore.export`` writes: .npz), for the download button."""
    return store().export_bytes(run_id)


def reopen(key: str, model_spec: dict, ids) -> bool:
    """Load & calibrate with a key the library holds: show the stored run instead of recomputing (the
    model is loaded and the windows are cut already, so both stay). False where there is none, or it
    cannot be read (then the calibration runs and its save replaces the broken copy)."""
    found = lookup(key)
    if found is None:
        return False
    try:
        open_run(found.id)
    except SimDiffError:
        return False
    state.put("model_spec", model_spec)
    state.put("calib_ids", ids)
    state.put("run_model", None)
    state.put("run_from_library", {"run": found.id, "computed": run_date(found)})
    return True
