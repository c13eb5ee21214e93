"""Deep links: the URL carries the open run and the view, so a refresh, a bookmark or a link sent to a
colleague (another browser, same server) brings back the same run and view.

    http://host:8501/Prune_preview?run=3f2a…&ratio=0.25&criterion=simdiff&alpha=0.5&keep_first=1

The page is the URL's path (``st.navigation``); the query carries ``PARAMS``: the run id, the plan
(ratio, criterion, α, β, locks), and the Layer-curves toggles. ``restore()`` reads them once per session
(a refresh or a new browser is a new session) and opens the run from the library without loading any
model (``ui.runs.open_run``); ``publish()`` writes the session's current values back into the URL after
every run (and the slider fragments call it after a move), so the address bar is always a link to what
is on screen. A bad parameter is one ``st.error`` line and is ignored; the page still renders.
"""

from __future__ import annotations

import re

import streamlit as st

from ui import state


def _float(lo: float, hi: float):
    def parse(s: str) -> float:
        v = float(s)
        if not lo <= v <= hi:
            raise ValueError
        return v
    parse.expect = f"a number in [{lo:g}, {hi:g}]"
    return parse


def _alpha(s: str) -> float:
    """α on the sliders' 0.05 grid: the pages' precomputed slider payloads (ui/live_slider.py) hold exactly
    those values, and no widget of the app sets any other (Auto α's grid is 0.1)."""
    v = float(s)
    if not 0.0 <= v <= 1.0 or abs(v * 20 - round(v * 20)) > 1e-9:
        raise ValueError
    return round(v, 2)


_alpha.expect = "a multiple of 0.05 in [0, 1]"


def _bool(s: str) -> bool:
    if s not in ("0", "1", "true", "false"):
        raise ValueError
    return s in ("1", "true")


_bool.expect = "0 or 1"


def _criterion(s: str) -> str:
    from simdiff_core import CRITERIA

    if s not in CRITERIA:
        raise ValueError
    return s


_criterion.expect = "a criterion name"


def _level(s: str) -> float:
    v = float(s)
    if v not in (0.8, 0.9, 0.95):
        raise ValueError
    return v


_level.expect = "0.8, 0.9 or 0.95"

# URL name -> (session key, parser, is a plain widget key of a page rather than a ui.state setting)
PARAMS = {
    "ratio": ("ratio", _float(0.01, 1.0), False),
    "criterion": ("criterion", _criterion, False),
    "alpha": ("alpha", _alpha, False),
    "beta": ("beta", _float(0.0, 1.0), False),
    "keep_first": ("keep_first", _bool, False),
    "keep_last": ("keep_last", _bool, False),
    "scale_free": ("scale_free", _bool, False),
    "log": ("log_mssd", _bool, True),
    "clip": ("clip_outliers", _bool, True),
    "bands": ("show_bands", _bool, True),
    "level": ("band_level", _level, True),
}
# The Layer curves toggles' defaults (the page's widgets and the quick view, ui/run_view.py, both use them)
CURVES_DEFAULTS = {"log_mssd": False, "clip_outliers": True, "show_bands": True, "band_level": 0.9}
RUN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def parse(query) -> tuple[dict, list[str]]:
    """The settings a link's ``query`` sets (``{session key: value}``) and one line per value it ignored. Shared
    by ``restore`` and the quick view of a run (ui/run_view.py)."""
    values, ignored = {}, []
    for name, (key, parser, _) in PARAMS.items():
        if name not in query:
            continue
        try:
            values[key] = parser(query[name])
        except ValueError:
            ignored.append(f"link parameter {name}={query[name][:40]!r} ignored: expected {parser.expect}")
    return values, ignored


def text(value) -> str:
    """A setting as the URL spells it: booleans 1/0, floats to 6 decimals without trailing zeros."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return f"{round(value, 6):g}" if isinstance(value, float) else str(value)


def restore() -> None:
    """Once per session: open the URL's run and apply its view settings (before any widget renders)."""
    if state.get("_links_restored"):
        return
    state.put("_links_restored", True)
    q = st.query_params
    values, ignored = parse(q)
    for line in ignored:
        st.error(line, icon=":material/link_off:")
    for key, value in values.items():
        state.put(key, value)
    run_id = q.get("run")
    if run_id and run_id != state.get("run_id"):
        if not RUN_ID.match(run_id):
            st.error(f"link parameter run={run_id[:40]!r} ignored: not a run id", icon=":material/link_off:")
            return
        from ui import runs

        try:
            runs.open_run(run_id)
        except Exception as e:  # noqa: BLE001 - a missing or unreadable run: one line, the page still renders
            from ui import views

            st.error(f"cannot open the linked run: {views.one_line(e)}", icon=":material/link_off:")


def current() -> dict:
    """The query parameters that describe this session's run and view."""
    out = {}
    if state.get("run_id"):
        out["run"] = str(state.get("run_id"))
    for name, (key, _, widget) in PARAMS.items():
        if widget and not state.has(key):
            continue
        v = state.get(key)
        if v is None:
            continue
        out[name] = text(v)
    return out


def publish() -> None:
    """Write ``current()`` into the URL (only what changed; parameters of other features are left alone)."""
    want = current()
    q = st.query_params
    for name in ["run", *PARAMS]:
        if name in want:
            if q.get(name) != want[name]:
                q[name] = want[name]
        elif name in q:
            del q[name]


def seeded(key: str, default) -> dict:
    """Widget kwargs for a plain-keyed widget whose value a link may have set: the ``value`` default only
    where the session has none (passing both makes Streamlit warn)."""
    return {"key": key} if state.has(key) else {"key": key, "value": default}
