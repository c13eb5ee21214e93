"""The only module that touches ``st.session_state``: the session's typed shape and its accessors.

    from ui import state
    v = st.slider("α", 0.0, 1.0, **state.bound("alpha"))   # survives page switches
    state.put_result("shootout", res)  # a result, tagged with the calibration it was computed from
    res = state.result("shootout")     # None unless it belongs to the current calibration

Session keys are the fields of ``Session`` (one default each), in three groups:

* settings the user chose (``alpha``, ``criterion``, ``ratio``, locks, ...): kept across calibrations;
* the model and its calibration (``model_spec``, ``scores``, ``calib_ids``, ``calib_info``) with
  ``calib_tag``, a fresh token per calibration: replaced together by ``new_calibration``;
* results computed from a calibration (``RESULT_KEYS``: plan, evaluations, damage, auto α, shoot-out,
  recovery, accuracy, ...): reset to their defaults by every calibration or model change, and each
  stored with the ``calib_tag`` it was computed under (``_tags``). ``result(name)`` returns a value
  only when its tag is the current one, so a page never shows a result of another model or
  calibration: not a stale key, and not one written late by a long run that began before the
  recalibration (it passes the tag it started under: ``put_result(name, value, made_under=tag)``).

Widgets get their own ``_w_<name>`` keys seeded from the persistent value: Streamlit deletes a
widget's state when the user navigates to a page that does not render it, and the persistent copy
is what survives page switches. The other ui modules keep their session values here through
``get``/``put``/``pop`` (private ``_``-prefixed keys): the model pin (``ui.models``), the memo below,
the status slot (``ui.shell``), the partial calibration (``ui.calibration``), what the live component
already sent (``ui.live_chart``).

The rest of ``ui/``: ``shell`` (navigation, page setup), ``models`` (model cache and the page guards),
``settings`` (the plan the session's settings give), ``calibration`` (sources and the calibration
procedures of Load & calibrate), ``exports`` (export folder and table rows), ``views`` (small shared
widgets), ``live_slider``/``live_chart`` (the live preview).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, fields

import streamlit as st


@dataclass
class Session:
    """Every session key with its default: the typed shape of ``st.session_state``."""

    # settings: survive recalibration
    alpha: float = 0.5
    beta: float = 0.5                # SimDiff MSSD share; auto α may set it, so a calibration resets it
    criterion: str = "simdiff"
    ratio: float = 0.25
    keep_first: bool = True
    keep_last: bool = True
    scale_free: bool = True
    exports: list = field(default_factory=list)    # files on disk: still there after a recalibration
    pinned_runs: dict = field(default_factory=dict)  # Compare runs: runs the user pinned, kept on purpose
    calib_cancelled: bool = False
    # the run library (ui/runs.py): the run shown (the URL's ``run``), how to load an opened run's model
    run_id: str | None = None
    run_model: dict | None = None
    run_from_library: dict | None = None   # the stored run a calibration reopened instead of recomputing
    compare_library: list = field(default_factory=list)  # Runs page -> Compare runs: two run ids
    # the model and its calibration: replaced together by new_calibration()
    model_spec: dict | None = None   # spec, device, dtype, trust_remote_code (None: streamed, nothing held)
    scores: object = None            # simdiff_core.Scores
    calib_ids: object = None         # LongTensor (samples, seq_len)
    calib_info: dict | None = None   # workflows.calibration_info: source, samples, seq_len, seconds, ...
    calib_tag: str | None = None     # fresh per calibration; results carry the tag they were made under
    # results of the current calibration (RESULT_KEYS): reset by every calibration, read via result()
    plan: object = None              # the preview Plan (re-derived on every page run)
    evals: dict = field(default_factory=dict)      # Export page: (removed, windows, seq_len) -> Evaluation
    damage: list | None = None       # per-block measured loss increase (Layer curves draws it)
    damage_result: object = None     # the Damage object behind ``damage``
    set_damage: list | None = None   # Ground truth page: multi-block set damage rows
    auto_alpha: dict | None = None   # Prune preview: what auto α chose
    shootout: dict | None = None     # Shootout page: compare.run_compare result
    recovery: dict | None = None     # Recovery page: recovered model and report
    repair_preview: dict | None = None  # Prune preview: the last repaired-perplexity estimate (plan, method)
    accuracy: dict = field(default_factory=dict)   # Recovery page: (model, plan, tasks) -> accuracy
    sens_runs: dict | None = None    # Calibration sensitivity page: scores per calibration source
    drill: dict | None = None        # Block drill-down page: the last drill-down
    linear_spans: dict | None = None  # Layer curves: n-block linear-replaceability heatmap (own pass)
    stream_export: dict | None = None  # Export page, streamed model: the last streamed prune's result


RESULT_KEYS = ("plan", "evals", "damage", "damage_result", "set_damage", "auto_alpha", "shootout", "recovery",
               "accuracy", "sens_runs", "drill", "linear_spans", "repair_preview",
               "stream_export")
DEFAULTS = {f.name: getattr(Session(), f.name) for f in fields(Session)}
_calibrations = itertools.count(1)


def _default(name: str):
    v = DEFAULTS[name]
    return v.copy() if isinstance(v, (list, dict)) else v


def init() -> None:
    """Every ``Session`` key at its default where the session has none yet (``shell.setup_page`` calls it)."""
    for k in DEFAULTS:
        if k not in st.session_state:
            st.session_state[k] = _default(k)
    if "_tags" not in st.session_state:
        st.session_state["_tags"] = {}


def get(name: str, default=None):
    return st.session_state.get(name, default)


def put(name: str, value) -> None:
    st.session_state[name] = value


def pop(name: str, default=None):
    return st.session_state.pop(name, default)


def has(name: str) -> bool:
    """Whether the session holds ``name`` (a plain widget key: set by a link, or by the widget itself)."""
    return name in st.session_state


# ---------------------------------------------------------------------------------------- results and tags
def tag() -> str | None:
    """The current calibration's tag (None before the first calibration)."""
    return st.session_state.get("calib_tag")


