"""``shootout_default_s``: the Shootout page's default method set at its default settings, CPU seconds."""

from __future__ import annotations

import torch

from .common import timed


def bench_shootout(lm) -> dict:
    from simdiff_core import eval_windows, make_windows
    from simdiff_core.methods.compare import SHOOTOUT_DEFAULTS as D
    from simdiff_core.methods.compare import parse_specs, run_compare

    calib = make_windows(lm.tokenizer, "wikitext2", n=8, seq_len=256)
    ev = eval_windows(lm.tokenizer, "wikitext2", D.eval_seq_len, D.eval_windows)
    res, t, cpu = timed(lambda: run_compare(lm, calib, parse_specs(list(D.methods)), ratio=0.25, eval_ids=ev,
                                            budget=D.budget))
    # CPU seconds of this (1-thread) process ~ the wall time on an idle core; the wall time on a shared
    # machine mostly measures the other jobs
    return {"shootout_default_s": round(cpu, 1), "shootout_default_wall_s": round(t, 1),
            "shootout_threads": torch.get_num_threads(), "shootout_methods": list(D.methods),
            "shootout_rows": [(r["method"], r["criterion"], round(r["ppl"], 2), r["seconds"]) for r in res["rows"]]}
