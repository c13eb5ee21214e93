"""Perplexity of a model bigger than memory, one decoder block at a time (engine: models/streaming.py).

    from simdiff_core.evaluation.streaming import stream_perplexity
    res = stream_perplexity("./big-model", eval_ids, memory_budget_mb=2000)   # {"ppl", "nll", "tokens", "stream"}

After the blocks have run (``analysis.streaming.run_blocks``), the final norm and LM head are
loaded and the model's own forward runs once more with the blocks replaced by replayers of the
streamed final hidden states, so family-specific head logic is the model's own code. Cost: one
streamed pass over all blocks plus one head pass; the same numbers as ``evaluate.perplexity``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..analysis.streaming import run_blocks
from ..common.errors import SimDiffError
from ..common.progress import Progress
from ..models.streaming import Replayer, StreamedModel, batch_ranges, capture_inputs, stream_meta


def stream_perplexity(
    model_dir: str | Path,
    input_ids: torch.Tensor,
    memory_budget_mb: float | None = None,
    device="auto",
    dtype="auto",
    batch_size: int = 2,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """``evaluate.perplexity`` for a checkpoint streamed from disk: {ppl, nll, tokens, stream}."""
    if input_ids.ndim != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] < 2:
        raise SimDiffError("perplexity input must be a non-empty (N, S>=2) tensor of token ids")
    sm = StreamedModel(model_dir, device, dtype, memory_budget_mb)
    sm.check_budget(head=True)
    batches = batch_ranges(input_ids.shape[0], batch_size)
    xs, calls = capture_inputs(sm, input_ids, None, batch_size)
    xs = run_blocks(sm, xs, calls, None, progress, should_stop)
    outer = sm.head_phase_names()  # final norm + LM head; the embedding again as the rows used
    sm.load(outer, "final norm and LM head")
    total_nll, total_tok = 0.0, 0
    try:
        with torch.inference_mode(), sm.compact_embedding(input_ids) as compact:
            for b, (s, e) in enumerate(batches):
                box = {"y": xs[b]}
                ids = input_ids[s:e].to(sm.device)
                with sm.swapped_blocks(lambda i, blk: Replayer(blk, box)):
                    logits = sm.model(input_ids=compact[s:e].to(sm.device), use_cache=False).logits
                nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                      ids[:, 1:].reshape(-1), reduction="sum")
                del logits
                total_nll += float(nll)
                total_tok += ids[:, 1:].numel()
                xs[b] = None
    finally:
        sm.release(outer)
    mean = total_nll / total_tok
    return {"ppl": math.exp(min(mean, 700.0)), "nll": mean, "tokens": total_tok, "stream": stream_meta(sm)}