def put_result(name: str, value, made_under: str | None = None) -> None:
    """Store result ``name`` tagged with the calibration it was computed from: ``made_under`` (the
    ``tag()`` read before a long computation started), else the current one."""
    if name not in RESULT_KEYS:
        raise KeyError(f"{name!r} is not a result key: add it to Session and RESULT_KEYS")
    st.session_state[name] = value
    st.session_state.setdefault("_tags", {})[name] = tag() if made_under is None else made_under


def result(name: str):
    """Result ``name`` if it was computed from the current calibration, else its Session default."""
    if name not in RESULT_KEYS:
        raise KeyError(f"{name!r} is not a result key")
    tags = st.session_state.get("_tags") or {}
    if tag() is not None and name in st.session_state and tags.get(name) == tag():
        return st.session_state[name]
    return _default(name)


def new_calibration(model_spec: dict | None, scores, calib_ids, calib_info: dict) -> None:
    """Install a new model/calibration: every result is reset and a fresh tag marks what follows."""
    clear_results()
    for k in ("run_id", "run_model", "run_from_library"):  # the caller says which run this is (ui/runs.py)
        st.session_state[k] = None
    st.session_state["_run_content"] = None  # open_run marks a stored run's scores after this
    st.session_state["model_spec"] = model_spec
    st.session_state["scores"] = scores
    st.session_state["calib_ids"] = calib_ids
    st.session_state["calib_info"] = calib_info
    st.session_state["calib_tag"] = f"{scores.model}#{next(_calibrations)}"


def clear_results() -> None:
    """Forget every result computed from the previous model/calibration (and β, which auto α sets)."""
    for k in RESULT_KEYS:
        st.session_state[k] = _default(k)
    st.session_state["_tags"] = {}
    st.session_state["beta"] = DEFAULTS["beta"]


# ---------------------------------------------------------------------------------------- widget binding
def widget_key(name: str) -> str:
    """Key for the widget editing persistent value ``name``, reset from it on every run.

    Streamlit drops (or resets) a widget's state when the user switches pages, so the persistent
    copy is the truth: it is written back by ``keep`` (the widget's on_change) before each rerun.
    """
    wk = "_w_" + name
    if st.session_state.get(name) is not None:
        st.session_state[wk] = st.session_state[name]
    return wk


