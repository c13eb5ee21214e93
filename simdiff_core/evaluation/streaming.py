"""Perplexity of a model bigger than memory, one decoder block at a time (engine: models/streaming.py).

    from simdiff_core.evaluation.streaming import stream_perplexity
    res = stream_perplexity("./big-model", eval_ids, memory_budget_mb=2000)   # {"ppl", "nll", "tokens", "stream"}

After the blocks have run (``analysis.streaming.run_blocks``, block i+1 read while block i computes),
the final norm is loaded and the model's own forward runs once more per vocabulary slice of the LM
head with the blocks replaced by replayers of the streamed final hidden states, so family-specific
head logic is the model's own code. The head is never whole in memory (2 GB at 128k x 4096 float32):
each slice's rows are read from the shard, and the loss is a float64 log-sum-exp over the slices.
Cost: one streamed pass over all blocks plus one cheap head pass per slice; the same numbers as
``evaluate.perplexity`` (to float64 rounding of the log-sum-exp).
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
from .evaluate import ppl_from_loss


HEAD_SLICE_BYTES = 256 * 2**20  # LM head rows read per vocabulary slice (at most)
LOGIT_SLICE_BYTES = 256 * 2**20  # float64 logits of one batch and one slice (at most)


def stream_perplexity(
    model_dir: str | Path,
    input_ids: torch.Tensor,
    memory_budget_mb: float | None = None,
    device="auto",
    dtype="auto",
    batch_size: int = 2,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    prefetch: bool = True,
    head_rows: int | None = None,
) -> dict:
    """``evaluate.perplexity`` for a checkpoint streamed from disk: {ppl, nll, tokens, stream}.

    ``prefetch``: read block i+1 while block i computes (``analysis.streaming.run_blocks``).
    ``head_rows``: vocabulary rows of the LM head per slice (default: what 256 MB of weights and of
    float64 logits allow, within the memory budget); the loss is a log-sum-exp over the slices.
    """
    if input_ids.ndim != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] < 2:
        raise SimDiffError("perplexity input must be a non-empty (N, S>=2) tensor of token ids")
    if head_rows is not None and int(head_rows) < 1:
        raise SimDiffError("head_rows must be at least 1")
    sm = StreamedModel(model_dir, device, dtype, memory_budget_mb)
    sm.check_budget(head=True)
    batches = batch_ranges(input_ids.shape[0], batch_size)
    xs, calls = capture_inputs(sm, input_ids, None, batch_size)
    xs = run_blocks(sm, xs, calls, None, progress, should_stop, prefetch)
    if sm.head_sliceable():
        total_nll, total_tok, rows = _sliced_head_nll(sm, xs, input_ids, batches, head_rows)
    else:
        total_nll, total_tok, rows = _whole_head_nll(sm, xs, input_ids, batches), input_ids[:, 1:].numel(), None
    mean = total_nll / total_tok
    meta = dict(stream_meta(sm), prefetch=bool(prefetch), head_rows_per_slice=rows)
    return {"ppl": ppl_from_loss(mean), "nll": mean, "tokens": total_tok, "stream": meta}


def _logits(sm: StreamedModel, compact, xs, b: int, s: int, e: int) -> torch.Tensor:
    """The model's own forward with the blocks replaced by replayers of the streamed final states (so
    family head logic — final norm, logit soft-capping, scaling — is the model's code)."""
    box = {"y": xs[b]}
    with sm.swapped_blocks(lambda i, blk: Replayer(blk, box)):
        return sm.model(input_ids=compact[s:e].to(sm.device), use_cache=False).logits


