"""Block-streamed scores vs in-memory scores under a memory budget of 1/4 of the model."""

from __future__ import annotations

import tempfile
import time

import torch

from .harness import llama_dir_model


def bench_streaming(num_layers, hidden, n, seq_len) -> dict:
    import numpy as np

    from simdiff_core.analysis.score import score_model
    from simdiff_core.analysis.streaming import stream_score
    from simdiff_core.models.blocks import count_parameters
    from simdiff_core.models.load import wrap_model

    model = llama_dir_model(num_layers, hidden, hidden * 3, 2048)
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        size_mb = count_parameters(model) * 4 / 2**20
        budget = size_mb / 4
        ids = torch.randint(0, 2048, (n, seq_len), generator=torch.Generator().manual_seed(0))
        t0 = time.perf_counter()
        ref = score_model(wrap_model(model, None, d), ids, batch_size=2)
        t1 = time.perf_counter()
        got = stream_score(d, ids, memory_budget_mb=budget, device="cpu", dtype="float32", batch_size=2)
        t2 = time.perf_counter()
    diff = 0.0
    for a, b in zip(ref.layers, got.layers):
        for k in ("cosine", "mssd", "masd", "mssd_rel", "masd_rel", "max_abs_diff", "simdiff"):
            diff = max(diff, abs(a[k] - b[k]))
    for k in ("output_cosine", "cka", "angular_boundaries"):
        diff = max(diff, float(np.abs(np.array(ref.matrices[k]) - np.array(got.matrices[k])).max()))
    meta = got.meta["stream"]
    return {"streaming_max_abs_diff": diff, "streaming_peak_mb": meta["peak_weights_mb"],
            "streaming_model_mb": round(size_mb, 2), "streaming_budget_mb": round(budget, 2),
            "streaming_min_budget_mb": meta["min_budget_mb"], "streaming_seconds": round(t2 - t1, 2),
            "in_memory_seconds": round(t1 - t0, 2), "streaming_model": f"llama {num_layers} blocks x hidden {hidden}"}
