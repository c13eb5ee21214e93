"""What every part of the evaluation benchmark shares: a log line, CPU+wall timing, the naive reference."""

from __future__ import annotations

import sys
import time


def log(msg: str) -> None:
    print(f"[bench_eval] {msg}", file=sys.stderr, flush=True)


def timed(fn):
    """(result, wall seconds, CPU seconds of this process)."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def naive_ppl(lm, ids, removed) -> float:
    """Perplexity of the model without ``removed``, the naive way: build the pruned model, run it."""
    from simdiff_core.evaluation.evaluate import perplexity
    from simdiff_core.pruning.prune import pruned_model

    return perplexity(pruned_model(lm, [i for i in range(lm.num_layers) if i not in set(removed)]), ids,
                      batch_size=4)["ppl"]
