"""Scoring pass vs plain forward over the same batches (ratio measured in one run, interleaved)."""

from __future__ import annotations

import torch

from .harness import best_of


# ----------------------------------------------------------------------------------- sections
def bench_overhead(lm, ids, bs, repeats, device) -> dict:
    from simdiff_core.analysis.score import forward_base, score_model

    batches = [ids[i:i + bs].to(device) for i in range(0, ids.shape[0], bs)]

    def base():
        with torch.inference_mode():
            for b in batches:
                forward_base(lm.model, b)

    def full():
        with torch.inference_mode():
            for b in batches:
                lm.model(input_ids=b, use_cache=False)

    holder = {}

    def scoring():
        holder["scores"] = score_model(lm, ids, batch_size=bs, linear=False)  # the metric pass (linear: suite/linear.py)

    scoring()  # warm-up (allocator, kernels)
    t = best_of({"base_forward": base, "scoring": scoring, "full_forward": full}, repeats, device)
    return {"scoring_overhead": t["scoring"] / t["base_forward"],
            "scoring_over_full_forward": t["scoring"] / t["full_forward"],
            "seconds": {k: round(v, 4) for k, v in t.items()}, "batches": len(batches), "batch_size": bs,
            "tokens": int(ids.numel()), "scores": holder["scores"]}
