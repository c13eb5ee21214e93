"""The run library: calibrations saved on disk, found again by a content key, opened without the model.

    from simdiff_core.runs import RunStore, RunInfo, Run, run_key, calibration_key
    store = RunStore()                                  # $SIMDIFF_HOME/runs; SIMDIFF_RUNS_READONLY=1: read-only
    key, settings = calibration_key(lm, ids, matrix_tokens=256, first_token=True)
    hit = store.lookup(key)                             # RunInfo or None
    run_id = store.save(scores, meta=run_meta(scores, settings), key=key)
    run = store.open(run_id)                            # run.scores: a Scores equal to the saved one

``store.py`` is the library (SQLite index + one run file each), ``codec.py`` the run file (numeric
arrays + a JSON header, never pickled), ``keys.py`` the content keys. The app and the CLI
(``simdiff runs ...``, ``simdiff score``) are two clients of the same RunStore.
"""

from .codec import run_file_bytes
from .keys import calibration_key, content_key, files_fingerprint, run_key, scoring_options, tokens_hash, weights_fingerprint
from .store import Run, RunInfo, RunStore, default_home, run_meta, scores_from_upload

__all__ = ["Run", "RunInfo", "RunStore", "calibration_key", "content_key", "default_home", "files_fingerprint",
           "run_file_bytes", "run_key", "run_meta", "scores_from_upload", "scoring_options", "tokens_hash",
           "weights_fingerprint"]
