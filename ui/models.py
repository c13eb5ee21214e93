"""The model cache (``st.cache_resource``, shared by every session) and the guards that stop a page
without the model or the scores it needs.

    from ui import models
    lm = models.require_model()         # LoadedModel, or an info box with a link and st.stop()
    scores = models.require_scores()    # Scores from the last calibration
"""

from __future__ import annotations

import streamlit as st

from simdiff_core import SimDiffError, load_model
from ui import shell, state


@st.cache_resource(show_spinner=False, max_entries=2)
def cached_model(spec: str, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False):
    """One shared, read-only LoadedModel per (spec, device, dtype): never mutate it (prune makes views)."""
    # transformers' lazy imports are not safe to run from two threads at once ("cannot import name
    # AutoModelForCausalLM"): let the prewarm thread finish its imports before loading.
    shell.prewarm_once().join()
    return load_model(spec, device=device, dtype=dtype, trust_remote_code=trust_remote_code)


@st.cache_resource(show_spinner=False, max_entries=4)
def cached_tokenizer(model_dir: str):
    """Tokenizer alone, for streamed scoring (the model itself is never loaded)."""
    shell.prewarm_once().join()  # see cached_model
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)


def current_lm():
    """The LoadedModel of this session, or None (model_spec not set or its load failed)."""
    spec = state.get("model_spec")
    if not spec:
        return None
    key = (spec["spec"], spec["device"], spec["dtype"], spec.get("trust_remote_code", False))
    pin = state.get("_lm_pin")
    if pin is not None and pin[0] == key:
        # This session's own reference: other sessions loading other models may push this one out of
        # the shared cache (max_entries), but never out from under a session still using it (no reload,
        # no second copy). It is released with the session or when this session loads another model.
        return pin[1]
    try:
        lm = cached_model(*key)
    except SimDiffError:
        return None
    state.put("_lm_pin", (key, lm))
    return lm


def guard(msg: str) -> None:
    """Stop the page with ``msg`` and a link to Load & calibrate."""
    st.info(msg, icon=":material/arrow_back:")
    st.page_link(shell.PAGES["load"], label="Go to Load & calibrate", icon=":material/science:")
    st.stop()


def require_model():
    from ui import runs

    lm = runs.ensure_model()  # an opened run's model (Runs page, a link) is loaded here, on demand
    if lm is None:
        guard("Load a model first: pick one on the **Load & calibrate** page.")
    return lm


def require_scores():
    scores = state.get("scores")
    if scores is None:
        guard("No calibration yet: load a model and run **Calibrate** on the **Load & calibrate** page.")
    return scores
