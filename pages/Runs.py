"""Runs: the run library of this server (``simdiff_core.runs``, under ``$SIMDIFF_HOME``).

Every calibration in the app is saved as a run (a cancelled one as partial); the CLI's ``score`` saves
into the same library. Here: the table of runs, open one (its curves and preview need no model), compare
two (Compare runs), rename, pin (never evicted), delete, download a run as one file, and import a
``scores.json`` or run file produced elsewhere (e.g. scored by the CLI on a GPU machine), so it opens
here with every curve and the preview without the model. With ``SIMDIFF_RUNS_READONLY=1`` (a public
demo) the write actions are hidden and refused.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from simdiff_core import SimDiffError
from ui import links, run_view, runs, shell, state, views

shell.setup_page("Runs")
st.title("Runs")
ro = runs.readonly()
st.markdown("Every calibration is kept here as a **run**: open one to see its curves and preview without "
            "loading the model, or send its link (the address bar) to a colleague on this server.")
if ro:
    st.caption("Read-only library (SIMDIFF_RUNS_READONLY=1): runs can be opened, compared and downloaded.")


def _act(fn, *args, done: str | None = None) -> None:
    try:
        fn(*args)
    except (SimDiffError, OSError) as e:
        views.show_error(e)
        return
    if done:
        st.toast(done)
    st.rerun()


with st.sidebar:
    st.subheader("Import")
    if ro:
        st.caption("Imports are off on this read-only server.")
    else:
        up = st.file_uploader("A scores.json or run file", type=["json", "npz"], key="runs_import",
                              help="What `python -m simdiff_core score --out scores.json` writes, or a run "
                                   "downloaded from this page on another server. Validated before it is stored.")
        if up is not None and st.button("Import", key="runs_import_btn", type="primary", width="stretch"):
            try:  # validated (schema, sizes, finite numbers) and size-limited by the library; never unpickled
                new_id = runs.store().import_bytes(up.getvalue(), Path(up.name).name)
            except Exception as e:  # noqa: BLE001 - a bad file is one st.error line, never a traceback
                views.show_error(e)
            else:
                state.put("runs_pick", new_id)  # the Run picker below shows the import
                st.rerun()

try:
    infos = runs.store().list()
except (SimDiffError, OSError) as e:
    views.show_error(e)
    st.stop()

if not infos:
    st.info("No runs yet: calibrate on **Load & calibrate** (every calibration is saved here), or import a "
            "`scores.json` in the sidebar.", icon=":material/inventory:")
    st.page_link(shell.PAGES["load"], label="Go to Load & calibrate", icon=":material/science:")
    st.stop()

table = pd.DataFrame(runs.rows(infos))
st.dataframe(table.set_index("id"), width="stretch", key="runs_table")

by_id = {i.id: i for i in infos}
ids = list(by_id)


def label(run_id: str) -> str:
    i = by_id[run_id]
    mark = " (partial)" if i.partial else (" (unreadable)" if i.error else "")
    return f"{i.label} · {runs.run_date(i)} · {run_id}{mark}"


st.subheader("Run")
if state.get("runs_pick") not in ids:  # deleted, or a new session
    state.pop("runs_pick", None)
run_id = st.selectbox("Run", ids, format_func=label, key="runs_pick")
info = by_id[run_id]
if info.error:
    st.error(f"run {run_id} is unreadable: {info.error}", icon=":material/error:")

c = st.columns(4)
if c[0].button("Open", key="runs_open", type="primary", width="stretch",
               help="Make it the session's run: Layer curves and Prune preview show it at once, no model needed."):
    try:
        runs.open_run(run_id)
    except (SimDiffError, OSError) as e:
        views.show_error(e)
    else:
        links.publish()
        st.switch_page(shell.PAGES["curves"])
try:
    data = runs.run_bytes(run_id)
except (SimDiffError, OSError) as e:
    data = None
    c[1].caption(views.one_line(e))
quick = None if info.error else run_view.link_markdown(run_id, {**links.current(), "run": run_id})
if quick:
    st.markdown(quick)
if data is not None:
    c[1].download_button("Download", data, file_name=f"simdiff-run-{run_id}.npz", mime="application/zip",
                         key="runs_download", width="stretch", help="The run as one file (scores + metadata).")
if not ro:
    pinned = bool(info.pinned)
    if c[2].button("Unpin" if pinned else "Pin", key="runs_pin", width="stretch",
                   help="A pinned run is never evicted when the library reaches its size cap."):
        _act(runs.store().pin, run_id, not pinned)
    if c[3].button("Delete", key="runs_delete", width="stretch"):
        if state.get("run_id") == run_id:
            state.put("run_id", None)
        _act(runs.store().delete, run_id, done=f"Deleted run {run_id}")
    r1, r2 = st.columns([3, 1])
    new_name = r1.text_input("New name", key="runs_name", placeholder=info.label,
                             label_visibility="collapsed")
    if r2.button("Rename", key="runs_rename", width="stretch"):
        if not new_name.strip():
            st.error("enter a name first", icon=":material/error:")
        else:
            _act(runs.store().rename, run_id, new_name.strip())

st.subheader("Compare two runs")
if len(ids) < 2:
    st.caption("Two runs are needed.")
else:
    k = st.columns([2, 2, 1])
    a = k[0].selectbox("Run A", ids, index=0, format_func=label, key="runs_cmp_a")
    b = k[1].selectbox("Run B", ids, index=1, format_func=label, key="runs_cmp_b")
    if k[2].button("Compare", key="runs_compare", width="stretch"):
        if a == b:
            st.error("choose two different runs", icon=":material/error:")
        else:
            state.put("compare_library", [a, b])
            st.switch_page(shell.PAGES["compare_runs"])