def widget_value(name: str):
    """The value the widget bound to ``name`` holds now (in its on_change, before ``keep`` copies it)."""
    return st.session_state["_w_" + name]


def keep(name: str) -> None:
    """on_change callback: copy the widget's new value into the persistent key."""
    st.session_state[name] = st.session_state["_w_" + name]


def bound(name: str) -> dict:
    """Widget kwargs binding it to persistent ``name``: ``st.slider(..., **state.bound("alpha"))``."""
    return {"key": widget_key(name), "on_change": keep, "args": (name,)}


def set_widget(name: str, value) -> None:
    """Set a persistent value and its widget (only from callbacks or before the widget renders)."""
    st.session_state[name] = value
    st.session_state["_w_" + name] = value


# ---------------------------------------------------------------------------------------- memo and counters
def per_scores(scores, key, build):
    """``build()`` memoised for this session's current ``scores`` object (figure bases, heatmap specs).

    Rebuilt only when the scores object changes (a new calibration), so a slider move never redoes
    work that depends on the scores alone. Where the scores are a stored run opened from the library
    (``set_run_content``), the value is also shared across sessions (``_shared``): a second visitor, a
    reload or a copied link of the same run gets the figures without rebuilding them.
    """
    memo = st.session_state.get("_per_scores")
    if memo is None or memo[0] is not scores:
        memo = (scores, {})
        st.session_state["_per_scores"] = memo
    if key not in memo[1]:
        sha = run_content(scores)
        memo[1][key] = build() if sha is None else _shared(sha, repr(key), build)
    return memo[1][key]


def set_run_content(scores, sha256: str | None) -> None:
    """Mark ``scores`` as decoded from the run file with this SHA-256 (``ui.runs.open_run``): what they
    derive is then a function of that hash and the memo key alone, so sessions may share it. Any other
    scores (a calibration in this session, a later run) are not marked: the mark holds the object itself."""
    st.session_state["_run_content"] = (scores, sha256) if sha256 else None


def run_content(scores) -> str | None:
    """The run-file hash ``scores`` were decoded from, or None (not a stored run, or not these scores)."""
    rc = st.session_state.get("_run_content")
    return rc[1] if rc is not None and rc[0] is scores else None


# Derived values of stored runs, across sessions. st.cache_data pickles what it stores and unpickles a
# fresh copy for every call, so sessions never share a mutable object (one session's edits cannot reach
# another's). The key is the run file's SHA-256 (verified when the run was opened: same hash, same
# scores) plus the memo key, which names every setting the value depends on (the per-session memo
# relies on the same keys). ~50 entries of at most ~1 MB each (the live payloads at 80 blocks).
@st.cache_data(max_entries=64, show_spinner=False)
def _shared(sha: str, key: str, _build):
    return _build()


def _session_memo(scores, key) -> dict:
    """A dict of this session's own for ``scores`` (never shared: the caller fills it)."""
    memo = st.session_state.get("_per_scores")
    if memo is None or memo[0] is not scores:
        memo = (scores, {})
        st.session_state["_per_scores"] = memo
    return memo[1].setdefault(key, {})


def per_scores_recent(scores, group: str, key, build, keep: int = 4):
    """``per_scores`` for values that are large and keyed by many settings (the live slider payloads):
    only the ``keep`` most recently used of ``group`` stay memoised, so moving α through its grid does
    not pile up one payload per value in the session."""
    memo = _session_memo(scores, ("_recent", group))
    if key in memo:
        memo[key] = memo.pop(key)  # most recent last
    else:
        sha = run_content(scores)
        memo[key] = build() if sha is None else _shared(sha, repr(("_recent", group, key)), build)
        while len(memo) > keep:
            memo.pop(next(iter(memo)))
    return memo[key]


def count_run(name: str) -> int:
    """Count script runs of ``name`` (a page, or a fragment) in this session: the browser test reads it
    to prove a slider move reran only the fragment, never the whole page."""
    runs = st.session_state.setdefault("_runs", {})
    runs[name] = runs.get(name, 0) + 1
    return runs[name]
