"""The only module that touches ``st.cache_resource`` and ``st.session_state``.

    from ui import state
    state.init()                       # once at the top of every page
    lm = state.require_model()         # LoadedModel, or an info box with a link and st.stop()
    scores = state.require_scores()    # Scores from the last calibration
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
is what survives page switches.
"""

from __future__ import annotations

import itertools
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import streamlit as st

from simdiff_core import SimDiffError, load_model
from simdiff_core.pruning.plan import make_plan

ROOT = Path(__file__).resolve().parents[1]
# The navigation of app.py: section -> (key, page file, title, icon). PAGES maps a key to its file.
NAV = {
    "Explore": [
        ("load", "pages/0_Load_and_calibrate.py", "Load & calibrate", ":material/science:"),
        ("curves", "pages/1_Layer_curves.py", "Layer curves", ":material/show_chart:"),
        ("preview", "pages/2_Prune_preview.py", "Prune preview", ":material/content_cut:"),
    ],
    "Insight": [
        ("sensitivity", "pages/7_Calibration_sensitivity.py", "Calibration sensitivity", ":material/tune:"),
        ("compare_runs", "pages/8_Compare_runs.py", "Compare runs", ":material/compare:"),
        ("drilldown", "pages/9_Block_drill_down.py", "Block drill-down", ":material/zoom_in:"),
    ],
    "Evaluate": [
        ("export", "pages/3_Export_and_evaluate.py", "Export & evaluate", ":material/inventory_2:"),
        ("shootout", "pages/4_Shootout.py", "Shootout", ":material/leaderboard:"),
        ("recovery", "pages/5_Recovery_and_accuracy.py", "Recovery & accuracy", ":material/healing:"),
        ("ground_truth", "pages/6_Ground_truth_and_report.py", "Ground truth & report", ":material/fact_check:"),
    ],
}
PAGES = {key: path for entries in NAV.values() for key, path, _, _ in entries}


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
    # the model and its calibration: replaced together by new_calibration()
    model_spec: dict | None = None   # spec, device, dtype, trust_remote_code (None: streamed, nothing held)
    scores: object = None            # simdiff_core.Scores
    calib_ids: object = None         # LongTensor (samples, seq_len)
    calib_info: dict | None = None
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
    accuracy: dict = field(default_factory=dict)   # Recovery page: (model, plan, tasks) -> accuracy
    sens_runs: dict | None = None    # Calibration sensitivity page: scores per calibration source
    drill: dict | None = None        # Block drill-down page: the last drill-down


RESULT_KEYS = ("plan", "evals", "damage", "damage_result", "set_damage", "auto_alpha", "shootout", "recovery",
               "accuracy", "sens_runs", "drill")
DEFAULTS = {f.name: getattr(Session(), f.name) for f in fields(Session)}
_calibrations = itertools.count(1)


def setup_page(title: str, icon: str = "assets/favicon.png") -> None:
    """Page config, logo and session defaults: call first on every page."""
    icon_path = ROOT / icon
    st.set_page_config(page_title=f"{title} · SimDiff Explorer", page_icon=str(icon_path) if icon_path.is_file() else "🧬",
                       layout="wide")
    logo = ROOT / "assets" / "logo.svg"
    if logo.is_file():
        st.logo(str(logo), size="large")
    init()
    prewarm_once()


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
    scores = st.session_state.get("scores")
    if scores is None:
        spec = st.session_state.get("model_spec")
        return f"Loaded: {spec['spec']} · not calibrated" if spec else "Session: no model loaded."
    info = st.session_state.get("calib_info") or {}
    src = str(info.get("source", "?"))
    src = src if len(src) <= 40 else src[:39] + "…"
    return (f"Scored: {scores.model} · {scores.num_layers} blocks · {info.get('samples', '?')} × "
            f"{info.get('seq_len', '?')} tokens of {src}")


