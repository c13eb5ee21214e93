"""The independent reference for leave-one-out damage, and the benchmark that times the two.

    from simdiff_core.evaluation.damage_reference import naive_damage, benchmark_damage
    ref = naive_damage(lm, calib_ids)      # {"dense_loss", "losses", "ppls"}: prune each block, run perplexity
    benchmark_damage(lm, calib_ids)        # cached vs naive: seconds, speedup, block calls, max loss diff

Why: ``damage.measure_damage`` is fast because it reuses cached block inputs and tails; this is the
slow path it must agree with, built from other code (``prune.pruned_model`` + ``evaluate.perplexity``,
one full forward of L-1 blocks per removed block). Cost: L^2 block calls per batch (30 blocks: 900),
about twice the cached path; ``benchmark_damage`` runs both (run it from ``bench/bench_damage.py``).
"""

from __future__ import annotations

import time

import torch

from .damage import measure_damage


@torch.inference_mode()
def naive_damage(lm, input_ids: torch.Tensor, batch_size: int = 2) -> dict:
    """Reference: remove each block with ``prune.pruned_model`` and run ``evaluate.perplexity``."""
    from ..pruning.prune import pruned_model
    from .evaluate import perplexity

    L = lm.num_layers
    dense = perplexity(lm.model, input_ids, batch_size=batch_size, device=lm.device)
    per = [perplexity(pruned_model(lm, [j for j in range(L) if j != i]), input_ids, batch_size=batch_size,
                      device=lm.device) for i in range(L)]
    return {"dense_loss": dense["nll"], "losses": [p["nll"] for p in per], "ppls": [p["ppl"] for p in per]}


def benchmark_damage(lm, input_ids: torch.Tensor, batch_size: int | None = None) -> dict:
    """Time the cached implementation against the naive one and check they agree.

    A benchmark, not a test: run it from ``bench/bench_damage.py`` (it does ~2x the work of one
    damage measurement).
    """
    def sync():
        if lm.device.type == "cuda":
            torch.cuda.synchronize(lm.device)

    sync()
    t0 = time.perf_counter()
    dmg = measure_damage(lm, input_ids, batch_size=batch_size)
    sync()
    t_cached = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = naive_damage(lm, input_ids, batch_size=dmg.meta["batch_size"])
    sync()
    t_naive = time.perf_counter() - t0
    diff = max(abs(a - b) for a, b in zip(dmg.losses(), ref["losses"]))
    return {"model": lm.name, "num_layers": lm.num_layers, "windows": int(input_ids.shape[0]),
            "seq_len": int(input_ids.shape[1]), "cached_s": round(t_cached, 3), "naive_s": round(t_naive, 3),
            "speedup": round(t_naive / t_cached, 2) if t_cached > 0 else None,
            "block_executions_cached": dmg.meta["block_executions"],
            "block_executions_naive": dmg.meta["naive_block_executions"],
            "max_abs_loss_diff": diff}
