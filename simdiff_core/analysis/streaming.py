"""Score (and perplexity-check) a model bigger than memory, one decoder block at a time.

    from simdiff_core.analysis.streaming import stream_score
    from simdiff_core.evaluation.streaming import stream_perplexity
    scores = stream_score("./big-model", ids, memory_budget_mb=2000)   # same Scores as score_model
    ppl = stream_perplexity("./big-model", eval_ids, memory_budget_mb=2000)
    # CLI: python -m simdiff_core score --model ./big-model --stream --memory-budget-mb 2000 --out s.json

How (the order sequential pruning codebases use): the model skeleton is built on the ``meta`` device
(accelerate ``init_empty_weights``: no weight memory). Tensors are read lazily with
``safetensors.safe_open`` from the shard the index's ``weight_map`` names and materialised with
``set_module_tensor_to_device``. Then

1. embeddings only: run the model's own forward with every block replaced by a recorder, which
   captures block 0's input hidden states and the exact keyword arguments every block receives
   (attention masks, sliding-window masks, rotary position embeddings: whatever the family passes);
   the embeddings are released (the recorders replace the blocks rather than hook them: a hook
   cannot stop a block whose weights are still on ``meta`` from running; the skeleton belongs to
   this call alone, so swapping its blocks touches nothing shared);
2. for each block i: load block i, run *all* calibration batches through it (hidden states stay on
   the device), feed ``metrics.BlockStats``, the heatmap sampler of ``score.py`` and the
   linear-replaceability accumulators (``linear.StreamedLinear``, one block's at a time) through the
   same run-scoped hooks (``hooks``) as the in-memory pass, release block i;
3. (perplexity only) load the final norm and LM head and run the model's own forward once more with
   the blocks replaced by replayers returning the streamed final hidden states, so family-specific
   head logic (logit soft-capping, scaled embeddings) is the model's own code.

Resident weights never exceed max(one block, norm + head) plus the embedding rows the calibration
tokens use (the table is read as row ranges, never whole: 2 GB at 128k x 4096 float32); ``memory_budget_mb`` is
checked before anything is loaded (a one-line ``SimDiffError`` says what the minimum is) and the
peak of materialised parameter bytes is recorded in ``Scores.meta["stream"]``. Activations are not
weights: all calibration hidden states (N x S x H) stay on the device, as in the in-memory pass.
The last-token states for the angular-distance matrix are kept for every window and block
(O(L x N x H), small: one token per window).

The checkpoint must be a safetensors directory whose tensor names match the model's parameter
names (``save_pretrained`` output; the embedded GGUF's dequantised cache qualifies).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch

from ..common.errors import Cancelled, SimDiffError
from ..common.progress import Progress
from ..models.streaming import BlockPrefetch, StreamedModel, batch_ranges, capture_inputs, stream_meta
from .hooks import block_hooks, hook_pass
from .linear import StreamedLinear
from .metrics import BlockStats
from .score import MatrixSampler, Scores, auto_batch_size


def run_blocks(sm: StreamedModel, xs, calls, on_block, progress, should_stop, prefetch: bool = True):
    """Block-major loop: load block i, push every batch through it, release it.

    ``prefetch``: block i+1 is read in a background thread while block i computes
    (``models.streaming.BlockPrefetch``; only where two blocks fit the budget; bit-identical results).
    """
    L = len(sm.blocks)
    ahead = BlockPrefetch(sm) if prefetch and L > 1 else None
    try:
        for i in range(L):
            _one_block(sm, i, xs, calls, on_block, progress, should_stop, ahead)
    finally:
        if ahead is not None:
            ahead.close()
    return xs


def _one_block(sm, i, xs, calls, on_block, progress, should_stop, ahead):
    """Load block i (read ahead if ``ahead`` has it), start reading block i+1, run every batch, release."""
    L, nb = len(sm.blocks), len(xs)
    names = sm.block_names(i)
    sm.load(names, f"block {i}", ahead.take(i) if ahead is not None else None)
    if ahead is not None and i + 1 < len(sm.blocks):
        ahead.start(i + 1)
    batch = [0]
    # the block's input and output reach on_block through the same run-scoped hook as in score.py
    observe = (lambda _i, x, y: on_block(batch[0], _i, x, y)) if on_block is not None else (lambda *a: None)
    try:
        with torch.inference_mode(), block_hooks({i: sm.blocks[i]}, observe, name="stream"):
            for b in range(nb):
                if should_stop is not None and should_stop():
                    raise Cancelled()
                args, kwargs = calls[b][i]
                batch[0] = b
                out = sm.blocks[i](xs[b], *args, **kwargs)
                xs[b] = out[0] if isinstance(out, (tuple, list)) else out
                if progress is not None:
                    progress((i * nb + b + 1) / (L * nb), f"block {i + 1}/{L} (streamed), batch {b + 1}/{nb}")
    finally:
        sm.release(names)


def stream_score(
    model_dir: str | Path,
    input_ids: torch.Tensor,
    memory_budget_mb: float | None = None,
    device="auto",
    dtype="auto",
    batch_size: int | None = None,
    attention_mask: torch.Tensor | None = None,
    matrix_tokens: int = 256,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    calibration: dict | None = None,
    source: str | None = None,
    linear: bool = False,
    linear_bands: bool = False,
    prefetch: bool = True,
) -> Scores:
    """``score.score_model`` for a checkpoint streamed from disk one block at a time.

    Batches, accumulators and the heatmap subsample are those of ``score_model``, so the result
    equals the in-memory scores for the same ``batch_size`` (bit for bit on CPU in float32).
    ``linear``: the linear-replaceability curve (``linear.StreamedLinear``: one block's d x d
    accumulators at a time, no memory cap needed; off by default here: models that need streaming
    are wide, and it adds a d x d float64 eigen-solve and three d x d accumulators per block); ``linear_bands``: also its per-window sums (no
    second pass here: each block's residuals are taken before the block is released). ``prefetch``:
    read block i+1 while block i computes (where two blocks fit the budget; same results bit for bit).
    """
    if input_ids.ndim != 2 or input_ids.shape[0] == 0:
        raise SimDiffError("calibration input must be a non-empty (N, S) tensor of token ids")
    t0 = time.perf_counter()
    sm = StreamedModel(model_dir, device, dtype, memory_budget_mb)
    sm.check_budget(head=False)
    L = len(sm.blocks)
    N, S = input_ids.shape
    bs = batch_size or auto_batch_size(sm.device, S)
    batches = batch_ranges(N, bs)
    xs, calls = capture_inputs(sm, input_ids, attention_mask, bs)

    # One accumulator and sampler per batch, folded in batch order at the end: the in-memory pass
    # folds batch by batch, so the float64 totals are summed in the same order.
    stats = [BlockStats(L) for _ in batches]
    samplers = [MatrixSampler(L, per_batch=max(1, math.ceil(matrix_tokens / N)), seq_len=S) for _ in batches]
    takes, taken = [], 0
    for s, e in batches:
        take = max(0, min(matrix_tokens - taken, len(samplers[0].pos) * (e - s)))
        takes.append(take)
        taken += take
    masks = [attention_mask[s:e].to(sm.device) if attention_mask is not None else None for s, e in batches]

    lin = StreamedLinear(L, sm.blocks, batches, windows=linear_bands and N >= 2) if linear else None

    def on_block(b, i, x, y):
        stats[b].observe(i, x, y, masks[b])
        samplers[b].observe(i, x, y, takes[b])
        if lin is not None:
            lin.observe(b, i, x, y, masks[b])

    with hook_pass(post=lin.write_hooks() if lin is not None else {}, name="stream-linear"):
        run_blocks(sm, xs, calls, on_block, progress, should_stop, prefetch)
    total, sampler = BlockStats(L), samplers[0]
    for b in range(len(batches)):
        stats[b].commit()
        total.absorb(stats[b])
        samplers[b].commit()
        if b > 0:
            sampler.ang_sum += samplers[b].ang_sum
            sampler.ang_count += samplers[b].ang_count
            for i in range(L):
                sampler.sub[i].extend(samplers[b].sub[i])
    from .. import __version__
    from .score import finish_scores

    layers, mats = finish_scores(total, sampler)
    windows, lin_meta = total.windows(), None
    if lin is not None:
        from .score import add_linear

        vals, lin_windows, lin_meta = lin.finish()
        add_linear(layers, vals)
        windows.update(lin_windows)

    return Scores(
        model=source or str(model_dir), num_layers=L, layers=layers, matrices=mats,
        calibration=dict(calibration or {}, samples=int(N), seq_len=int(S), tokens=int(total.tokens)),
        meta={"seconds": round(time.perf_counter() - t0, 3), "batch_size": bs, "device": str(sm.device),
              "dtype": str(sm.dtype).replace("torch.", ""), "simdiff_alpha": 0.5,
              "family": getattr(sm.model.config, "model_type", "unknown"), "version": __version__,
              "stream": dict(stream_meta(sm, head=False), prefetch=bool(prefetch)), **({"linear": lin_meta} if lin_meta else {})},
        windows=windows,
    )