def show_status(slot=None) -> None:
    """Write ``session_summary`` into the shared sidebar slot (app.py makes it; a page that changes
    the session, e.g. a calibration, calls this again without ``slot`` to refresh it in the same run)."""
    if slot is not None:
        st.session_state["_status_slot"] = slot
    slot = st.session_state.get("_status_slot")
    if slot is not None:
        slot.caption(session_summary())


def _default(name: str):
    v = DEFAULTS[name]
    return v.copy() if isinstance(v, (list, dict)) else v


def init() -> None:
    for k in DEFAULTS:
        if k not in st.session_state:
            st.session_state[k] = _default(k)
    if "_tags" not in st.session_state:
        st.session_state["_tags"] = {}


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
    st.session_state["model_spec"] = model_spec
    st.session_state["scores"] = scores
    st.session_state["calib_ids"] = calib_ids
    st.session_state["calib_info"] = calib_info
    st.session_state["calib_tag"] = f"{scores.model}#{next(_calibrations)}"


def get(name: str, default=None):
    return st.session_state.get(name, default)


def put(name: str, value) -> None:
    st.session_state[name] = value


def widget_key(name: str) -> str:
    """Key for the widget editing persistent value ``name``, reset from it on every run.

    Streamlit drops (or resets) a widget's state when the user switches pages, so the persistent
    copy is the truth: it is written back by ``keep`` (the widget's on_change) before each rerun.
    """
    wk = "_w_" + name
    if st.session_state.get(name) is not None:
        st.session_state[wk] = st.session_state[name]
    return wk


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


@st.cache_resource(show_spinner=False, max_entries=2)
def cached_model(spec: str, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False):
    """One shared, read-only LoadedModel per (spec, device, dtype): never mutate it (prune makes views)."""
    # transformers' lazy imports are not safe to run from two threads at once ("cannot import name
    # AutoModelForCausalLM"): let the prewarm thread finish its imports before loading.
    prewarm_once().join()
    return load_model(spec, device=device, dtype=dtype, trust_remote_code=trust_remote_code)


@st.cache_resource(show_spinner=False, max_entries=4)
def cached_tokenizer(model_dir: str):
    """Tokenizer alone, for streamed scoring (the model itself is never loaded)."""
    prewarm_once().join()  # see cached_model
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def current_lm():
    """The LoadedModel of this session, or None (model_spec not set or its load failed)."""
    spec = st.session_state.get("model_spec")
    if not spec:
        return None
    key = (spec["spec"], spec["device"], spec["dtype"], spec.get("trust_remote_code", False))
    pin = st.session_state.get("_lm_pin")
    if pin is not None and pin[0] == key:
        # This session's own reference: other sessions loading other models may push this one out of
        # the shared cache (max_entries), but never out from under a session still using it (no reload,
        # no second copy). It is released with the session or when this session loads another model.
        return pin[1]
    try:
        lm = cached_model(*key)
    except SimDiffError:
        return None
    st.session_state["_lm_pin"] = (key, lm)
    return lm


def _guard(msg: str) -> None:
    st.info(msg, icon=":material/arrow_back:")
    st.page_link(PAGES["load"], label="Go to Load & calibrate", icon=":material/science:")
    st.stop()


def require_model():
    lm = current_lm()
    if lm is None:
        _guard("Load a model first: pick one on the **Load & calibrate** page.")
    return lm


def require_scores():
    scores = st.session_state.get("scores")
    if scores is None:
        _guard("No calibration yet: load a model and run **Calibrate** on the **Load & calibrate** page.")
    return scores


def clear_results() -> None:
    """Forget every result computed from the previous model/calibration (and β, which auto α sets)."""
    for k in RESULT_KEYS:
        st.session_state[k] = _default(k)
    st.session_state["_tags"] = {}
    st.session_state["beta"] = DEFAULTS["beta"]


def fusion_kwargs() -> dict:
    return {"scale_free": bool(st.session_state.get("scale_free", True)),
            "beta": float(st.session_state.get("beta", 0.5))}


