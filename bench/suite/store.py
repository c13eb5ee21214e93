"""The run library's cost: calibration through the store (key + save) vs plain calibration, and bytes per block.

``store_overhead``: ``workflows.calibrate_stored(..., recompute=True)`` (weights fingerprint, token hash,
the scoring pass, the run file write with fsync and the index transaction) over ``workflows.calibrate``
(the scoring pass alone) on the same windows, interleaved, best of ``repeats``; goal <= 1.03.
``recompute=True`` so every timed call scores and saves (a reuse would skip the pass and flatter it).
``store_bytes_per_block``: the run file's size / number of blocks at the given calibration
(default settings: 8 x 256 tokens, 256 heatmap tokens). Also reported: the reuse time (a stored run
found and opened: key + read + validate) next to the plain calibration.
"""

from __future__ import annotations

import tempfile
import time

from .harness import best_of


def bench_store(lm, ids, repeats: int, device) -> dict:
    from simdiff_core.runs import RunStore
    from simdiff_core.workflows import calibrate, calibrate_stored

    n, s = int(ids.shape[0]), int(ids.shape[1])
    with tempfile.TemporaryDirectory(prefix="simdiff-bench-home-") as home:
        store = RunStore(home, readonly=False)
        holder = {}

        def plain():
            calibrate(lm, "wikitext2", n, s, windows=ids)

        def stored():
            holder["info"] = calibrate_stored(lm, "wikitext2", n, s, store=store, recompute=True, windows=ids)[2]

        stored()  # warm-up (allocator, kernels; creates the library)
        t = best_of({"plain": plain, "stored": stored}, repeats, device)
        info = store.info(holder["info"]["run_id"])
        t0 = time.perf_counter()
        _, _, hit = calibrate_stored(lm, "wikitext2", n, s, store=store, windows=ids)
        reuse = time.perf_counter() - t0
        assert hit["from_store"] is not None
    return {"store_overhead": t["stored"] / t["plain"], "store_bytes_per_block": info.size / info.blocks,
            "run_bytes": info.size, "blocks": info.blocks, "windows": n, "seq_len": s,
            "seconds": {"plain": round(t["plain"], 4), "stored": round(t["stored"], 4), "reuse": round(reuse, 4)}}
