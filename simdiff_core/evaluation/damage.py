"""Leave-one-out damage: the calibration loss of the model with exactly one block removed.

    from simdiff_core.evaluation.damage import measure_damage
    dmg = measure_damage(lm, calib_ids)            # Damage: dense loss + per-block loss/ppl without block i
    dmg.deltas()                                   # loss increase per block (the "ground truth" curve)
    scores = dmg.attach(scores)                    # copies damage_loss/damage_ppl into scores.layers
    dmg.save("damage.json")

Cosine, MSSD and MASD are proxies for how much a block matters; this is the thing they proxy.

How (cached prefix). Removing block i does not change anything *before* block i, so the hidden
state entering block i is the same as in the dense model. ``evaluator.PrefixEvaluator`` records,
in one dense forward per batch of windows, every block's input and the arguments the model called it
with (per block: sliding-window families such as Gemma3 pass local and global layers different masks
and rotary tables; GPT-2 passes some positionally). Then for each i it starts from the cached input
of block i, skips block i, runs blocks i+1..L-1, the final norm and the LM head (with the model's
own logit post-processing: Gemma soft-capping, Granite ``logits_scaling``, ...), and accumulates the
NLL exactly as ``evaluate.perplexity`` defines it (float32 cross-entropy of tokens 1..S-1 of each
window). The single removals are run from the deepest block down, so each tail reuses the previous
tail's states: block i+1's input without block i is block i's input.

Cost in block executions per batch: L + L(L-1)/2, about half of the naive L^2 (30 blocks: 465 vs
900; ``damage_cost.block_executions``). The LM head runs L+1 times, in tiles of rows x 2048 vocabulary entries (never the whole
(B, S, V) float32 logits at once). Measured against L+1 plain forwards of the same tokens
(``bench/run.py``: ``damage_vs_floor``) it is below 1. Memory: ``damage_cost.memory_estimate`` (per
batch (L+1) x batch x S x H activations plus one chunk of logits; it does not grow with the number
of windows).

Where the rest lives: the ``Damage`` record (save/load/attach) in ``damage_record.py``, the cost
model in ``damage_cost.py``, the naive reference and the cached-vs-naive benchmark in
``damage_reference.py``.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from ..common.errors import SimDiffError
from ..common.progress import Progress
from .damage_cost import block_executions, memory_estimate
from .damage_record import Damage
from .evaluate import ppl_from_loss
from .evaluator import PrefixEvaluator

DEFAULT_SAMPLES = 8
DEFAULT_SEQ_LEN = 256


def measure_damage(lm, input_ids: torch.Tensor, batch_size: int | None = None,
                   progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
                   calibration: dict | None = None, evaluator=None) -> Damage:
    """Leave-one-out damage of every block of ``lm`` (a LoadedModel) on windows ``input_ids`` (N, S).

    ``progress(fraction, message)`` is called after every leave-one-out tail; ``should_stop()`` is
    polled at the same points and raises ``Cancelled``. Memory: ``memory_estimate``. Runs through ``evaluator.PrefixEvaluator``
    (pass one built on the same windows to share its cache); memory: see that module.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.shape[0] == 0 \
            or input_ids.shape[1] < 2:
        raise SimDiffError("calibration input must be a non-empty (N, S) tensor of token ids with S >= 2")
    L = lm.num_layers
    if L < 2:
        raise SimDiffError("leave-one-out damage needs a model with at least 2 blocks")
    t0 = time.perf_counter()
    if progress is not None:
        progress(0.0, "dense pass: recording every block's input")
    ev = evaluator if evaluator is not None else PrefixEvaluator(lm, input_ids, batch_size=batch_size,
                                                                 should_stop=should_stop)
    if tuple(ev.shape) != tuple(input_ids.shape):
        raise SimDiffError("the evaluator was built on other calibration windows")
    calls0 = ev.stats["block_calls"]
    losses = ev.losses([(i,) for i in range(L)],
                       progress=None if progress is None else lambda f, m: progress(f, f"without one block: {m}"))
    N, S = input_ids.shape
    tokens = N * (S - 1)
    dense_loss = ev.dense_loss
    dense_ppl = ppl_from_loss(dense_loss)
    layers = []
    for i in range(L):
        loss = losses[i]
        ppl = ppl_from_loss(loss)
        layers.append({"index": i, "loss": loss, "ppl": ppl, "delta_loss": loss - dense_loss,
                       "delta_ppl": ppl - dense_ppl})
    n_batches = math.ceil(N / ev.bs)
    counts = block_executions(L, n_batches)
    mem = memory_estimate(lm, min(ev.bs, N), S)
    return Damage(
        model=lm.source, num_layers=L, dense_loss=dense_loss, dense_ppl=dense_ppl, layers=layers,
        calibration=dict(calibration or {}, samples=int(N), seq_len=int(S), tokens=int(tokens)),
        meta={"seconds": round(time.perf_counter() - t0, 3), "batch_size": ev.bs, "device": str(lm.device),
              "dtype": str(lm.dtype).replace("torch.", ""),
              "block_executions": L * n_batches + ev.stats["block_calls"] - calls0,
              "naive_block_executions": counts["naive"], "saving": round(counts["saving"], 4),
              "cache_bytes_per_batch": mem["cache_bytes"], "logits_bytes_per_batch": mem["logits_bytes"],
              "memory_bytes_per_batch": mem["total_bytes"],
              "method": "prefix-cached evaluator: one dense pass per batch, then blocks i+1..L-1 for each i "
                        "(reusing the previous tail's states), LM head in rows x vocabulary tiles"},
    )