def _sliced_head_nll(sm: StreamedModel, xs, input_ids, batches, head_rows):
    """Summed NLL with the LM head read in vocabulary slices [v0, v1) (row ranges of the shard).

    Per token, a running log-sum-exp over the slices (max m and scaled sum, float64) and the target's
    logit from the slice that holds it: nll = m + log(sum) - logit[target]. Peak: final norm + one slice
    of the head (a 128k x 4096 float32 head is 2 GB; a slice is at most 256 MB) + one slice of logits.
    """
    head = sm.model.get_output_embeddings()
    V = head.out_features
    row = sm.head_row_bytes()
    longest = max(e - s for s, e in batches) * (input_ids.shape[1] - 1)
    rows = head_rows or max(1, min(HEAD_SLICE_BYTES // row, LOGIT_SLICE_BYTES // (8 * max(1, longest))))
    rest = sm.head_rest_names()
    sm.load(rest, "final norm")
    wname = next(n for n in sm.head_names() if n.endswith("weight"))
    bname = next((n for n in sm.head_names() if n.endswith("bias")), None)
    states = []  # per batch: running max, running sum, target logit (float64, B x S-1)
    for s, e in batches:
        shape = (e - s, input_ids.shape[1] - 1)
        states.append([torch.full(shape, -math.inf, dtype=torch.float64, device=sm.device),
                       torch.zeros(shape, dtype=torch.float64, device=sm.device),
                       torch.full(shape, math.nan, dtype=torch.float64, device=sm.device)])
    original = dict(head._parameters)
    try:
        with torch.inference_mode(), sm.compact_embedding(input_ids) as compact:
            if sm.budget is not None:  # what is left beside the final norm and the embedding rows
                rows = min(rows, max(1, int((sm.budget - sm.held) // row)))
            rows = min(int(rows), V)
            for v0 in range(0, V, rows):
                v1 = min(V, v0 + rows)
                head._parameters["weight"] = torch.nn.Parameter(sm.read_rows(wname, (v0, v1)), requires_grad=False)
                if bname is not None:
                    head._parameters["bias"] = torch.nn.Parameter(sm.read_rows(bname, (v0, v1)), requires_grad=False)
                sm.held = sm.measured_bytes()
                sm.peak = max(sm.peak, sm.held)
                for b, (s, e) in enumerate(batches):
                    lg = _logits(sm, compact, xs, b, s, e)[:, :-1].double()
                    m, tot, tgt = states[b]
                    new_m = torch.maximum(m, lg.amax(-1))
                    tot.mul_(torch.exp(m - new_m)).add_(torch.exp(lg - new_m.unsqueeze(-1)).sum(-1))
                    m.copy_(new_m)
                    t = input_ids[s:e, 1:].to(sm.device)
                    inside = (t >= v0) & (t < v1)
                    got = lg.gather(-1, (t - v0).clamp(0, v1 - v0 - 1).unsqueeze(-1)).squeeze(-1)
                    tgt.copy_(torch.where(inside, got, tgt))
                    del lg
                head._parameters["weight"] = original["weight"]
                if bname is not None:
                    head._parameters["bias"] = original["bias"]
                sm.held = sm.measured_bytes()
    finally:
        head._parameters.update(original)
        sm.release(rest)
    total_nll, total_tok = 0.0, 0
    for m, tot, tgt in states:
        total_nll += float((m + torch.log(tot) - tgt).sum())
        total_tok += tgt.numel()
    return total_nll, total_tok, rows


def _whole_head_nll(sm: StreamedModel, xs, input_ids, batches) -> float:
    """Summed NLL with the whole head loaded (heads that are not one Linear over the vocabulary)."""
    outer = sm.head_phase_names()  # final norm + LM head; the embedding again as the rows used
    sm.load(outer, "final norm and LM head")
    total_nll = 0.0
    try:
        with torch.inference_mode(), sm.compact_embedding(input_ids) as compact:
            for b, (s, e) in enumerate(batches):
                ids = input_ids[s:e].to(sm.device)
                logits = _logits(sm, compact, xs, b, s, e)
                nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                      ids[:, 1:].reshape(-1), reduction="sum")
                del logits
                total_nll += float(nll)
                xs[b] = None
    finally:
        sm.release(outer)
    return total_nll