def current_plan(scores, num: int | None = None):
    """The preview Plan for the session's criterion/ratio/alpha/locks (no forward pass); stored as ``plan``.

    Raises SimDiffError for impossible settings (e.g. a ratio that removes every block).
    """
    crit = st.session_state.get("criterion", "simdiff")
    if num is None:  # the count, so "remove all 30 of 30" reads as such rather than as a bad ratio
        num = max(1, int(round(float(st.session_state.get("ratio", 0.25)) * scores.num_layers)))
    kw = dict(num=num)
    fusion = fusion_kwargs() if crit == "simdiff" else {}
    plan = make_plan(scores, crit, alpha=float(st.session_state.get("alpha", 0.5)),
                     keep_first=bool(st.session_state.get("keep_first", True)),
                     keep_last=bool(st.session_state.get("keep_last", True)), **kw, **fusion)
    put_result("plan", plan)
    return plan


def require_plan(scores, lm):
    """The session's plan checked against the loaded model, or the error with a link to fix it and st.stop()."""
    from ui import views

    try:
        plan = current_plan(scores)
        plan.validate(lm.num_layers)
    except SimDiffError as e:
        views.show_error(e)
        st.page_link(PAGES["preview"], label="Change the plan on Prune preview", icon=":material/content_cut:")
        st.stop()
    return plan


def per_scores(scores, key, build):
    """``build()`` memoised for this session's current ``scores`` object (figure bases, heatmap specs).

    Rebuilt only when the scores object changes (a new calibration), so a slider move never redoes
    work that depends on the scores alone.
    """
    memo = st.session_state.get("_per_scores")
    if memo is None or memo[0] is not scores:
        memo = (scores, {})
        st.session_state["_per_scores"] = memo
    if key not in memo[1]:
        memo[1][key] = build()
    return memo[1][key]


def per_scores_recent(scores, group: str, key, build, keep: int = 4):
    """``per_scores`` for values that are large and keyed by many settings (the live slider payloads):
    only the ``keep`` most recently used of ``group`` stay memoised, so moving α through its grid does
    not pile up one payload per value in the session."""
    memo = per_scores(scores, ("_recent", group), dict)
    if key in memo:
        memo[key] = memo.pop(key)  # most recent last
    else:
        memo[key] = build()
        while len(memo) > keep:
            memo.pop(next(iter(memo)))
    return memo[key]


def count_run(name: str) -> int:
    """Count script runs of ``name`` (a page, or a fragment) in this session: the browser test reads it
    to prove a slider move reran only the fragment, never the whole page."""
    runs = st.session_state.setdefault("_runs", {})
    runs[name] = runs.get(name, 0) + 1
    return runs[name]


def export_root() -> Path:
    """Where exports go: $SIMDIFF_EXPORT_DIR or ./exports under the project."""
    return Path(os.environ.get("SIMDIFF_EXPORT_DIR", ROOT / "exports"))


def plan_evaluation(plan):
    """The Export page's last ``records.Evaluation`` of ``plan`` in this session (any windows), or None."""
    found = None
    for key, ev in result("evals").items():
        if isinstance(key, tuple) and key and key[0] == tuple(plan.removed_layers):
            found = ev
    return found


def record_export(exports: list, out: Path, plan, evaluation=None, recovered: bool = False) -> list:
    """The session's export list with ``out`` (re)placed last: one row for the exports table."""
    zp = Path(out).with_suffix(".zip")
    ev = evaluation
    row = {"name": Path(out).name, "path": str(out), "zip": str(zp), "criterion": plan.criterion,
           "alpha": plan.alpha, "removed": plan.num_removed, "of": plan.num_layers, "blocks": plan.removed_layers,
           "ppl_dense": ev.ppl_dense if ev else None,
           "ppl_pruned": (ev.ppl_recovered if recovered else ev.ppl_pruned) if ev else None,
           "zip_MB": round(zp.stat().st_size / 2**20, 1) if zp.is_file() else None}
    return [e for e in exports if e["path"] != str(out)] + [row]
