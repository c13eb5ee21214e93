"""What a leave-one-out damage measurement costs, computed without running it: block calls and memory.

    from simdiff_core.evaluation.damage_cost import block_executions, memory_estimate   # also from .damage
    block_executions(30)            # {"naive": 900, "cached": 465, "saving": 0.483}
    memory_estimate(lm, batch=4, seq_len=256)   # {"cache_bytes", "logits_bytes", "total_bytes"}

Why: the Ground truth page shows the cost before the user starts the run, and ``measure_damage``
records the same numbers in ``Damage.meta`` so a saved result says what it cost; both read them here.

Block calls per batch: naive (dense baseline + L pruned forwards of L-1 blocks) is L + L(L-1) = L^2;
cached (``damage.measure_damage``) is L + L(L-1)/2, about half (30 blocks: 900 vs 465).

Memory: see ``evaluator.py`` — per batch (L+1) x batch x S x H activations (default 8 x 256 windows,
30 blocks, H=576, batch 4, fp32: 31 x 4 x 256 x 576 x 4 B ~ 73 MB), kept for as many batches as fit
in 256 MiB, plus one chunk of logits (<= 32 MiB). It does not grow with the number of windows.
Cost of this module: arithmetic on the model config; no tensor is allocated.
"""

from __future__ import annotations

import torch


def block_executions(num_layers: int, batches: int = 1) -> dict:
    """Block forward calls of the naive and the cached leave-one-out computation."""
    L = num_layers
    naive = L + L * (L - 1)             # dense baseline + L pruned models of L-1 blocks
    cached = L + L * (L - 1) // 2       # dense capture + tails i+1..L-1
    return {"naive": naive * batches, "cached": cached * batches,
            "saving": 1.0 - cached / naive if naive else 0.0}


def memory_estimate(lm, batch: int, seq_len: int) -> dict:
    """Peak extra memory of one damage batch in bytes: ``cache_bytes`` (the L+1 hidden states of
    (batch, S, H) the evaluator keeps per batch), ``logits_bytes`` (the larger of: one loss tile of
    the LM head, rows x ``evaluator.VOCAB_TILE`` entries with at most ``DEFAULT_HEAD_CHUNK_BYTES`` of
    float32 logits, as the head returns it plus its float32 exponentials and a float32 copy when the
    model dtype is not float32; the dense pass's logits of ``CHECK_ROWS`` positions per window
    plus the two float32 rows of the tail check; and, once per evaluator, the full-vocabulary logits of
    one head chunk of predicting rows with their float32 softmax, which pick the bound's vocabulary
    subset) and ``total_bytes``. No (B, S, V) tensor exists at any time."""
    from .evaluator import CHECK_ROWS, DEFAULT_HEAD_CHUNK_BYTES, VOCAB_TILE  # noqa: I001

    cfg = lm.model.config.get_text_config()
    hidden = int(cfg.hidden_size)
    vocab = int(getattr(cfg, "vocab_size", 0) or lm.model.get_output_embeddings().weight.shape[0])
    elt = torch.finfo(lm.dtype).bits // 8 if lm.dtype.is_floating_point else 4
    cache = (lm.num_layers + 1) * batch * seq_len * hidden * elt
    tile = min(vocab, VOCAB_TILE)
    rows = min(batch * (seq_len - 1), max(1, DEFAULT_HEAD_CHUNK_BYTES // (4 * tile)))
    loss_tile = rows * tile * (elt + 4 + (4 if elt != 4 else 0))
    keep = min(CHECK_ROWS, seq_len)
    check = batch * keep * vocab * elt + 2 * keep * vocab * 4
    pick_rows = min(batch * (seq_len - 1), max(1, DEFAULT_HEAD_CHUNK_BYTES // (4 * vocab)))
    pick = pick_rows * vocab * (elt + 4 + (4 if elt != 4 else 0))
    logits = max(loss_tile, check, pick)
    return {"cache_bytes": cache, "logits_bytes": logits, "total_bytes": cache + logits}
