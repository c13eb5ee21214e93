"""SimDiff Explorer's server: the Streamlit app (``app.py``) plus the quick view of stored runs
(``/view/<run>``, ui/run_view.py) on the same port.

    streamlit run serve.py      # or: bash scripts/setup.sh app

``streamlit run`` finds ``app`` below (an ``st.App``) and serves it: every explorer page as
``streamlit run app.py`` would, and the extra route, which answers outside any Streamlit session (no
websocket, no script run), so a run's link draws its curves in well under the time a Streamlit page
needs to show its title (bench/suite/reopen.py). ``streamlit run app.py`` still works, without the route
(the pages then offer only the explorer's deep links).
"""

from __future__ import annotations

import threading
from contextlib import asynccontextmanager

import streamlit as st

from ui import run_view


@asynccontextmanager
async def lifespan(_app):
    run_view.mark_served()
    # build the default view of the most recently used runs in the background: a demo's links open at once
    threading.Thread(target=_warm, name="simdiff-view-warm", daemon=True).start()
    yield


def _warm() -> None:
    try:
        run_view.warm()
    except Exception:  # noqa: BLE001 - warming is an optimisation: a run that cannot be built shows its error when opened
        pass


app = st.App("app.py", routes=run_view.routes(), lifespan=lifespan)
