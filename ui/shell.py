"""What every page shares around its content: the navigation, the page setup and the sidebar status line.

    from ui import shell
    shell.setup_page("Prune preview")     # first on every page: config, logo, session defaults, prewarm
    st.page_link(shell.PAGES["export"], label=...)
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

from ui import state

ROOT = Path(__file__).resolve().parents[1]
# The navigation of app.py: section -> (key, page file, title, icon). PAGES maps a key to its file.
# This order is the order users see; the files carry no number prefix (st.navigation needs none, and a
# prefix would be a second, disagreeing order).
NAV = {
    "Explore": [
        ("runs", "pages/Runs.py", "Runs", ":material/inventory:"),
        ("load", "pages/Load_and_calibrate.py", "Load & calibrate", ":material/science:"),
        ("curves", "pages/Layer_curves.py", "Layer curves", ":material/show_chart:"),
        ("preview", "pages/Prune_preview.py", "Prune preview", ":material/content_cut:"),
    ],
    "Insight": [
        ("sensitivity", "pages/Calibration_sensitivity.py", "Calibration sensitivity", ":material/tune:"),
        ("compare_runs", "pages/Compare_runs.py", "Compare runs", ":material/compare:"),
        ("drilldown", "pages/Block_drill_down.py", "Block drill-down", ":material/zoom_in:"),
    ],
    "Evaluate": [
        ("export", "pages/Export_and_evaluate.py", "Export & evaluate", ":material/inventory_2:"),
        ("shootout", "pages/Shootout.py", "Shootout", ":material/leaderboard:"),
        ("recovery", "pages/Recovery_and_accuracy.py", "Recovery & accuracy", ":material/healing:"),
        ("ground_truth", "pages/Ground_truth_and_report.py", "Ground truth & report", ":material/fact_check:"),
    ],
}
PAGES = {key: path for entries in NAV.values() for key, path, _, _ in entries}


def setup_page(title: str, icon: str = "assets/favicon.png", entry: bool = False) -> None:
    """Page config, logo and session defaults: call first on every page (``entry=True`` in app.py only)."""
    leave_pages_folder_mode(rerun=not entry)
    icon_path = ROOT / icon
    st.set_page_config(page_title=f"{title} · SimDiff Explorer", page_icon=str(icon_path) if icon_path.is_file() else "🧬",
                       layout="wide")
    logo = ROOT / "assets" / "logo.svg"
    if logo.is_file():
        st.logo(str(logo), size="large")
    state.init()
    prewarm_once()
    # A refresh or a shared link: reopen its run and view, once per session (ui/links.py). Here rather
    # than in app.py alone: on a freshly started server Streamlit runs a deep-linked page's script
    # directly (its pages/-folder mode, until some session has called st.navigation).
    from ui import links

    links.restore()


def leave_pages_folder_mode(rerun: bool = True) -> None:
    """Run app.py's navigation, also for the first visitor of a freshly started server.

    Streamlit starts in its old ``pages/``-folder mode (the folder exists) until some script run calls
    ``st.navigation``. In that mode it runs a deep-linked page's file directly under an automatic page list
    (file names, an "app" entry) and app.py, ours, never runs: the first visitor by a link, or every visitor
    while only links are opened, saw that list and no status line. So the first page run that finds the
    mode still on switches it off (what ``st.navigation`` itself does) and reruns at once, before anything
    is drawn: the rerun runs app.py, whose navigation resolves the same URL path to the same page. In app.py
    itself (``rerun=False``) no rerun is needed: its ``st.navigation`` follows in this very run (a rerun
    there, on a fresh server's first visit to "/", could leave the automatic list and an empty page)."""
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # pragma: no cover - a Streamlit without the old mode
        return
    # AppTest resets the mode before every run (and a rerun there would drop the run's widget triggers);
    # its runs reach app.py's navigation anyway, since they start at app.py.
    if PagesManager.uses_pages_directory and "streamlit.testing.v1.app_test" not in sys.modules:
        PagesManager.uses_pages_directory = False
        if rerun:
            st.rerun()


@st.cache_resource(show_spinner=False)
def prewarm_once():
    """Once per server process, in a background thread: the imports and page-cache reads that would
    otherwise sit between the first Load click and the first forward (``simdiff_core.models.load.prewarm``)."""
    import threading

    from simdiff_core.models.load import prewarm

    def run():
        try:
            prewarm("default")
        except Exception:  # noqa: BLE001 - best effort: the real load reports any problem
            pass

    # Under AppTest (the test suite) there is no server start to hide the imports behind, and a
    # background importer would race the tests' own transformers imports in the same process: a
    # finished no-op thread keeps every ``.join()`` below valid.
    testing = "streamlit.testing.v1.app_test" in sys.modules
    t = threading.Thread(target=(lambda: None) if testing else run, name="simdiff-prewarm", daemon=True)
    t.start()
    return t


def session_summary() -> str:
    """One line for the shared sidebar: what this session has loaded and calibrated."""
    scores = state.get("scores")
    if scores is None:
        spec = state.get("model_spec")
        return f"Loaded: {spec['spec']} · not calibrated" if spec else "Session: no model loaded."
    info = state.get("calib_info") or {}
    src = str(info.get("source", "?"))
    src = src if len(src) <= 40 else src[:39] + "…"
    line = (f"Scored: {scores.model} · {scores.num_layers} blocks · {info.get('samples', '?')} × "
            f"{info.get('seq_len', '?')} tokens of {src}")
    if state.get("run_id"):  # a run of the library (ui/runs.py): opened ones have no model until a page needs it
        line += f" · run {state.get('run_id')}" + ("" if state.get("model_spec") else " · model not loaded")
    return line


def show_status(slot=None) -> None:
    """Write ``session_summary`` into the shared sidebar slot (app.py makes it; a page that changes
    the session, e.g. a calibration, calls this again without ``slot`` to refresh it in the same run)."""
    if slot is not None:
        state.put("_status_slot", slot)
    slot = state.get("_status_slot")
    if slot is not None:
        slot.caption(session_summary())
