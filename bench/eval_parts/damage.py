"""``damage_vs_floor``: leave-one-out damage / (L+1) plain ``model(input_ids)`` forwards of the same batches."""

from __future__ import annotations

import torch

from .common import timed


def bench_damage(lm, ids, bs: int) -> dict:
    from simdiff_core.evaluation.damage import measure_damage

    L = lm.num_layers

    def floor():
        with torch.inference_mode():
            for _ in range(L + 1):
                for s in range(0, ids.shape[0], bs):
                    lm.model(input_ids=ids[s:s + bs], use_cache=False)

    _, f1, c1 = timed(floor)
    dmg, td, cd = timed(lambda: measure_damage(lm, ids, batch_size=bs))
    _, f2, c2 = timed(floor)
    return {"damage_s": round(td, 2), "floor_s": round(min(f1, f2), 2), "damage_vs_floor_wall": round(td / min(f1, f2), 3),
            "damage_vs_floor": round(cd / ((c1 + c2) / 2), 3),
            "block_executions": dmg.meta["block_executions"], "naive_block_executions": dmg.meta["naive_block_executions"]}
